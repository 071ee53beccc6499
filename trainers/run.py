"""The one entry `factory train` and `factory eval` call: check the input, train, save, evaluate, write the card.

The output folder holds the model (``from_pretrained`` loads it), ``factory_train.json`` (what `factory eval`
needs), ``metrics.json`` and ``README.md``; ``checkpoints/`` exists while a training is unfinished. A re-run
of the same training (same config, export and student) resumes from the latest checkpoint, or does nothing
when it has finished; any other non-empty folder needs ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory import __version__
from factory.errors import ConfigError
from factory.outputs import ensure_folder
from trainers import card, data, evaluate, harness, student
from trainers.config import TrainConfig
from trainers.harness import OnProgress

log = logging.getLogger(__name__)
META = student.META


@dataclass(slots=True)
class TrainResult:
    status: str  # "done" | "interrupted" | "already_done"
    out: Path
    global_step: int
    resumed_from: int = 0
    metrics: dict[str, Any] | None = None
    checkpoint: Path | None = None


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _read(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text("utf-8")))
    except (OSError, ValueError):
        return {}


def _prepare_out(out: Path, identity: str, cfg: TrainConfig, keep: tuple[Path, ...]) -> str:
    """What ``out`` holds: "fresh" (empty, or replaced with overwrite), "resume" (an unfinished run of this
    training), "trained" (finished but not evaluated) or "done"; anything else is a ConfigError."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if not out.is_dir() or not any(out.iterdir()):
        ensure_folder(out, "--out")
        return "fresh"
    try:
        meta = json.loads((out / META).read_text("utf-8"))
    except (OSError, ValueError):
        meta = None
    if meta is not None and meta.get("identity") == identity and not cfg.overwrite:
        if meta.get("complete") and _read(out / "metrics.json").get("eval"):
            return "done"
        return "trained" if meta.get("complete") else "resume"
    if not cfg.overwrite:
        what = "another training (other settings, export or student)" if meta else "files of something else"
        raise ConfigError(
            f"--out {out} is not empty: it holds {what}; pass --overwrite to replace it, or pick another --out"
        )
    for p in keep:
        if p == out or out in p.parents:
            raise ConfigError(
                f"--overwrite would delete {p}, which is inside --out {out}; pick another --out"
            )
    shutil.rmtree(out)
    out.mkdir(parents=True)
    return "fresh"


def train(
    cfg: TrainConfig, *, on_progress: OnProgress | None = None, callbacks: Sequence[Any] = ()
) -> TrainResult:
    """Train, save and evaluate the student ``cfg`` describes (see the module docstring)."""
    with student.quiet():
        return _train(cfg, on_progress, callbacks)


