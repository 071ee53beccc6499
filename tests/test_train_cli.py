"""`factory train` / `factory eval`: Ctrl+C saves a checkpoint and a re-run resumes from it; bad input is one
clear error (exit 2); the demo run's export trains a step-by-step student and is scored against its teacher."""

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, write_config
from test_train import DEMO_SEEDS, FAST, _answer, run_rationales

from factory import api
from factory.errors import ConfigError
from factory.export import export_run
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher


def _cli(*args, cwd, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def sbs_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sbs")
    run_id = run_rationales(tmp, n_seeds=8)
    splits = {"train": 0.75, "test": 0.25}
    with Store(tmp / "s.duckdb") as st:
        export_run(st, run_id, tmp / "records", splits=splits)  # the default shape: the recipe's records
        return export_run(st, run_id, tmp / "sbs", shape="step_by_step", splits=splits).out


def _config(tmp_path, export, student, **over):
    from trainers.config import make_config

    values = {
        "export": export,
        "task": "step_by_step",
        "student": str(student),
        "out": tmp_path / "out",
        **FAST,
    }
    return make_config({**values, "max_steps": 4, "max_eval_examples": 2, "max_new_tokens": 4, **over})


def _interrupt_at(step: int, how: str):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if how == "sigint" and state.global_step == step - 1:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C while step `step` runs

        def on_step_end(self, args, state, control, **kw):
            if how == "raise" and state.global_step == step:
                raise KeyboardInterrupt

    return Interrupt()


@pytest.mark.parametrize("how", ["sigint", "raise"])
def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes(tmp_path, sbs_export, tiny_llama, how):
    from trainers.run import train

    cfg = _config(tmp_path, sbs_export, tiny_llama)
    first = train(cfg, callbacks=[_interrupt_at(2, how)])
    assert first.status == "interrupted" and first.global_step == 2
    assert first.checkpoint is not None and first.checkpoint.name == "checkpoint-2"
    assert not (tmp_path / "out" / "metrics.json").exists()
    again = train(cfg)
    assert again.status == "done" and again.resumed_from == 2 and again.global_step == 4
    steps = [p["step"] for p in again.metrics["train"]["loss_curve"]]
    assert steps[-2:] == [3, 4] and not (tmp_path / "out" / "checkpoints").exists()
    assert train(cfg).status == "already_done"  # a third run finds it finished


def test_bad_input_is_one_config_error(tmp_path, sbs_export, tiny_llama, monkeypatch):
    import torch
    from transformers import LlamaForCausalLM

    from trainers.run import train

    cases = [
        (dict(export=tmp_path / "nope"), "EXPORT_DIR"),
        (dict(export=sbs_export.parent / "records"), "not a training shape"),
        (dict(task="classifier"), "--task classifier needs an export in the shape text_label"),
        (dict(student=str(tmp_path / "no-model")), "--student"),
        (dict(student="minilm"), "is an encoder"),
        (dict(gradient_checkpointing=True), "gradient_checkpointing: the student .* does not support it"),
    ]
    if not torch.cuda.is_available():
        cases += [(dict(device="cuda"), "--device cuda: torch sees no CUDA device"),
                  (dict(precision="fp16"), "fp16 needs a GPU")]  # fmt: skip
    monkeypatch.setattr(LlamaForCausalLM, "supports_gradient_checkpointing", False)  # an architecture without
    for over, message in cases:
        with pytest.raises(ConfigError, match=message):
            train(_config(tmp_path, over.pop("export", sbs_export), over.pop("student", tiny_llama), **over))
    assert not (tmp_path / "out").exists()  # each one is refused before the output folder is made
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite"):
        train(_config(tmp_path, sbs_export, tiny_llama, out=tmp_path / "busy"))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    from trainers.config import load_train_config

    yml = tmp_path / "t.yaml"
    yml.write_text(f"export: {sbs_export}\ntask: sft\nstudent: embedded\nepochz: 2\n")
    with pytest.raises(ConfigError, match="unknown field 'epochz'"):
        load_train_config(yml)
    out = _cli("train", str(tmp_path / "missing"), "--task", "sft", "--student", "embedded", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "EXPORT_DIR" in out.stderr and "factory export" in out.stderr


def test_demo_export_to_step_by_step_student_to_eval(tmp_path, tiny_llama):
    """The demo config (teacher swapped for a scripted one, splits set) → export → train → eval, by the CLI."""
    demo = (ROOT / "recipes" / "examples" / "rationales_demo.yaml").read_text()
    for rel, path in (("../../data/", ROOT / "data"), ("../templates/", ROOT / "recipes" / "templates")):
        demo = demo.replace(rel, f"{path}/")  # the seeds and the few-shot file it names
    demo = demo.replace("  out: out/demo\n", "  out: sbs\n  shape: step_by_step\n")
    cfg = write_config(tmp_path, demo + f"store: {tmp_path / 'demo.duckdb'}\n", name="demo.yaml")
    teacher = ScriptedTeacher("scripted:demo", "demo", {"fn": _answer})
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher))
    assert res.status == "done"
    store = str(tmp_path / "demo.duckdb")
    exp = _cli("export", "rationales-demo", "--store", store, cwd=tmp_path)
    assert exp.returncode == 0 and "as step_by_step" in exp.stdout, exp.stderr
    questions = len(DEMO_SEEDS.read_text().splitlines())
    assert f"exported {questions} records" in exp.stdout  # the agreement filter keeps one sample a question

    yml = tmp_path / "train.yaml"
    yml.write_text("export: sbs\ntask: step_by_step\nbatch_size: 4\nmax_length: 160\nlearning_rate: 0.005\n"
                   "max_eval_examples: 3\nmax_new_tokens: 4\n")  # fmt: skip
    tr = _cli("train", "--config", str(yml), "--student", str(tiny_llama), "--max-steps", "3", "--out", "student",
              cwd=tmp_path)  # fmt: skip
    assert tr.returncode == 0, tr.stderr
    assert "training steps 3/3" in tr.stderr and "ETA" in tr.stderr  # progress (plain lines when not a TTY)
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 3 and metrics["dataset"]["recipe"] == "rationales"
    assert metrics["dataset"]["license"] == "cc-by-4.0" and metrics["dataset"]["run"] == res.run_id
    card = (tmp_path / "student" / "README.md").read_text()
    assert str(tmp_path / "sbs") in card and res.run_id in card and "scripted:demo" in card

    ev = _cli("eval", "student", "sbs", cwd=tmp_path)  # the export named; by default the one trained on
    assert ev.returncode == 0, ev.stderr
    lines = ev.stdout.splitlines()
    assert lines[0].startswith("step_by_step on test of ") and "reference: gold" in lines[0]
    student = next(x for x in lines if x.startswith("student: student")).split()
    teacher = next(x for x in lines if x.startswith("teacher: scripted:demo")).split()
    # One sample of each question is right and the demo's agreement filter exports only that one, so the
    # teacher's exported answers all agree with gold: majority 1, per sample 1.
    assert teacher[2:4] == ["1.0000", "1.0000"]
    assert student[-1] == teacher[-1]  # both scored on the same questions
