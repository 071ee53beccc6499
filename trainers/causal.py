"""Causal-LM students: examples with the loss on the answer only, padding, teacher-forced loss, generation.

An example is token ids with labels; prompt tokens carry the label -100, so only the assistant's part (an
answer, a rationale, a COMET tail) is learned. With a chat template (``chat``) the user text and the answer
are rendered as a conversation, each assistant turn trained and everything else masked; without one the
prompt is plain text and the answer follows it, ended by the EOS token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from factory.errors import ConfigError

log = logging.getLogger(__name__)
IGNORE = -100


def uses_chat(tok: Any, task: str) -> bool:
    """COMET-style triples are plain text ("head relation [GEN] tail"); other tasks use the chat template."""
    return task != "triples" and bool(getattr(tok, "chat_template", None))


def _render(tok: Any, messages: list[dict[str, str]], *, gen: bool) -> str:
    return str(tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False))


def prompt_text(tok: Any, user: str, chat: bool) -> str:
    """What the student is given at inference for ``user``."""
    return _render(tok, [{"role": "user", "content": user}], gen=True) if chat else user


def _ids(tok: Any, text: str, *, first: bool, chat: bool) -> list[int]:
    # Chat text carries its own special tokens; plain text gets the tokenizer's usual ones (a BOS) up front.
    return list(tok(text, add_special_tokens=first and not chat)["input_ids"])


def prompt_ids(tok: Any, user: str, chat: bool) -> list[int]:
    return _ids(tok, prompt_text(tok, user, chat), first=True, chat=chat)


def _example(pieces: list[tuple[list[int], bool]], max_length: int) -> dict[str, list[int]] | None:
    ids: list[int] = []
    labels: list[int] = []
    for part, trained in pieces:
        ids += part
        labels += part if trained else [IGNORE] * len(part)
    ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE for x in labels[1:]):
        return None  # the prompt alone fills max_length: nothing left to learn
    return {"input_ids": ids, "labels": labels}


def encode_pair(tok: Any, user: str, answer: str, chat: bool, max_length: int) -> dict[str, list[int]] | None:
    """One prompt and its answer; the loss is on the answer (and the end of turn)."""
    if chat:
        return encode_messages(tok, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                               max_length)  # fmt: skip
    prompt = _ids(tok, user, first=True, chat=False)
    rest = [*_ids(tok, " " + answer.strip(), first=False, chat=False), tok.eos_token_id]
    return _example([(prompt, False), (rest, True)], max_length)


def encode_messages(tok: Any, messages: list[dict[str, str]], max_length: int) -> dict[str, list[int]] | None:
    """A conversation: every assistant turn is trained, every other token masked."""
    pieces: list[tuple[list[int], bool]] = []
    done = ""  # the text already turned into pieces
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tok, messages[:i], gen=True)
        after = _render(tok, messages[: i + 1], gen=False)
        if not (before.startswith(done) and after.startswith(before)):
            raise ConfigError(
                "the student's chat template does not render a conversation as the prefix of a longer one, so "
                "assistant turns cannot be masked; use a student with a standard chat template"
            )
        pieces.append((_ids(tok, before[len(done) :], first=not done, chat=True), False))
        pieces.append((_ids(tok, after[len(before) :], first=False, chat=True), True))
        done = after
    if not pieces:
        return None
    return _example(pieces, max_length)


class PadCollator:
    """Right-pads input ids (pad id) and labels (-100) to the longest example of the batch."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        n = max(len(r["input_ids"]) for r in rows)
        ids = [r["input_ids"] + [self.pad_id] * (n - len(r["input_ids"])) for r in rows]
        labels = [r["labels"] + [IGNORE] * (n - len(r["labels"])) for r in rows]
        mask = [[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in rows]
        batch = {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor(mask),
            "labels": torch.tensor(labels),
        }
        batch.update(answer_positions(batch["labels"]))
        return batch


def answer_positions(labels: Any) -> dict[str, Any]:
    """Where a batch's answer tokens are, worked out from its labels on the host (see ``answer_logits``):
    ``answer_at`` the flat index b·(width−1)+t of each position t whose next token is an answer token,
    ``answer_rows`` its row b, ``answer_start`` the first column of an answer token (an int)."""
    width = labels.size(1)
    at = (labels[:, 1:] != IGNORE).reshape(-1).nonzero()[:, 0]
    trained = (labels[:, 1:] != IGNORE).any(0).nonzero()
    start = int(trained[0]) + 1 if len(trained) else 1
    return {"answer_at": at, "answer_rows": at // max(1, width - 1), "answer_start": start}


def to_device(batch: dict[str, Any], dev: Any) -> dict[str, Any]:
    """The batch's tensors on ``dev`` (without waiting for the copies); other values as they are."""
    return {k: v.to(dev, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}


def answer_logits(model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The logits that predict answer tokens, only those: (logits [N, vocab], targets [N], rows [N]).

    The decoder runs over the whole batch, but the vocabulary projection (49k columns for SmolLM2) only over
    the N positions whose next token is an answer token: no logits for prompts or padding. Models whose
    logits are more than ``lm_head(hidden)`` (a soft cap, a scale) get the full projection, cut to
    ``logits_to_keep`` positions.

    The positions come from the collator (``answer_positions``, computed on the host before the batch is
    copied), so picking them is a gather on the device: a training step never waits for the GPU to say how
    many answer tokens there are. A batch without them gets them here, at the cost of that wait."""
    labels = batch["labels"]
    if "answer_at" not in batch:
        found = answer_positions(labels)
        dev = labels.device
        batch = {**batch, **{k: v.to(dev) if hasattr(v, "to") else v for k, v in found.items()}}
    at, rows = batch["answer_at"], batch["answer_rows"]
    targets = labels[:, 1:].reshape(-1).index_select(0, at)
    width = labels.size(1)
    parts = _decoder_and_head(model)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        # position t of row b sits at b·width + t in the flattened hidden states; ``at`` is b·(width−1) + t
        picked = hidden.flatten(0, 1).index_select(0, at + rows)
        return head(picked), targets, rows
    start = int(batch["answer_start"])
    keep = width - start + 1  # positions start-1 … width-1; the last predicts nothing
    kwargs: dict[str, Any] = {}
    if keep < width and _takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits
    cut = width - logits.size(1)
    # the logits cover positions cut … width-1: position t of row b is row b, column t − cut
    t = at - rows * (width - 1)
    flat = logits.flatten(0, 1).index_select(0, rows * logits.size(1) + (t - cut))
    return flat, targets, rows


def answer_loss(model: Any, batch: dict[str, Any], reduction: str = "mean") -> Any:
    """Cross-entropy over the answer tokens of a padded batch (its mean is the model's own loss)."""
    import torch

    logits, targets, _ = answer_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction=reduction)


def sequence_logps(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Per row of the batch: the sum of the log-probabilities of its answer tokens, and how many there are."""
    import torch

    logits, targets, rows = answer_logits(model, batch)
    logp = torch.log_softmax(logits.float(), -1).gather(1, targets[:, None])[:, 0]
    n = batch["labels"].size(0)
    sums = torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)
    counts = torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add(0, rows, torch.ones_like(logp))
    return sums, counts


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """The decoder stack and the output projection of a plain ``lm_head(hidden)`` causal LM, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if any(getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    if not _takes_logits_to_keep(base):  # the signature of the standard decoder-only heads
        return None
    decoder = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or not hasattr(decoder, "embed_tokens"):
        return None
    return decoder, head


def _takes_logits_to_keep(model: Any) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def trainer_class() -> Any:
    from transformers import Trainer

    from trainers.batching import autocast, trainer_mixin

    class AnswerTrainer(trainer_mixin(), Trainer):  # type: ignore[misc]
        """A Trainer whose loss is ``answer_loss`` (logits only where answers are), on length-grouped batches."""

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            with autocast(model, self.bf16_autocast):
                loss = answer_loss(model, inputs)
            return (loss, None) if return_outputs else loss

    return AnswerTrainer


def eval_loss(model: Any, examples: list[dict[str, list[int]]], pad_id: int, batch_size: int) -> float | None:
    """Teacher-forced cross-entropy per answer token over ``examples`` (None when there are none)."""
    import torch

    if not examples:
        return None
    collate = PadCollator(pad_id)
    dev = next(model.parameters()).device
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = to_device(collate(examples[i : i + batch_size]), dev)
            total += float(answer_loss(model, batch, reduction="sum"))
            tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
    return total / tokens if tokens else None


def generate(
    model: Any, tok: Any, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:  # fmt: skip
    """Greedy continuations of token-id prompts (left-padded in batches), decoded without special tokens."""
    import torch

    model.eval()
    dev = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        n = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (n - len(p)) + p for p in chunk], device=dev)
        mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in chunk], device=dev)
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=pad, eos_token_id=tok.eos_token_id, temperature=None, top_p=None, top_k=None,
            )  # fmt: skip
        out += [tok.decode(g[n:], skip_special_tokens=True).strip() for g in gen]
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def pairs(rows: Any, shape: str) -> list[tuple[str, str]]:
    """(user text, answer) of a prompt_completion or triples split."""
    if shape == "triples":
        return [(f"{r['head']} {r['relation']} [GEN]", str(r["tail"])) for r in rows]
    return [(str(r["prompt"]), str(r["completion"])) for r in rows]


def encode_rows(rows: Any, shape: str, tok: Any, chat: bool, max_length: int) -> list[dict[str, list[int]]]:
    """The training examples of an sft or triples split; rows that cannot be shown are counted and logged."""
    if shape == "messages":
        found = [encode_messages(tok, list(r["messages"]), max_length) for r in rows]
    else:
        found = [encode_pair(tok, u, a, chat, max_length) for u, a in pairs(rows, shape)]
    kept = [x for x in found if x is not None]
    if len(kept) < len(found):
        log.warning(
            "%d rows left out: no answer tokens within max_length %d", len(found) - len(kept), max_length
        )
    return kept
