"""What keeps training steps cheap changes no number: the answer-only vocabulary projection gives the model's
own loss (with the answer positions worked out by the collator or not), the length-grouped order is a seeded
permutation that pads less, bf16 autocast stays close to fp32, gradient checkpointing gives the same
gradients, and per-task losses are read back only when the Trainer logs."""

import random

import pytest

IGNORE = -100


@pytest.fixture(scope="module")
def small():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 97, (3, 14))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # right padding
    labels = ids.clone()
    labels[:, :6] = IGNORE  # prompts
    labels[1, 10:] = IGNORE
    labels[2, :9] = IGNORE  # a longer prompt
    return model, {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_answer_only_projection_is_the_models_own_loss_and_log_probs(small, monkeypatch):
    import torch

    from trainers import causal

    model, batch = small
    assert causal._decoder_and_head(model) is not None  # the fast path runs for a Llama
    own = model(**batch).loss
    fast = causal.answer_loss(model, batch)
    assert float(fast.detach()) == pytest.approx(float(own.detach()), rel=1e-5)
    sums, counts = causal.sequence_logps(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp = torch.log_softmax(logits[:, :-1], -1).gather(2, batch["input_ids"][:, 1:, None])[..., 0]
    trained = batch["labels"][:, 1:] != IGNORE
    assert torch.allclose(sums, (lp * trained).sum(1), atol=1e-4)
    assert counts.tolist() == trained.sum(1).tolist() == [8, 4, 5]

    monkeypatch.setattr(causal, "_decoder_and_head", lambda m: None)  # a model with a soft cap, say
    assert float(causal.answer_loss(model, batch).detach()) == pytest.approx(float(own.detach()), rel=1e-5)


def test_the_collators_answer_positions_pick_the_same_logits(small, monkeypatch):
    import torch

    from trainers import causal

    model, batch = small
    rows = [
        {"input_ids": ids[: int(m.sum())].tolist(), "labels": lab[: int(m.sum())].tolist()}
        for ids, m, lab in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True)
    ]
    collated = causal.PadCollator(pad_id=0)(rows)
    assert torch.equal(collated["labels"], batch["labels"])
    assert collated["answer_rows"].tolist() == [0] * 8 + [1] * 4 + [2] * 5 and collated["answer_start"] == 6
    for fast in (True, False):  # the decoder-and-head path, and the full logits cut to logits_to_keep
        if not fast:
            monkeypatch.setattr(causal, "_decoder_and_head", lambda m: None)
        ours = causal.answer_logits(model, collated)
        found_here = causal.answer_logits(model, batch)  # no positions given: worked out from the labels
        for a, b in zip(ours, found_here, strict=True):
            assert torch.allclose(a, b, atol=1e-6)
        own = model(**batch).loss
        assert float(causal.answer_loss(model, collated).detach()) == pytest.approx(
            float(own.detach()), rel=1e-5
        )


def test_gradient_checkpointing_gives_the_same_gradients(small):
    import copy

    import torch

    from trainers.causal import answer_loss

    model, batch = small
    grads, calls = [], []
    for checkpointed in (False, True):
        m = copy.deepcopy(model)
        if checkpointed:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.train()
        seen = []
        mlp = m.model.layers[0].mlp
        mlp.forward = lambda x, f=mlp.forward, seen=seen: seen.append(1) or f(x)  # counts the MLP runs
        answer_loss(m, batch).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
        calls.append(len(seen))
    assert calls == [1, 2]  # checkpointed: the layer runs again in the backward pass
    assert all(g is not None for g in grads[1].values())
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7) for n in grads[0])


def test_bf16_autocast_stays_close_to_fp32(small):
    from trainers.batching import autocast
    from trainers.causal import answer_loss

    model, batch = small
    with autocast(model, True):
        low = float(answer_loss(model, batch))
    assert low == pytest.approx(float(answer_loss(model, batch)), rel=2e-2)


def _padding(order: list[int], lengths: list[int], batch: int) -> int:
    chunks = [order[i : i + batch] for i in range(0, len(order), batch)]
    return sum(max(lengths[i] for i in c) * len(c) - sum(lengths[i] for i in c) for c in chunks)


def test_length_grouped_order_is_a_seeded_permutation_that_pads_less():
    from trainers.batching import LengthGroupedSampler

    rnd = random.Random(1)
    lengths = [rnd.randint(20, 400) for _ in range(1000)]
    s = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    first = list(s)
    assert sorted(first) == list(range(1000)) and list(s) == first  # the same seed and epoch: the same order
    assert list(LengthGroupedSampler(lengths, 8, 3)) == first  # a resumed training sees the same batches
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(1000))
    assert list(LengthGroupedSampler(lengths, 8, 4)) != first
    shuffled = list(range(1000))
    rnd.shuffle(shuffled)
    assert _padding(first, lengths, 8) < 0.1 * _padding(shuffled, lengths, 8)
    tops = [max(lengths[i] for i in first[k : k + 8]) for k in range(0, 1000, 8)]
    assert tops != sorted(tops, reverse=True)  # long and short batches still mix across the epoch


def test_per_task_losses_stay_on_the_device_until_logged():
    import torch

    from trainers.batching import Running

    r = Running()
    for x in (1.0, 2.0, 4.5):
        r.add(label_loss=torch.tensor(x, requires_grad=True) * 1, rationale_loss=torch.tensor(2 * x))
    assert isinstance(r.sums["label_loss"], torch.Tensor) and not r.sums["label_loss"].requires_grad
    assert r.means() == {"label_loss": 2.5, "rationale_loss": 5.0}
    assert r.means() == {}  # read back once, then it starts over


def test_training_arguments_follow_the_device_and_gradient_checkpointing(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from trainers import harness, student

    cfg = SimpleNamespace(epochs=1.0, max_steps=2, batch_size=2, grad_accum=1, lr=1e-4, warmup_ratio=0.0,
                          weight_decay=0.0, logging_steps=1, save_steps=None, seed=0, precision="fp32",
                          task="sft", device="cpu", gradient_checkpointing=True)  # fmt: skip
    on_cpu = harness.training_args(cfg, tmp_path)
    assert on_cpu.use_cpu and not on_cpu.dataloader_pin_memory and not on_cpu.accelerator_config.non_blocking
    assert on_cpu.gradient_checkpointing and on_cpu.gradient_checkpointing_kwargs == {"use_reentrant": False}
    monkeypatch.setattr(student, "resolve_device", lambda device="auto": "cuda")  # as where torch sees a GPU
    on_gpu = harness.training_args(
        SimpleNamespace(**{**vars(cfg), "gradient_checkpointing": False}), tmp_path
    )
    # pinned batches copied without blocking: the host never waits for the last step's kernels to queue the next
    assert not on_gpu.use_cpu and on_gpu.dataloader_pin_memory and on_gpu.accelerator_config.non_blocking
    assert not on_gpu.gradient_checkpointing
