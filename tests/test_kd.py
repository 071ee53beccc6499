"""`factory train --task kd`: a tiny student learns a tiny teacher's top-k distribution (same tokenizer) on the
teacher's own tokens. The loss is the documented formula to the digit; training lowers the KL on the training
rows; the model, metrics and card are written and scored like sft; a student of another tokenizer and an export
without the top-k columns are one error each (exit 2, nothing written)."""

import json
import math
from pathlib import Path

import pytest
from conftest import ROOT

SEEDS = ROOT / "data" / "seeds" / "arithmetic.jsonl"
K = 5


@pytest.fixture(scope="module")
def teacher_rows(tiny_llama) -> list[dict]:
    """Answers of a tiny random teacher (another Llama of the same tokenizer) with its top-k at each token,
    in the columns `factory export` writes for a run with `logprobs: K`."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trainers.causal import prompt_ids

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    base = LlamaForCausalLM.from_pretrained(str(tiny_llama))
    torch.manual_seed(1)
    teacher = LlamaForCausalLM(base.config).eval()
    rows = []
    for i, line in enumerate(SEEDS.read_text().splitlines()[:10]):
        q = json.loads(line)
        ids = torch.tensor([prompt_ids(tok, q["question"], True)])
        with torch.no_grad():
            out = teacher.generate(ids, max_new_tokens=6 + i % 3, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True, pad_token_id=tok.pad_token_id)  # fmt: skip
        tokens = out.sequences[0, ids.shape[1] :].tolist()
        k = K - i % 2  # k varies by row
        top = [torch.log_softmax(x[0].float(), -1).topk(k) for x in out.logits]
        rows.append({
            "prompt": q["question"], "completion": tok.decode(tokens, skip_special_tokens=True),
            "gold": str(q["answer"]), "teacher_token_ids": tokens,
            "teacher_top_ids": [t.indices.tolist() for t in top],
            "teacher_top_logprobs": [t.values.tolist() for t in top],
        })  # fmt: skip
    return rows


def _write(folder: Path, splits: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True)
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def kd_export(tmp_path_factory, teacher_rows) -> Path:
    return _write(tmp_path_factory.mktemp("kd") / "pc", {"train": teacher_rows[:8], "test": teacher_rows[8:]})


def _by_hand(logits, ex: dict, t: float) -> tuple[list[float], list[float]]:
    """The module docstring's formula with Python floats, from one example's full logits [len, vocab]."""
    ces, kls = [], []
    labels = ex["labels"]
    for pos in range(len(labels) - 1):
        y = labels[pos + 1]
        if y == -100:
            continue
        z = logits[pos].tolist()
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        ces.append(lse - z[y])
        n = len(ces) - 1  # the answer position's index
        if n < len(ex["top_ids"]):
            ids, lps = ex["top_ids"][n], ex["top_logprobs"][n]
            zt = [v / t for v in z]
            mt = max(zt)
            lse_t = mt + math.log(sum(math.exp(v - mt) for v in zt))
            norm = math.log(sum(math.exp(lp / t) for lp in lps))
            kls.append(
                sum(
                    math.exp(lp / t - norm) * ((lp / t - norm) - (zt[i] - lse_t))
                    for i, lp in zip(ids, lps, strict=True)
                )
            )
    return ces, kls


def test_the_kd_loss_is_the_documented_formula(tiny_llama, teacher_rows):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trainers import kd
    from trainers.causal import answer_logits

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    model = LlamaForCausalLM.from_pretrained(str(tiny_llama)).eval()
    rows = teacher_rows[:3]
    examples = kd.encode_rows(rows, "prompt_completion", tok, True, 512)
    for r, ex in zip(rows, examples, strict=True):  # the teacher stopped early: an end of sequence is added
        assert r["teacher_token_ids"][-1] != tok.eos_token_id and ex["input_ids"][-1] == tok.eos_token_id
    turns = [
        {"role": "user", "content": rows[0]["prompt"]},
        {"role": "assistant", "content": rows[0]["completion"]},
    ]
    as_messages = kd.encode_rows([{**rows[0], "messages": turns}], "messages", tok, True, 512)
    assert as_messages[0]["input_ids"] == examples[0]["input_ids"]  # the conversation shape reads the same
    batch = kd.KDCollator(tok.pad_token_id)(examples)
    assert batch["top_ids"].shape == (int((batch["labels"][:, 1:] != -100).sum()), K)
    with torch.no_grad():
        logits, targets, _ = answer_logits(
            model, {k: v for k, v in batch.items() if not k.startswith("top_")}
        )
        ce, kl = kd.kd_terms(logits, targets, batch["top_ids"], batch["top_logprobs"], 2.0)
        loss = kd.kd_loss(ce, kl, 0.3, 2.0)
        full = [model(torch.tensor([ex["input_ids"]])).logits[0] for ex in examples]
    ces, kls = [], []
    for lg, ex in zip(full, examples, strict=True):
        c, k = _by_hand(lg, ex, 2.0)
        ces, kls = ces + c, kls + k
    want_ce, want_kl = sum(ces) / len(ces), sum(kls) / len(kls)
    # an appended end of sequence has no top-k: CE only
    assert len(kls) == sum(len(ex["top_ids"]) for ex in examples) < len(ces)
    assert float(ce) == pytest.approx(want_ce, rel=1e-4) and float(kl) == pytest.approx(want_kl, rel=1e-4)
    assert float(loss) == pytest.approx(0.7 * want_ce + 0.3 * 4.0 * want_kl, rel=1e-4)
    assert want_kl > 0


def _train_kl(folder: Path, export: Path) -> float:
    """The mean KL (T = 1) of the model in ``folder`` to the teacher's top-k over the export's train rows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers import kd
    from trainers.causal import answer_logits

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    rows = [json.loads(x) for x in (export / "train.jsonl").read_text().splitlines()]
    batch = kd.KDCollator(tok.pad_token_id)(kd.encode_rows(rows, "prompt_completion", tok, True, 160))
    with torch.no_grad():
        logits, targets, _ = answer_logits(
            model, {k: v for k, v in batch.items() if not k.startswith("top_")}
        )
        return float(kd.kd_terms(logits, targets, batch["top_ids"], batch["top_logprobs"], 1.0)[1])


