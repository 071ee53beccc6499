"""Per-row sampling and per-row ends for one batched ``generate`` call of the transformers teacher.

Rows of one batch may differ in seed, temperature, top_p, max_tokens and stop strings. transformers'
own sampler draws every row from one global generator, so a row's text would depend on its neighbours;
here ``generate`` runs greedy and :class:`RowSampler`, the last logits processor, makes each sampled
row's choice itself, leaving only that token selectable:

- each row has its own random stream (``random.Random``), seeded from the request's seed and its prompt
  tokens (:func:`row_stream`), or from the OS when the request has no seed; the row takes exactly one
  uniform number from it per generated token, whatever else is in the batch;
- the token is drawn by inverse CDF in float64: softmax of the logits over the row's temperature, the
  nucleus (tokens in order of falling probability, stable for ties, kept while the mass before them is
  under top_p; all tokens in vocabulary order when top_p is 1), then the first token whose cumulative
  probability exceeds ``u × kept mass``;
- temperature 0 rows keep their logits (greedy: ``generate`` takes the argmax).

:class:`RowEnds` ends each row on its own: at an end-of-sequence token (counted), at the first generated
text that holds one of its stop strings, or at its own token limit. ``generate`` pads a row that has
ended while the others go on; the row's length and reason are recorded here, not read from the padding.

This module imports torch and transformers; :mod:`factory.teachers.hf` imports it lazily.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria


def row_stream(seed: int | None, prompt_ids: Sequence[int], sampler: int) -> random.Random:
    """The random stream of one row: a function of the request's seed and prompt only (seedless: fresh);
    ``sampler`` is the keyed version of this module's draw (factory.teachers.hf.SAMPLER)."""
    if seed is None:
        return random.Random()
    h = hashlib.sha256(f"hf-rows{sampler}:{seed}:".encode() + array("q", prompt_ids).tobytes())
    return random.Random(int.from_bytes(h.digest()[:8], "big"))


def _inverse_cdf(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the first position whose cumulative probability exceeds ``u × total`` (never a position
    of probability 0, even where rounding puts the target at the very end)."""
    c = p.cumsum(-1)
    target = (u * c[:, -1]).unsqueeze(-1)
    pos = torch.searchsorted(c, target, right=True).squeeze(-1)
    last = p.shape[-1] - 1 - (p > 0).flip(-1).to(torch.int8).argmax(-1)
    return torch.minimum(pos, last)


def draw(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """One token per row of ``logits`` ([rows, vocab]), each row by its own temperature (> 0), top_p and
    uniform number ``u`` in [0, 1). Every step is row-wise: no row's result reads another row."""
    probs = torch.softmax(logits.double() / temperature.double().unsqueeze(-1), dim=-1)
    tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    nucleus = top_p < 1.0
    plain = ~nucleus
    if bool(plain.any()):
        tokens[plain] = _inverse_cdf(probs[plain], u[plain])
    if bool(nucleus.any()):
        p_sorted, order = torch.sort(probs[nucleus], dim=-1, descending=True, stable=True)
        before = p_sorted.cumsum(-1) - p_sorted
        p_sorted = p_sorted.masked_fill(before >= top_p[nucleus].double().unsqueeze(-1), 0.0)
        pos = _inverse_cdf(p_sorted, u[nucleus])
        tokens[nucleus] = order.gather(-1, pos.unsqueeze(-1)).squeeze(-1)
    return tokens


class RowSampler(LogitsProcessor):
    """Draws each sampled row's next token from its own stream; leaves greedy rows' scores as they are."""

    def __init__(
        self, temperatures: Sequence[float], top_ps: Sequence[float], streams: Sequence[random.Random]
    ):
        self.rows = [r for r, t in enumerate(temperatures) if t > 0]
        self.streams = [streams[r] for r in self.rows]
        self._temps = torch.tensor([temperatures[r] for r in self.rows], dtype=torch.float64)
        self._top_ps = torch.tensor([top_ps[r] for r in self.rows], dtype=torch.float64)
        self._index = torch.tensor(self.rows, dtype=torch.long)
        self._on: Any = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.rows:
            return scores
        dev = scores.device
        if self._on != dev:
            self._temps, self._top_ps, self._index = (
                x.to(dev) for x in (self._temps, self._top_ps, self._index)
            )
            self._on = dev
        u = torch.tensor([s.random() for s in self.streams], dtype=torch.float64).to(dev)
        tokens = draw(scores[self._index], self._temps, self._top_ps, u)
        out = scores.clone()
        out[self._index] = float("-inf")
        out[self._index, tokens] = 0.0
        return out  # type: ignore[return-value]


class RowEnds(StoppingCriteria):
    """Ends each row by itself; ``ends[row]`` is ``(tokens generated, "eos" | "stop" | "length")`` once
    it has ended. Only the tokens after the prompt are read (transformers' ``stop_strings`` also match
    across the end of the prompt: a template ending in a newline would stop a ``"\\n\\n"`` at once), and of
    them the last few, enough to hold the row's longest stop string."""

    def __init__(
        self,
        tok: Any,
        prompt_width: int,
        max_new: Sequence[int],
        stops: Sequence[Sequence[str]],
        eos: set[int],
    ):
        self.tok = tok
        self.width = prompt_width
        self.max_new = list(max_new)
        self.stops = [tuple(s) for s in stops]
        self.eos = eos
        self.window = max((len(x) for s in self.stops for x in s), default=0) + 8
        self.ends: list[tuple[int, str] | None] = [None] * len(self.max_new)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.width
        live = [r for r, e in enumerate(self.ends) if e is None]
        if live:
            last = input_ids[:, -1].tolist()
            texts: dict[int, str] = {}
            wordy = [r for r in live if self.stops[r] and last[r] not in self.eos]
            if wordy:
                tail = input_ids[wordy, self.width :][:, -self.window :]
                texts = dict(zip(wordy, self.tok.batch_decode(tail, skip_special_tokens=True), strict=True))
            for r in live:
                if last[r] in self.eos:
                    self.ends[r] = (n, "eos")
                elif r in texts and any(x in texts[r] for x in self.stops[r]):
                    self.ends[r] = (n, "stop")
                elif n >= self.max_new[r]:
                    self.ends[r] = (n, "length")
        done = [e is not None for e in self.ends]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]
