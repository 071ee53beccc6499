"""`trainers`: each student task trains a tiny model for a few steps on a real export (scripted teachers):
the loss goes down, every trainable (or LoRA) parameter moves, the saved folder reloads and predicts, and
metrics.json holds what the model card reads."""

import asyncio
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, write_config

from factory import api
from factory.export import export_run
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher

SEEDS = ROOT / "data" / "seeds" / "arithmetic.jsonl"
DEMO_SEEDS = ROOT / "data" / "seeds" / "arithmetic_one_step.jsonl"  # the demo's (rationales_demo.yaml)
GOLD = {
    json.loads(x)["question"]: json.loads(x)["answer"]
    for f in (SEEDS, DEMO_SEEDS)
    for x in f.read_text().splitlines()
}
FAST = {"batch_size": 4, "max_length": 160, "learning_rate": 5e-3, "logging_steps": 1, "eval_batch_size": 8}


def _question(req) -> str:
    return req.messages[-1]["content"].rsplit("Question:", 1)[1].split("\n", 1)[0].strip()


def _answer(req) -> str:
    """Sample 0 is right, the others are off by one; each text is unique (exact_dedup keeps them all)."""
    question = _question(req)
    got = int(GOLD[question]) + (req.sample_index > 0)
    return f"Sample {req.sample_index} of '{question}': we work it out step by step. The answer is {got}."