def test_kd_lowers_the_kl_to_the_teacher_and_writes_model_metrics_card(tmp_path, kd_export, tiny_llama):
    from test_train import train

    res = train(tmp_path, kd_export, "kd", tiny_llama, max_steps=8, learning_rate=3e-3, kd_weight=0.8,
                kd_temperature=2.0, max_new_tokens=6, logging_steps=4)  # fmt: skip
    assert res.status == "done" and res.global_step == 8
    before, after = _train_kl(tiny_llama, kd_export), _train_kl(res.out, kd_export)
    assert after < 0.7 * before, (before, after)
    curve = res.metrics["train"]["loss_curve"]
    for p in curve:  # the logged loss is the weighted sum of the logged terms
        assert p["loss"] == pytest.approx(0.2 * p["ce_loss"] + 0.8 * 4.0 * p["kd_loss"], rel=1e-3)
    ev = res.metrics["eval"]  # scored like sft: the final answer against gold, teacher-forced loss
    assert ev["task"] == "kd" and ev["split"] == "test" and ev["reference"] == "gold"
    student = ev["models"][0]["metrics"]
    assert student["n"] == 2 and student["eval_loss"] is not None and student["kd_kl"] > 0  # held-out KL
    card = (res.out / "README.md").read_text()
    assert "| kd_weight | 0.8 |" in card and "| kd_temperature | 2.0 |" in card
    assert "0.2·CE + 0.8·2²·KL" in card and "teacher_top_logprobs" in card
    meta = json.loads((res.out / "factory_train.json").read_text())
    assert (meta["task"], meta["shape"], meta["kd_weight"]) == ("kd", "prompt_completion", 0.8)


def _one_error(out, *needles: str) -> None:
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for n in needles:
        assert n in out.stderr, (n, out.stderr)


def test_a_student_of_another_tokenizer_is_one_error(tmp_path, teacher_rows, tiny_llama, cli):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    far = [dict(r) for r in teacher_rows]
    far[0]["teacher_top_ids"] = [[len(tok) + 3, *x[1:]] for x in far[0]["teacher_top_ids"]]
    big = _write(tmp_path / "big", {"train": far})
    out = cli("train", str(big), "--task", "kd", "--student", str(tiny_llama), "--out", "o1", cwd=tmp_path)
    _one_error(out, f"--student {tiny_llama}", "not the teacher's", "teacher_top_ids", f"id {len(tok) + 3}",
               "teacher's family", "--task sft")  # fmt: skip
    # the ids of another tokenizer (shifted): in the vocabulary, but they spell something else
    other = [{**r, "teacher_token_ids": [i + 11 for i in r["teacher_token_ids"]]} for r in teacher_rows]
    moved = _write(tmp_path / "moved", {"train": other})
    out = cli("train", str(moved), "--task", "kd", "--student", str(tiny_llama), "--out", "o2", cwd=tmp_path)
    _one_error(out, f"--student {tiny_llama}", "not the teacher's", "teacher_token_ids", "--task sft")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_an_export_without_the_top_k_columns_is_one_error(tmp_path, teacher_rows, tiny_llama, cli):
    plain = [{"prompt": r["prompt"], "completion": r["completion"], "gold": r["gold"]} for r in teacher_rows]
    pc = _write(tmp_path / "plain", {"train": plain})
    out = cli("train", str(pc), "--task", "kd", "--student", str(tiny_llama), "--out", "o", cwd=tmp_path)
    _one_error(out, "--task kd", "teacher_token_ids", "logprobs: K", "--task sft")
    assert not (tmp_path / "o").exists()
    # the columns are there but empty on every row (a teacher that returned no log-probabilities)
    empty = [{**r, "teacher_token_ids": None, "teacher_top_ids": None, "teacher_top_logprobs": None}
             for r in teacher_rows]  # fmt: skip
    none = _write(tmp_path / "none", {"train": empty})
    out = cli("train", str(none), "--task", "kd", "--student", str(tiny_llama), "--out", "o", cwd=tmp_path)
    _one_error(out, "--task kd", "teacher_token_ids", "logprobs: K")
    assert not (tmp_path / "o").exists()
