"""`factory train --task dpo`: a tiny student trained by DPO on (prompt, chosen, rejected) pairs moves every
weight, prefers its chosen answers more than the starting student did, is scored by its final answer against
gold, and writes its model, metrics and card; an export without the preference columns is one error, exit 2."""

import json
import math
from pathlib import Path

import pytest
from conftest import ROOT
from test_train import snapshot_callback
from test_train_cli import _cli

SEEDS = ROOT / "data" / "seeds" / "arithmetic.jsonl"


def _pairs(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        gold = str(r["answer"])
        wrong = str(int(float(gold)) + 1) if gold.lstrip("-").replace(".", "", 1).isdigit() else gold + "0"
        for k in range(2):  # two pairs a prompt: each prompt groups several rows, as an export has them
            out.append({
                "prompt": r["question"],
                "chosen": f"Step {k}: we work it out carefully. The answer is {gold}.",
                "rejected": f"Step {k}: a quick guess. The answer is {wrong}.",
                "gold": gold,
            })  # fmt: skip
    return out


@pytest.fixture(scope="module")
def pref_export(tmp_path_factory) -> Path:
    """A preference export folder as `factory export --as preference` writes it: train and test jsonl."""
    rows = [json.loads(x) for x in SEEDS.read_text().splitlines()[:12]]
    out = tmp_path_factory.mktemp("pref") / "preference"
    out.mkdir()
    for name, part in (("train", rows[:9]), ("test", rows[9:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _pairs(part)))
    return out


def _margin(folder: Path, export: Path) -> float:
    """The mean chosen-minus-rejected log-probability of the model in ``folder`` over the train pairs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers import dpo

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    rows = [json.loads(x) for x in (export / "train.jsonl").read_text().splitlines()]
    batch = dpo.PairCollator(tok.pad_token_id)(dpo.encode_rows(rows, tok, True, 160))
    with torch.no_grad():
        chosen, rejected, _ = dpo.policy_logps(model, batch)
    return float((chosen - rejected).mean())


def test_dpo_loss_is_the_papers_formula():
    import torch

    from trainers.dpo import dpo_loss

    c, r, rc, rr = (torch.tensor([x]) for x in (-3.0, -5.0, -4.0, -4.5))
    loss, margin = dpo_loss(c, r, rc, rr, beta=0.5)
    assert float(margin) == pytest.approx(0.5 * ((-3.0 + 4.0) - (-5.0 + 4.5)))
    assert float(loss) == pytest.approx(math.log1p(math.exp(-0.75)))  # −log σ(x) = log(1 + e^−x)


def test_dpo_raises_the_margin_moves_every_weight_and_writes_model_metrics_card(
    tmp_path, pref_export, tiny_llama
):
    from test_train import train

    snap = snapshot_callback()
    res = train(tmp_path, pref_export, "dpo", tiny_llama, [snap], max_steps=6, learning_rate=2e-3, beta=0.5,
                sft_weight=0.2, max_new_tokens=8, logging_steps=10)  # fmt: skip
    assert res.status == "done" and res.global_step == 6
    assert snap.trainable and snap.unchanged(snap.trainable) == []
    before, after = _margin(tiny_llama, pref_export), _margin(res.out, pref_export)
    assert after > before + 1.0, (before, after)

    curve = res.metrics["train"]["loss_curve"]
    assert [p["step"] for p in curve] == [1, 6]  # the first step, then every 10th and the last
    assert curve[0]["reward_margin"] == pytest.approx(0.0, abs=1e-2)  # the policy starts as the reference
    assert curve[-1]["reward_margin"] > 0.1 and curve[-1]["reward_accuracy"] > 0.5
    for p in curve:  # the logged loss is DPO plus the weighted SFT term
        assert p["loss"] == pytest.approx(p["dpo_loss"] + 0.2 * p["sft_loss"], rel=1e-3)

    ev = res.metrics["eval"]
    assert ev["task"] == "dpo" and ev["split"] == "test" and ev["reference"] == "gold"
    student = ev["models"][0]["metrics"]
    assert student["n"] == ev["inputs"] == 3 and 0.0 <= student["exact_match"] <= 1.0
    assert student["eval_loss"] is not None  # CE on the chosen answers
    teacher = ev["models"][-1]
    assert teacher["kind"] == "teacher" and teacher["metrics"]["exact_match"] == 1.0  # chosen = gold
    card = (res.out / "README.md").read_text()
    assert "DPO" in card and "β = 0.5" in card and "| sft_weight | 0.2 |" in card
    meta = json.loads((res.out / "factory_train.json").read_text())
    assert (meta["task"], meta["shape"], meta["beta"]) == ("dpo", "preference", 0.5)
    assert (res.out / "model.safetensors").is_file()


def test_an_export_without_the_preference_columns_is_one_error(tmp_path, pref_export, tiny_llama):
    from test_train import train

    from factory.errors import ConfigError

    sft = tmp_path / "pc"
    sft.mkdir()
    (sft / "train.jsonl").write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n")
    with pytest.raises(
        ConfigError, match=r"--task dpo needs an export in the shape preference.*--as preference"
    ):
        train(tmp_path, sft, "dpo", tiny_llama)

    half = tmp_path / "half"  # chosen but no rejected
    half.mkdir()
    (half / "train.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    out = _cli("train", str(half), "--task", "dpo", "--student", str(tiny_llama), "--out", "o", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "prompt, chosen" in out.stderr and "preference" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "o").exists()
