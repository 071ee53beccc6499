"""Distilling Step-by-Step (Hsieh et al. 2023) on a causal student: one input, two tasks.

Each exported row (input, label, rationale) gives a label task ``"[label] input" -> label`` and a rationale
task ``"[rationale] input" -> rationale``, told apart by their prefixes. A batch holds both tasks of the
same inputs and the loss is ``alpha·CE(label) + (1 − alpha)·CE(rationale)``, each CE the mean over its
answer tokens (the paper uses alpha = 0.5). At inference only the label task runs.

The label-only baseline (``label_only``) trains the label task alone on the same inputs with the same
batch size and steps, so the two students differ only in the rationale loss.
"""

from __future__ import annotations

import logging
from typing import Any

from trainers.causal import PadCollator, answer_loss, encode_pair

log = logging.getLogger(__name__)


def task_input(prefix: str, text: str) -> str:
    return f"{prefix} {text}"


def combine(label_loss: Any, rationale_loss: Any, alpha: float) -> Any:
    """The multi-task loss: alpha weighs the label task, 1 − alpha the rationale task."""
    return alpha * label_loss + (1.0 - alpha) * rationale_loss


def encode_rows(rows: Any, tok: Any, chat: bool, cfg: Any) -> list[dict[str, Any]]:
    """One example per row holding its label task and (unless label-only) its rationale task."""
    out: list[dict[str, Any]] = []
    dropped = 0
    for r in rows:
        lab = encode_pair(
            tok, task_input(cfg.label_prefix, r["input"]), str(r["label"]), chat, cfg.max_length
        )
        ex: dict[str, Any] = {"label": lab}
        if not cfg.label_only:
            ex["rationale"] = encode_pair(
                tok, task_input(cfg.rationale_prefix, r["input"]), str(r["rationale"]), chat, cfg.max_length
            )
        if any(v is None for v in ex.values()):
            dropped += 1
            continue
        out.append(ex)
    if dropped:
        log.warning("%d rows left out: no answer tokens within max_length %d", dropped, cfg.max_length)
    return out


class TwoTaskCollator:
    """Pads each task of a batch on its own: {"label": batch, "rationale": batch}."""

    def __init__(self, pad_id: int):
        self.pad = PadCollator(pad_id)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {task: self.pad([r[task] for r in rows]) for task in rows[0]}


def trainer_class() -> Any:
    from transformers import Trainer

    from trainers.batching import autocast, trainer_mixin

    class StepByStepTrainer(trainer_mixin(), Trainer):  # type: ignore[misc]
        """A Trainer whose loss is the two-task mix; logs each task's loss next to the total.

        Each task is its own forward pass over its own padded batch, so the long rationales never pad the
        short label task; batches are length-grouped by the two tasks' tokens together."""

        def __init__(self, *args: Any, alpha: float = 0.5, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.alpha = alpha

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            with autocast(model, self.bf16_autocast):
                lab = answer_loss(model, inputs["label"])
                loss = lab
                if "rationale" in inputs:
                    rat = answer_loss(model, inputs["rationale"])
                    loss = combine(lab, rat, self.alpha)
                    self._running.add(label_loss=lab, rationale_loss=rat)
                else:
                    self._running.add(label_loss=lab)
            return (loss, None) if return_outputs else loss

    return StepByStepTrainer


def build_trainer(
    model: Any, tok: Any, examples: list[dict[str, Any]], args: Any, cfg: Any, *, bf16: bool = False
) -> Any:
    cls = trainer_class()
    alpha = 1.0 if cfg.label_only else cfg.alpha
    trainer = cls(
        model=model, args=args, train_dataset=examples, data_collator=TwoTaskCollator(tok.pad_token_id),
        processing_class=tok, alpha=alpha,
    )  # fmt: skip
    trainer.bf16_autocast = bf16
    return trainer