def run_rationales(tmp: Path, n_seeds: int = 12, name: str = "tr") -> str:
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("\n".join(SEEDS.read_text().splitlines()[:n_seeds]) + "\n")
    cfg = write_config(
        tmp, f"name: {name}\nrecipe: rationales\nseeds: {seeds}\nstore: {tmp / 's.duckdb'}\nteacher: scripted:x\n"
        "params: {k: 2}\nlicense: cc-by-4.0\nexport: {splits: {train: 0.75, test: 0.25}}\n", name=f"{name}.yaml",
    )  # fmt: skip
    teacher = ScriptedTeacher("scripted:x", "x", {"fn": _answer})
    return asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher)).run_id


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One rationales run exported as messages and step_by_step (train/test by seed), a relabel run as
    text_label, a commonsense run as triples."""
    tmp = tmp_path_factory.mktemp("exports")
    run_id = run_rationales(tmp)
    splits = {"train": 0.75, "test": 0.25}
    out = {}
    with Store(tmp / "s.duckdb") as st:
        for shape in ("messages", "step_by_step"):
            out[shape] = export_run(st, run_id, tmp / shape, shape=shape, splits=splits).out
    out["text_label"] = _relabel_export(tmp)
    out["triples"] = _triples_export(tmp)
    return out


def _relabel_export(tmp: Path) -> Path:
    texts = [f"My card was charged {i} dollars twice this month." for i in range(12)]
    texts += [f"The app crashes when I open tab number {i}." for i in range(12)]
    seeds = tmp / "texts.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    labels = ROOT / "data" / "seeds" / "support_labels.yaml"
    cfg = write_config(
        tmp, f"name: cls\nrecipe: relabel\nseeds: {seeds}\nstore: {tmp / 'c.duckdb'}\nteacher: scripted:y\n"
        f"params: {{labels: {labels}}}\n", name="cls.yaml",
    )  # fmt: skip

    def fn(req):  # the label schema's own examples are in the prompt too: look at the text only
        text = req.messages[-1]["content"].split("Text: ", 1)[1].split("\n", 1)[0]
        return "billing" if "charged" in text else "technical_issue"

    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=ScriptedTeacher("scripted:y", "y", {"fn": fn})))
    with Store(tmp / "c.duckdb") as st:
        return export_run(st, res.run_id, tmp / "text_label", shape="text_label",
                          splits={"train": 0.7, "test": 0.3}, split_by="record").out  # fmt: skip


def _triples_export(tmp: Path) -> Path:
    seeds = tmp / "events.jsonl"
    events = ["PersonX sings a song", "PersonX bakes bread", "PersonX runs a race", "PersonX reads a book"]
    seeds.write_text("".join(json.dumps({"id": f"e{i}", "event": e}) + "\n" for i, e in enumerate(events)))
    cfg = write_config(
        tmp, f"name: cs\nrecipe: commonsense\nseeds: {seeds}\nstore: {tmp / 'k.duckdb'}\nteacher: scripted:z\n"
        "params: {relations: [xNeed, xReact], samples: 2}\n", name="cs.yaml",
    )  # fmt: skip
    fn = lambda r: "Happy." if r.sample_index == 0 else "Tired."  # noqa: E731
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=ScriptedTeacher("scripted:z", "z", {"fn": fn})))
    with Store(tmp / "k.duckdb") as st:
        return export_run(st, res.run_id, tmp / "triples", shape="triples").out  # only train: held out


def snapshot_callback():
    """A TrainerCallback keeping each parameter at the start of training and which ones were trainable."""
    from transformers import TrainerCallback

    class Snapshot(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
            self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            self.checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))

        def on_train_end(self, args, state, control, model=None, **kw):
            self.after = {n: p.detach().clone() for n, p in model.named_parameters()}

        def unchanged(self, names):
            return sorted(n for n in names if (self.before[n] == self.after[n]).all())

    return Snapshot()


def train(tmp_path, export, task, student, callbacks=(), **over):
    from trainers.config import make_config
    from trainers.run import train as run_train

    values = {
        "export": export,
        "task": task,
        "student": str(student),
        "out": tmp_path / f"out-{task}",
        **FAST,
    }
    values.update(over)
    return run_train(make_config(values), callbacks=list(callbacks))


def assert_learned(res, snap):
    from trainers.card import METRIC_KEYS

    curve = res.metrics["train"]["loss_curve"]
    first, last = [p["loss"] for p in curve[:2]], [p["loss"] for p in curve[-2:]]
    assert sum(last) / len(last) < sum(first) / len(first), curve  # loss falls (ends of the curve, averaged)
    assert snap.trainable and snap.unchanged(snap.trainable) == []
    for part, keys in METRIC_KEYS.items():  # what the model card reads
        assert all(k in res.metrics[part] for k in keys), (part, res.metrics[part].keys())
    card = (res.out / "README.md").read_text()
    assert (str(res.metrics["export"]) in card and "cc-by-4.0" in card) or res.metrics["task"] != "sft"


def _generate(folder: Path, prompt: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0][ids["input_ids"].shape[1] :])


def test_sft_learns_only_the_assistant_turn_and_reloads(tmp_path, exports, tiny_llama):
    from transformers import AutoTokenizer

    from trainers.causal import encode_messages

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    msgs = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4. The answer is 4."},
    ]
    ex = encode_messages(tok, msgs, 512)
    trained = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != -100])
    assert trained == "4. The answer is 4.<|im_end|>\n"  # the prompt and the system turn are masked

    snap = snapshot_callback()
    res = train(tmp_path, exports["messages"], "sft", tiny_llama, [snap], max_steps=6, max_new_tokens=8)
    assert res.status == "done" and res.global_step == 6
    assert_learned(res, snap)
    ev = res.metrics["eval"]
    assert ev["split"] == "test" and ev["reference"] == "teacher majority answer"  # messages carry no gold
    assert isinstance(_generate(res.out, "Question"), str)
    meta = json.loads((res.out / "factory_train.json").read_text())
    assert meta["task"] == "sft" and meta["chat"] is True and meta["export"] == str(exports["messages"])


def test_sft_with_lora_moves_every_adapter_weight_and_saves_a_merged_model(tmp_path, exports, tiny_llama):
    """With gradient checkpointing too: the frozen base's activations are recomputed in the backward pass and
    the gradients still reach every adapter."""
    from transformers import AutoModelForCausalLM

    snap = snapshot_callback()
    res = train(tmp_path, exports["messages"], "sft", tiny_llama, [snap], lora=True, lora_r=4, max_steps=4,
                max_new_tokens=4, max_eval_examples=2, gradient_checkpointing=True)  # fmt: skip
    assert snap.checkpointing and res.metrics["train"]["gradient_checkpointing"] is True
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert snap.unchanged(snap.trainable) == []  # lora_B starts at zero, lora_A moves once B is non-zero
    frozen = [n for n in snap.before if n not in snap.trainable]
    assert snap.unchanged(frozen) == sorted(frozen)
    assert (res.out / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(str(res.out))
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_step_by_step_mixes_the_two_losses_and_the_baseline_shares_the_budget(tmp_path, exports, tiny_llama):
    from trainers.run import evaluate_models
    from trainers.step_by_step import combine

    assert combine(2.0, 4.0, 0.25) == pytest.approx(3.5)
    snap = snapshot_callback()
    sbs = train(tmp_path, exports["step_by_step"], "step_by_step", tiny_llama, [snap], max_steps=5, alpha=0.3)
    assert_learned(sbs, snap)
    for point in sbs.metrics["train"]["loss_curve"]:  # logged every step: the loss is the α-mix of the two
        assert point["loss"] == pytest.approx(
            0.3 * point["label_loss"] + 0.7 * point["rationale_loss"], rel=1e-4
        )
    base = train(tmp_path, exports["step_by_step"], "step_by_step", tiny_llama, max_steps=5, label_only=True,
                 out=tmp_path / "baseline")  # fmt: skip
    assert base.global_step == sbs.global_step == 5
    assert all("rationale_loss" not in p for p in base.metrics["train"]["loss_curve"])
    assert all(
        p["loss"] == pytest.approx(p["label_loss"], rel=1e-4) for p in base.metrics["train"]["loss_curve"]
    )

    report = evaluate_models([sbs.out, base.out], exports["step_by_step"])
    names = [m["name"] for m in report["models"]]
    assert names == ["student: out-step_by_step", "student (label-only): baseline", "teacher: scripted:x"]
    teacher = report["models"][-1]["metrics"]
    assert (
        teacher["exact_match_per_sample"] == 1.0 and teacher["n"] == report["inputs"]
    )  # the off-by-one samples are set aside: the export's targets are the right ones
    assert all(m["metrics"]["n"] == teacher["n"] for m in report["models"])  # the same questions for all
    meta = json.loads((sbs.out / "factory_train.json").read_text())
    assert (meta["label_prefix"], meta["rationale_prefix"], meta["max_new_tokens"]) == (
        "[label]",
        "[rationale]",
        16,
    )


def test_classifier_trains_and_reports_accuracy_and_macro_f1(tmp_path, exports):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

    from factory.embeddings import default_model_path
    from trainers.student import resolve_student

    minilm = default_model_path()
    assert resolve_student("minilm") == minilm
    tok = AutoTokenizer.from_pretrained(str(minilm))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    tiny = tmp_path / "tiny-bert"
    torch.manual_seed(0)  # its starting weights, not whatever the tests before left in the global generator
    BertModel(cfg).save_pretrained(str(tiny))
    tok.save_pretrained(str(tiny))

    snap = snapshot_callback()
    res = train(tmp_path, exports["text_label"], "classifier", tiny, [snap], max_steps=48, learning_rate=3e-3)
    assert_learned(res, snap)
    student = res.metrics["eval"]["models"][0]["metrics"]
    assert {"accuracy", "macro_f1", "n", "per_class"} <= set(student) and student["n"] > 0
    clf = AutoModelForSequenceClassification.from_pretrained(str(res.out))
    assert set(clf.config.id2label.values()) == {"billing", "technical_issue"}
    enc = AutoTokenizer.from_pretrained(str(res.out))("My card was charged twice.", return_tensors="pt")
    assert clf(**enc).logits.shape == (1, 2)


def test_triples_generator_holds_out_a_share_of_train(tmp_path, exports, tiny_llama):
    snap = snapshot_callback()
    res = train(tmp_path, exports["triples"], "triples", tiny_llama, [snap], max_steps=6, holdout=0.3)
    assert_learned(res, snap)
    ev = res.metrics["eval"]
    assert ev["split"].startswith("train (held out") and "held out for evaluation" in ev["notes"][0]
    samples = ev["samples"][ev["models"][0]["name"]]
    assert samples and all(re.fullmatch(r"PersonX .+ x(Need|React) \[GEN\]", s["prompt"]) for s in samples)
    assert json.loads((res.out / "factory_train.json").read_text())["chat"] is False  # COMET: plain text
    assert isinstance(_generate(res.out, "PersonX sings a song xReact [GEN]"), str)


@pytest.mark.slow
def test_embedded_smollm2_student_with_lora(tmp_path, exports, embedded_dir):
    """The real SmolLM2-135M as `--student embedded`: LoRA on the step-by-step export, two steps."""
    from trainers.student import resolve_student

    assert resolve_student("embedded") == embedded_dir
    snap = snapshot_callback()
    res = train(tmp_path, exports["step_by_step"], "step_by_step", "embedded", [snap], lora=True, max_steps=2,
                learning_rate=1e-3, max_eval_examples=2, max_length=256)  # fmt: skip
    assert res.status == "done" and snap.unchanged(snap.trainable) == []
    assert res.metrics["student_base"] == str(embedded_dir)
    assert isinstance(_generate(res.out, "[label] What is 2 + 3?"), str)
