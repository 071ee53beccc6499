"""Knowledge distillation from the teacher's top-k distribution (Hinton et al. 2015) on a causal student.

The export's plain or conversation rows (``prompt_completion`` or ``messages``) carry, next to the answer text,
the teacher's own answer tokens and its top-k alternatives at each of them (``KD_COLUMNS``). The student reads
the prompt through its chat template and then the teacher's exact token sequence, so every answer position
lines up with one of the teacher's. With, at answer position t, the student's logits z_t, the teacher's token
y_t, its top-k ids i_1 … i_k and their log-probabilities l_1 … l_k, and the temperature T:

    q_t(j)      = exp(l_j / T) / Σ_m exp(l_m / T)                  the teacher, renormalized over its top-k
    log p_t(j)  = log_softmax(z_t / T)[i_j]                         the student (whole vocabulary), at i_j
    KL_t        = Σ_j q_t(j) · (log q_t(j) − log p_t(j))
    CE          = mean over the answer tokens of −log_softmax(z_t)[y_t]
    KL          = mean over the answer positions that have a top-k of KL_t
    loss        = (1 − kd_weight) · CE + kd_weight · T² · KL

(T² keeps the soft term's gradients the size of the hard term's as T changes.) When the teacher's tokens do
not end with the end-of-sequence token, it is appended, learned by CE only, so the student learns to stop.

The student must read token ids as the teacher wrote them: ``check`` fails, before anything is written, when
an id is outside the student's vocabulary or when the student's tokenizer does not decode the teacher's tokens
into the exported answer text.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from factory.errors import ConfigError
from trainers import data
from trainers.causal import IGNORE, PadCollator, answer_logits, prompt_ids

log = logging.getLogger(__name__)

KD_COLUMNS = data.KD_COLUMNS
LOGGED = ("ce_loss", "kd_loss")
SAMPLE = 16  # rows whose decoded teacher tokens are compared with their answer text
HOW = (
    "give the recipe the param `logprobs: K` (e.g. `params: {logprobs: 20}`; a teacher that returns token ids "
    "and top-k log-probabilities: vllm, embedded, or an OpenAI-compatible vLLM server), re-run it and export "
    "with --as prompt_completion or --as messages; or train --task sft on this export"
)


def answer_of(row: dict[str, Any], shape: str) -> str:
    """The answer text the teacher's tokens should spell: the completion, or the last assistant turn."""
    if shape == "messages":
        return str([m for m in row["messages"] if m["role"] == "assistant"][-1]["content"])
    return str(row["completion"])


def user_prompt(tok: Any, row: dict[str, Any], shape: str, chat: bool) -> list[int]:
    """The prompt tokens of a row as the student reads them (its chat template, generation prompt added)."""
    if shape == "messages":
        msgs = list(row["messages"])
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        if chat:
            text = str(tok.apply_chat_template(msgs[:last], add_generation_prompt=True, tokenize=False))
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return prompt_ids(tok, "\n".join(str(m["content"]) for m in msgs[:last]), chat)
    return prompt_ids(tok, str(row["prompt"]), chat)


def _norm(text: str) -> str:
    return " ".join(text.split())