def _train(cfg: TrainConfig, on_progress: OnProgress | None, callbacks: Sequence[Any]) -> TrainResult:
    t0 = time.perf_counter()
    export = data.load_export(cfg.export)
    data.check_task(export, cfg.task)
    base = student.resolve_student(cfg.student)
    student.check_student(base, cfg.task, cfg.student)
    if cfg.task == "kd":  # the teacher's columns, and a student that reads its token ids: before any write
        _check_kd(cfg, export, base)
    causal_task = cfg.task != "classifier"
    # where and in what precision it trains: a bad choice is an error before anything is written
    dev = student.resolve_device(cfg.device)
    precision = student.resolve_precision(cfg.precision, causal=causal_task, device=dev)
    if cfg.gradient_checkpointing:
        student.check_gradient_checkpointing(base, cfg.task, cfg.student)
    out = cfg.out_dir().expanduser().resolve()
    state = _prepare_out(out, cfg.identity(export.fingerprint, base), cfg, (export.path, base))
    if state == "done":
        metrics = json.loads((out / "metrics.json").read_text("utf-8"))
        log.info("%s already holds this finished training", out)
        return TrainResult("already_done", out, int(metrics["train"]["global_step"]), metrics=metrics)
    split = data.pick_splits(export, cfg.eval_split, cfg.holdout)
    tok = student.load_tokenizer(base, causal=causal_task)
    from trainers.causal import uses_chat

    meta = {
        "format": 1, "complete": False, "identity": cfg.identity(export.fingerprint, base), "task": cfg.task,
        "shape": export.shape, "student": cfg.student, "student_base": str(base), "export": str(export.path),
        "chat": causal_task and uses_chat(tok, cfg.task), "label_prefix": cfg.label_prefix,
        "rationale_prefix": cfg.rationale_prefix, "label_only": cfg.label_only, "alpha": cfg.alpha,
        "beta": cfg.beta, "sft_weight": cfg.sft_weight, "kd_weight": cfg.kd_weight,
        "kd_temperature": cfg.kd_temperature, "label_names": export.label_names, "max_new_tokens": cfg.new_tokens, "max_length": cfg.max_length,
        "eval_split": cfg.eval_split, "holdout": cfg.holdout, "learning_rate": cfg.lr, "lora": cfg.lora,
        "out": str(out), "factory_version": __version__, "device": dev, "precision": precision,
        "weights_dtype": student.weights_dtype(precision, dev),
    }  # fmt: skip
    if state == "trained":  # trained and saved earlier; the evaluation did not finish
        meta = _read(out / META)
        train_metrics = _read(out / "metrics.json").get("train", {})
    else:
        _write_json(out / META, meta)
        rows = data.take(split.train, cfg.max_train_examples)
        outcome, n_train = _fit(cfg, base, tok, rows, export, meta, out, on_progress, list(callbacks))
        if outcome.interrupted:
            return TrainResult("interrupted", out, outcome.global_step, outcome.resumed_from,
                               checkpoint=harness.latest_checkpoint(out))  # fmt: skip
        meta["complete"] = True
        meta["train_examples"] = n_train
        _write_json(out / META, meta)
        train_metrics = _train_metrics(cfg, meta, outcome)
        _write_json(out / "metrics.json", {"train": train_metrics, "eval": None})
    report = evaluate.evaluate([out], export.path, max_examples=cfg.max_eval_examples,
                               batch_size=cfg.eval_batch_size, on_progress=on_progress, device=dev)  # fmt: skip
    evaluate.write_per_input(report)  # out/eval_inputs.jsonl: what a focus round reads
    metrics = {
        "task": cfg.task, "student": cfg.student, "student_base": meta["student_base"],
        "export": str(export.path), "dataset": card.dataset_facts(export.path),
        "train": {**train_metrics, "wall_s": round(time.perf_counter() - t0, 2)}, "eval": report,
        "factory_version": __version__,
    }  # fmt: skip
    _write_json(out / "metrics.json", metrics)
    (out / "README.md").write_text(
        card.render_model_card(cfg.model_dump(mode="json"), meta, metrics), "utf-8"
    )
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    step = int(train_metrics.get("global_step", 0))
    return TrainResult("done", out, step, int(train_metrics.get("resumed_from", 0)), metrics)


def _fit(cfg: TrainConfig, base: Path, tok: Any, rows: Any, export: data.Export, meta: dict[str, Any],
         out: Path, on_progress: OnProgress | None, callbacks: list[Any]) -> tuple[harness.Outcome, int]:  # fmt: skip
    from transformers import set_seed

    from trainers import causal, classifier, dpo, kd, step_by_step

    set_seed(cfg.seed)
    args = harness.training_args(cfg, out)
    dtype = meta["weights_dtype"]
    if cfg.task == "classifier":
        if not export.label_names:
            raise ConfigError(f"--task classifier: {export.path} has no label names (a ClassLabel column)")
        model: Any = student.load_classifier(base, export.label_names, tok.pad_token_id, dtype)
        examples = classifier.encode_rows(rows, tok, cfg.max_length)
    else:
        model = student.load_causal(base, dtype)
        if cfg.task == "step_by_step":
            examples = step_by_step.encode_rows(rows, tok, meta["chat"], cfg)
        elif cfg.task == "dpo":
            examples = dpo.encode_rows(rows, tok, meta["chat"], cfg.max_length)
        elif cfg.task == "kd":
            examples = kd.encode_rows(rows, export.shape, tok, meta["chat"], cfg.max_length)
        else:
            examples = causal.encode_rows(rows, export.shape, tok, meta["chat"], cfg.max_length)
    if not examples:
        raise ConfigError(f"{export.path}: no training example fits max_length {cfg.max_length}; raise it")
    if cfg.lora:
        model = student.add_lora(model, cfg, classifier=cfg.task == "classifier")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    meta["trainable_params"] = trainable
    meta["total_params"] = sum(p.numel() for p in model.parameters())
    # bf16 autocast over fp32 weights (a CPU's bf16); weights loaded in bf16 need none
    bf16 = meta["precision"] == "bf16" and cfg.task != "classifier" and dtype == "float32"
    if cfg.task == "step_by_step":
        trainer = step_by_step.build_trainer(model, tok, examples, args, cfg, bf16=bf16)
    elif cfg.task == "dpo":
        trainer = dpo.build_trainer(model, tok, examples, args, cfg, bf16=bf16)
    elif cfg.task == "kd":
        trainer = kd.build_trainer(model, tok, examples, args, cfg, bf16=bf16)
    elif cfg.task == "classifier":
        trainer = classifier.build_trainer(model, tok, examples, args)
    else:
        trainer = causal.trainer_class()(model=model, args=args, train_dataset=examples,
                                         data_collator=causal.PadCollator(tok.pad_token_id), processing_class=tok)  # fmt: skip
        trainer.bf16_autocast = bf16
    outcome = harness.run_trainer(trainer, out, on_progress=on_progress, callbacks=callbacks)
    if not outcome.interrupted:
        student.save_student(trainer.model, tok, out, lora=cfg.lora)
    return outcome, len(examples)


