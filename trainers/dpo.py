"""Direct Preference Optimization (Rafailov et al. 2023) on a causal student, in plain torch.

Each exported row (prompt, chosen, rejected) is a pair of answers to one prompt: ``chosen`` a correct
rationale, ``rejected`` a wrong one. With log π(y|x) the summed log-probability of an answer's tokens, the
loss per pair is

    −log σ(β · [(log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))])

plus, with ``sft_weight`` > 0, that weight times the chosen answer's mean cross-entropy per token (an SFT term
that keeps the likelihood of the good answers up while their margin grows).

The reference π_ref is the starting student, frozen. Its log-probabilities of every pair are computed once,
before the first step, in one pass without gradients, and stored with the examples: the same numbers a frozen
copy would give at every step, for a third of one epoch's forward work and no second model in memory. A
resumed training recomputes them from the starting student, before the checkpoint's weights are loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from trainers.causal import PadCollator, encode_pair, sequence_logps, to_device
from trainers.data import turn_text

log = logging.getLogger(__name__)


def encode_rows(rows: Any, tok: Any, chat: bool, max_length: int) -> list[dict[str, Any]]:
    """One example per row: the prompt with its chosen answer and with its rejected one."""
    out: list[dict[str, Any]] = []
    dropped = 0
    for r in rows:
        prompt = turn_text(r["prompt"], answer=False)
        chosen = encode_pair(tok, prompt, turn_text(r["chosen"], answer=True), chat, max_length)
        rejected = encode_pair(tok, prompt, turn_text(r["rejected"], answer=True), chat, max_length)
        if chosen is None or rejected is None:
            dropped += 1
            continue
        out.append({"chosen": chosen, "rejected": rejected})
    if dropped:
        log.warning("%d pairs left out: no answer tokens within max_length %d", dropped, max_length)
    return out


class PairCollator:
    """Chosen then rejected answers of a batch, padded together (one forward pass), and the reference's
    log-probabilities when the examples have them."""

    def __init__(self, pad_id: int):
        self.pad = PadCollator(pad_id)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.pad([r["chosen"] for r in rows] + [r["rejected"] for r in rows])
        if "ref_chosen" in rows[0]:
            batch["ref_chosen"] = torch.tensor([r["ref_chosen"] for r in rows], dtype=torch.float32)
            batch["ref_rejected"] = torch.tensor([r["ref_rejected"] for r in rows], dtype=torch.float32)
        return batch


def policy_logps(model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Summed log-probabilities of the chosen and the rejected answers, and the chosen answers' token counts."""
    inputs = {k: v for k, v in batch.items() if not k.startswith("ref_")}
    sums, counts = sequence_logps(model, inputs)
    n = sums.size(0) // 2
    return sums[:n], sums[n:], counts[:n]


def dpo_loss(chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, beta: float) -> tuple[Any, Any]:
    """The mean DPO loss of a batch and each pair's implicit reward margin β·(Δ log-ratio)."""
    import torch

    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -torch.nn.functional.logsigmoid(margin).mean(), margin


def add_reference(
    model: Any, examples: list[dict[str, Any]], pad_id: int, batch_size: int, bf16: bool
) -> None:
    """Store the (starting, frozen) model's log-probabilities of each pair in the examples."""
    import torch

    from trainers.batching import autocast

    collate = PairCollator(pad_id)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(model, bf16):
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            batch = to_device(collate(chunk), dev)
            chosen, rejected, _ = policy_logps(model, batch)
            for ex, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
                ex["ref_chosen"], ex["ref_rejected"] = c, r
    model.train(was_training)


def trainer_class() -> Any:
    from transformers import Trainer

    from trainers.batching import autocast, trainer_mixin

    class DPOTrainer(trainer_mixin(), Trainer):  # type: ignore[misc]
        """A Trainer whose loss is DPO (plus the optional SFT term); logs the reward margin and accuracy."""

        def __init__(self, *args: Any, beta: float = 0.1, sft_weight: float = 0.0, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.beta, self.sft_weight = beta, sft_weight

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            with autocast(model, self.bf16_autocast):
                chosen, rejected, counts = policy_logps(model, inputs)
            loss, margin = dpo_loss(chosen, rejected, inputs["ref_chosen"], inputs["ref_rejected"], self.beta)
            logged = {"dpo_loss": loss, "reward_margin": margin.mean(),
                      "reward_accuracy": (margin > 0).float().mean(), "chosen_logp": chosen.mean(),
                      "rejected_logp": rejected.mean()}  # fmt: skip
            if self.sft_weight:
                sft = (-chosen / counts.clamp(min=1)).mean()
                loss = loss + self.sft_weight * sft
                logged["sft_loss"] = sft
            self._running.add(**logged)
            return (loss, None) if return_outputs else loss

    return DPOTrainer


LOGGED = ("dpo_loss", "sft_loss", "reward_margin", "reward_accuracy", "chosen_logp", "rejected_logp")


def build_trainer(model: Any, tok: Any, examples: list[dict[str, Any]], args: Any, cfg: Any, *,
                  bf16: bool = False) -> Any:  # fmt: skip
    model.to(args.device)  # the reference pass runs where training will
    add_reference(model, examples, tok.pad_token_id, cfg.eval_batch_size, bf16)
    trainer = trainer_class()(
        model=model, args=args, train_dataset=examples, data_collator=PairCollator(tok.pad_token_id),
        processing_class=tok, beta=cfg.beta, sft_weight=cfg.sft_weight,
    )  # fmt: skip
    trainer.bf16_autocast = bf16
    return trainer