def check(export: Any, split: Any, tok: Any, vocab_size: int, label: str) -> None:
    """A ConfigError when the export has no top-k columns, or the student does not share the teacher's
    tokenizer (an id out of its vocabulary; the teacher's tokens decode to something else than the answers)."""
    missing = [c for c in KD_COLUMNS if c not in split.column_names]
    if missing:
        raise ConfigError(
            f"--task kd: {export.path} has no column {missing[0]} (the teacher's answer tokens and its top-k "
            f"log-probabilities at each); {HOW}"
        )
    table = split.data.table if hasattr(split.data, "table") else split.data
    import pyarrow.compute as pc

    for col in ("teacher_token_ids", "teacher_top_ids"):
        flat = table.column(col)
        while hasattr(flat.type, "value_type"):
            flat = pc.list_flatten(flat)
        low, top = pc.min(flat).as_py(), pc.max(flat).as_py()
        if low is not None and int(low) < 0:
            raise ConfigError(f"--task kd: {export.path}: {col} holds the token id {low}; export it again")
        if top is not None and int(top) >= vocab_size:
            raise ConfigError(
                f"--student {label}: its tokenizer is not the teacher's: {col} holds the token id {top}, and the "
                f"student's vocabulary has {vocab_size} ids; --task kd needs a student of the teacher's family "
                "(the same tokenizer), or train --task sft on this export"
            )
    rows = [r for r in split.select(range(min(len(split), 4 * SAMPLE))) if r["teacher_token_ids"]][:SAMPLE]
    if not rows:
        raise ConfigError(f"--task kd: no row of train in {export.path} has {KD_COLUMNS[0]}; {HOW}")
    bad = []
    for r in rows:
        got = str(tok.decode(r["teacher_token_ids"], skip_special_tokens=True))
        if _norm(got) != _norm(answer_of(r, export.shape)):
            bad.append((got, answer_of(r, export.shape)))
    if len(bad) * 2 > len(rows):  # another tokenizer garbles every row; a reworded answer only some
        got, want = bad[0]
        raise ConfigError(
            f"--student {label}: its tokenizer is not the teacher's: the student decodes teacher_token_ids to "
            f"{_norm(got)[:60]!r} where the answer is {_norm(want)[:60]!r} ({len(bad)} of {len(rows)} rows "
            "checked differ); --task kd needs a student of the teacher's family (the same tokenizer), or train "
            "--task sft on this export"
        )
    if bad:
        log.warning("%d of %d rows checked: the teacher's tokens differ from the exported answer text (the "
                    "student learns the tokens)", len(bad), len(rows))  # fmt: skip


def _aligned(r: dict[str, Any], i: int) -> bool:
    ids, tops, lps = r["teacher_token_ids"], r["teacher_top_ids"], r["teacher_top_logprobs"]
    if ids is None or tops is None or lps is None or not ids:
        return False
    if len(tops) != len(ids) or len(lps) != len(ids):
        raise ConfigError(
            f"--task kd: row {i} of train: teacher_top_ids ({len(tops)}) and teacher_top_logprobs ({len(lps)}) "
            f"must have one entry per token of teacher_token_ids ({len(ids)}); export it again"
        )
    for a, b in zip(tops, lps, strict=True):
        if len(a) != len(b):
            raise ConfigError(
                f"--task kd: row {i} of train: teacher_top_ids and teacher_top_logprobs differ in length at a "
                "position (k ids, k log-probabilities each); export it again"
            )
    return True


def encode_rows(
    rows: Any, shape: str, tok: Any, chat: bool, max_length: int, *, strict: bool = True
) -> list[dict[str, Any]]:
    """One example per row: the prompt, the teacher's tokens (and an end of sequence) and the top-k of each.
    Rows without them are left out; ``strict``: none at all is a ConfigError."""
    out: list[dict[str, Any]] = []
    missing = short = 0
    eos = tok.eos_token_id
    for i, r in enumerate(rows):
        if not _aligned(r, i):
            missing += 1
            continue
        prompt = user_prompt(tok, r, shape, chat)
        answer = [int(x) for x in r["teacher_token_ids"]]
        tail = [] if eos is None or answer[-1] == eos else [eos]
        ids = (prompt + answer + tail)[:max_length]
        n = len(ids) - len(prompt)  # answer positions kept
        if n < 1:
            short += 1
            continue
        kept = min(n, len(answer))
        out.append({
            "input_ids": ids, "labels": [IGNORE] * len(prompt) + ids[len(prompt):],
            "top_ids": [list(map(int, x)) for x in r["teacher_top_ids"][:kept]],
            "top_logprobs": [list(map(float, x)) for x in r["teacher_top_logprobs"][:kept]],
        })  # fmt: skip
    if missing:
        log.warning("%d rows left out: no teacher tokens and top-k log-probabilities", missing)
    if short:
        log.warning("%d rows left out: no answer tokens within max_length %d", short, max_length)
    if not out and missing and strict:
        raise ConfigError(f"--task kd: no training row has {KD_COLUMNS[0]}; {HOW}")
    return out