def _check_kd(cfg: TrainConfig, export: data.Export, base: Path) -> None:
    from trainers import kd

    split = data.pick_splits(export, cfg.eval_split, cfg.holdout).train
    tok = student.load_tokenizer(base, causal=True)
    config = _read(base / "config.json")
    vocab = int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size") or len(tok))
    kd.check(export, split, tok, vocab, cfg.student)


def _train_metrics(cfg: TrainConfig, meta: dict[str, Any], outcome: harness.Outcome) -> dict[str, Any]:
    from trainers import dpo, kd

    curve = harness.loss_curve(outcome.log_history, "label_loss", "rationale_loss", *dpo.LOGGED, *kd.LOGGED)
    seen = (outcome.global_step - outcome.resumed_from) * cfg.batch_size * cfg.grad_accum
    return {
        "global_step": outcome.global_step, "resumed_from": outcome.resumed_from,
        "examples": meta.get("train_examples"), "examples_seen": seen,
        "examples_per_s": round(seen / outcome.wall_s, 3) if outcome.wall_s > 0 else None,
        "train_s": round(outcome.wall_s, 2), "first_loss": curve[0]["loss"] if curve else None,
        "final_loss": curve[-1]["loss"] if curve else None, "loss_curve": curve,
        "trainable_params": meta.get("trainable_params"), "total_params": meta.get("total_params"),
        "device": meta.get("device"), "precision": meta.get("precision"),
        "weights_dtype": meta.get("weights_dtype"), "gradient_checkpointing": cfg.gradient_checkpointing,
    }  # fmt: skip


def evaluate_models(models: Sequence[str | Path], export_dir: str | Path | None = None, *,
                    split: str | None = None, max_examples: int | None = None, batch_size: int = 16,
                    rel_tol: float = 1e-4, on_progress: OnProgress | None = None,
                    per_input: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """`factory eval`: students (and the teacher, when the export holds its answers) on one held-out split.
    Each input's result goes to ``per_input`` (JSONL), or to each model folder's eval_inputs.jsonl."""
    paths = [Path(m).expanduser() for m in models]
    for p in paths:
        if not p.is_dir():
            raise ConfigError(f"MODEL {p}: no such folder; give a folder that `factory train` wrote")
    target = Path(per_input).expanduser() if per_input else None
    if target is not None and target.is_dir():
        raise ConfigError(
            f"--per-input {target} is a folder; give a file path (e.g. {target / evaluate.PER_INPUT})"
        )
    with student.quiet():
        report = evaluate.evaluate(paths, Path(export_dir).expanduser() if export_dir else None,
                                   split_name=split, max_examples=max_examples, batch_size=batch_size,
                                   rel_tol=rel_tol, on_progress=on_progress)  # fmt: skip
    evaluate.write_per_input(report, target)
    return report


__all__ = ["TrainConfig", "TrainResult", "evaluate_models", "train"]
