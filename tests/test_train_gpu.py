"""Training on a GPU: the student's weights are bf16 there, gradient checkpointing trades memory for compute
without changing the gradients, and our loss asks the device for nothing that the model's own loss does not.
Marked ``gpu``: skipped where torch sees no CUDA device (tests/conftest.py)."""

import json
import warnings

import pytest
from test_train_cli import _config, sbs_export  # noqa: F401 (a fixture)

pytestmark = pytest.mark.gpu


def _llama(layers: int = 2, hidden: int = 64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(cfg).to("cuda", dtype=torch.bfloat16)


def _batch(rows: int, width: int, prompt: int):
    import torch

    from trainers.causal import PadCollator, to_device

    g = torch.Generator().manual_seed(1)
    examples = []
    for r in range(rows):
        n = width - 3 * r  # right padding on all but the first row
        ids = torch.randint(3, 512, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return to_device(PadCollator(pad_id=0)(examples), "cuda")


def _syncs(fn) -> int:
    """How many times ``fn`` makes the host wait for the device (torch's sync debug mode, as warnings)."""
    import torch

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in seen)


def test_our_loss_waits_for_the_device_no_more_than_the_models_own():
    from trainers.batching import Running
    from trainers.causal import answer_loss

    model = _llama()
    model.train()
    batch = _batch(4, 48, 16)
    plain = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    running = Running()

    def ours():
        loss = answer_loss(model, batch)
        loss.backward()
        running.add(loss=loss)

    bare = _syncs(lambda: model(**plain).loss.backward())
    assert _syncs(ours) <= bare
    assert running.means()["loss"] > 0  # read back once, here


def test_gradient_checkpointing_on_cuda_same_gradients_less_memory():
    import torch

    from trainers.causal import answer_loss

    batch = _batch(8, 512, 32)
    peaks, grads = [], []
    for checkpointed in (False, True):
        model = _llama(layers=8, hidden=256)
        if checkpointed:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        answer_loss(model, batch).backward()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - before)
        grads.append({n: p.grad.float() for n, p in model.named_parameters()})
        del model
    assert peaks[1] < 0.7 * peaks[0], peaks
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=2e-2, atol=1e-3), name


def test_a_bf16_training_on_cuda_holds_bf16_weights_and_reports_them(tmp_path, sbs_export, tiny_llama):  # noqa: F811
    from transformers import TrainerCallback

    from trainers.run import train

    class Dtypes(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            self.seen = {(p.dtype, p.device.type) for p in model.parameters()}

    spy = Dtypes()
    res = train(_config(tmp_path, sbs_export, tiny_llama, gradient_checkpointing=True), callbacks=[spy])
    import torch

    assert spy.seen == {(torch.bfloat16, "cuda")}
    t = res.metrics["train"]
    assert (t["device"], t["precision"], t["weights_dtype"]) == ("cuda", "bf16", "bfloat16")
    assert all(p["loss"] == p["loss"] for p in t["loss_curve"])  # no NaN
    meta = json.loads((res.out / "factory_train.json").read_text())
    assert meta["weights_dtype"] == "bfloat16" and res.metrics["eval"]["models"]