class KDCollator:
    """The padded batch (``PadCollator``) plus, for each of its answer positions in the order
    ``answer_logits`` returns them, the teacher's top-k: ``top_ids`` [N, k] and ``top_logprobs`` [N, k]
    (−inf where a position has fewer alternatives, or none: an appended end of sequence, a cut answer)."""

    def __init__(self, pad_id: int):
        self.pad = PadCollator(pad_id)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.pad([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
        k = max((len(x) for r in rows for x in r["top_ids"]), default=1)
        ids: list[list[int]] = []
        lps: list[list[float]] = []
        for r, labels in zip(rows, batch["labels"], strict=True):
            n = int((labels[1:] != IGNORE).sum())  # answer positions of this row, in order
            for t in range(n):
                a = r["top_ids"][t] if t < len(r["top_ids"]) else []
                b = r["top_logprobs"][t] if t < len(r["top_logprobs"]) else []
                b = [x if math.isfinite(x) else -math.inf for x in b]
                ids.append(a + [0] * (k - len(a)))
                lps.append(b + [-math.inf] * (k - len(b)))
        batch["top_ids"] = torch.tensor(ids, dtype=torch.long).reshape(-1, k)
        batch["top_logprobs"] = torch.tensor(lps, dtype=torch.float32).reshape(-1, k)
        return batch


def kd_terms(
    logits: Any, targets: Any, top_ids: Any, top_logprobs: Any, temperature: float
) -> tuple[Any, Any]:
    """The mean CE over the answer tokens and the mean KL(teacher top-k ‖ student) over the positions that
    have a top-k (see the module docstring); ``logits`` [N, vocab] are the student's at the N answer positions."""
    import torch

    logits = logits.float()
    ce = torch.nn.functional.cross_entropy(logits, targets)
    valid = torch.isfinite(top_logprobs)
    has = valid.any(-1)
    scaled = torch.where(valid, top_logprobs / temperature, torch.full_like(top_logprobs, -math.inf))
    log_q = torch.log_softmax(torch.where(has[:, None], scaled, torch.zeros_like(scaled)), -1)
    q = torch.where(valid, log_q.exp(), torch.zeros_like(log_q))
    log_q = torch.where(valid, log_q, torch.zeros_like(log_q))  # q = 0 there: no 0·(−inf)
    log_p = torch.log_softmax(logits / temperature, -1).gather(1, top_ids)
    per_position = (q * (log_q - log_p)).sum(-1)
    # the mean over the positions with a top-k, without asking the device how many there are
    kl = (per_position * has).sum() / has.sum().clamp(min=1)
    return ce, kl


def kd_loss(ce: Any, kl: Any, weight: float, temperature: float) -> Any:
    return (1.0 - weight) * ce + weight * temperature**2 * kl


def eval_kl(model: Any, examples: list[dict[str, Any]], pad_id: int, batch_size: int) -> float | None:
    """KL(teacher top-k ‖ student) at T = 1 per answer position that has a top-k, over ``examples``."""
    import torch

    from trainers.causal import to_device

    collate = KDCollator(pad_id)
    dev = next(model.parameters()).device
    total, positions = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = to_device(collate(examples[i : i + batch_size]), dev)
            logits, targets, _ = answer_logits(
                model, {k: v for k, v in batch.items() if not k.startswith("top_")}
            )
            kl = kd_terms(logits, targets, batch["top_ids"], batch["top_logprobs"], 1.0)[1]
            n = int(torch.isfinite(batch["top_logprobs"]).any(-1).sum())
            total, positions = total + float(kl) * n, positions + n
    return total / positions if positions else None


def trainer_class() -> Any:
    from transformers import Trainer

    from trainers.batching import autocast, trainer_mixin

    class KDTrainer(trainer_mixin(), Trainer):  # type: ignore[misc]
        """A Trainer whose loss is CE on the teacher's tokens plus the KL to its top-k; logs both terms."""

        def __init__(self, *args: Any, weight: float = 0.5, temperature: float = 1.0, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.weight, self.temperature = weight, temperature

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            batch = {k: v for k, v in inputs.items() if not k.startswith("top_")}
            with autocast(model, self.bf16_autocast):
                logits, targets, _ = answer_logits(model, batch)
            ce, kl = kd_terms(logits, targets, inputs["top_ids"], inputs["top_logprobs"], self.temperature)
            self._running.add(ce_loss=ce, kd_loss=kl)
            loss = kd_loss(ce, kl, self.weight, self.temperature)
            return (loss, None) if return_outputs else loss

    return KDTrainer


def build_trainer(model: Any, tok: Any, examples: list[dict[str, Any]], args: Any, cfg: Any, *,
                  bf16: bool = False) -> Any:  # fmt: skip
    trainer = trainer_class()(
        model=model, args=args, train_dataset=examples, data_collator=KDCollator(tok.pad_token_id),
        processing_class=tok, weight=cfg.kd_weight, temperature=cfg.kd_temperature,
    )  # fmt: skip
    trainer.bf16_autocast = bf16
    return trainer
