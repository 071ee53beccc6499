"""What every task's training shares: arguments, progress, Ctrl+C, resume, and the loss curve.

Ctrl+C (SIGINT) during training asks the Trainer to save a checkpoint at the end of the current step and
stop; a second Ctrl+C stops at once. A KeyboardInterrupt raised anywhere else in the loop also saves one.
Re-running the same training resumes from the latest checkpoint under ``OUT/checkpoints``.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Progress:
    """What a progress view shows: ``phase`` is "train" (steps) or "eval" (inputs generated)."""

    phase: str
    done: int
    total: int
    loss: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None


OnProgress = Callable[[Progress], None]


def training_args(cfg: Any, out: Path, **extra: Any) -> Any:
    """The Trainer's arguments for ``cfg``: its device (``use_cpu`` when that is the CPU), precision and
    gradient checkpointing (non-reentrant: it also works when only LoRA adapters are trained). On a GPU,
    batches are pinned and copied without blocking: a blocking copy would make the host wait for the
    previous step's kernels before it queues the next step."""
    from transformers import TrainingArguments

    from trainers.student import precision_flags, resolve_device

    gpu = resolve_device(cfg.device) == "cuda"
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear", logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        save_total_limit=2, report_to=[], seed=cfg.seed, data_seed=cfg.seed, disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=gpu, use_cpu=not gpu, remove_unused_columns=False,
        accelerator_config={"non_blocking": True} if gpu else None,
        logging_nan_inf_filter=False,  # its check reads the loss back every step
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        **precision_flags(cfg.precision, causal=cfg.task != "classifier", device=cfg.device), **extra,
    )  # fmt: skip


def _callback_types() -> tuple[Any, ...]:
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        """Turns a pending Ctrl+C into "save a checkpoint now, then stop"."""

        def __init__(self) -> None:
            self.requested = False

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if self.requested:
                control.should_save = True
                control.should_training_stop = True
            if state.global_step >= state.max_steps:  # the loss curve ends at the last step
                control.should_log = True
            return control

    class Report(TrainerCallback):
        """Feeds a progress view: steps, the latest logged loss, and an ETA from this session's pace."""

        def __init__(self, on_progress: OnProgress | None) -> None:
            self.on_progress = on_progress
            self.loss: float | None = None
            self.t0 = time.perf_counter()
            self.first_step = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.t0, self.first_step = time.perf_counter(), state.global_step
            self._emit(state)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> Any:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
                log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, self.loss)
                self._emit(state)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if state.global_step % args.logging_steps:  # else on_log reports it, with this step's loss
                self._emit(state)

        def _emit(self, state: Any) -> None:
            if self.on_progress is None:
                return
            elapsed = time.perf_counter() - self.t0
            done_now = state.global_step - self.first_step
            eta = elapsed / done_now * (state.max_steps - state.global_step) if done_now > 0 else None
            self.on_progress(Progress("train", state.global_step, state.max_steps, self.loss, elapsed, eta))

    return StopOnSignal, Report


@dataclass(slots=True)
class Outcome:
    interrupted: bool
    resumed_from: int  # the global step the session started at (0: a fresh start)
    global_step: int
    wall_s: float  # this session's time in trainer.train()
    log_history: list[dict[str, Any]]


def latest_checkpoint(out: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / "checkpoints"
    found = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    return Path(found) if found else None


def run_trainer(trainer: Any, out: Path, *, on_progress: OnProgress | None, callbacks: list[Any]) -> Outcome:
    """Train (resuming from the latest checkpoint), saving one and stopping on Ctrl+C."""
    from transformers import PrinterCallback

    stop_type, report_type = _callback_types()
    stop = stop_type()
    trainer.remove_callback(PrinterCallback)  # library code does not print; the CLI renders progress
    for cb in (stop, report_type(on_progress), *callbacks):
        trainer.add_callback(cb)
    resume = latest_checkpoint(out)
    if resume is not None:
        log.info("resuming from %s", resume)
    previous = None
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:

        def handler(signum: int, frame: Any) -> None:
            if stop.requested:
                raise KeyboardInterrupt
            stop.requested = True
            log.warning("interrupt: saving a checkpoint after this step (Ctrl+C again to stop at once)")

        previous = signal.signal(signal.SIGINT, handler)
    t0 = time.perf_counter()
    start_step = 0
    try:
        if resume is not None:
            state = json.loads((resume / "trainer_state.json").read_text("utf-8"))
            start_step = int(state.get("global_step", 0))
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except KeyboardInterrupt:
        stop.requested = True
        if trainer.state.global_step > start_step:
            trainer._save_checkpoint(trainer.model, trial=None)  # the state at the last step boundary
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    wall = time.perf_counter() - t0
    if stop.requested:
        log.warning("interrupted at step %d; re-run the same command to resume", trainer.state.global_step)
    return Outcome(
        stop.requested, start_step, trainer.state.global_step, wall, list(trainer.state.log_history)
    )


def loss_curve(history: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """[{step, epoch, loss, ...}] from the Trainer's log history (entries that logged a loss)."""
    out = []
    for h in history:
        if "loss" in h:
            row = {"step": h.get("step"), "epoch": round(float(h.get("epoch", 0.0)), 4), "loss": h["loss"]}
            row.update({k: h[k] for k in keys if k in h})
            out.append(row)
    return out
