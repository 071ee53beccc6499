"""Light internal values: what a recipe asks for and what a teacher answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if self.stop:
            out["stop"] = list(self.stop)
        if self.seed is not None:
            out["seed"] = self.seed
        return out


@dataclass(frozen=True, slots=True)
class Request:
    """One call to a teacher. ``body()`` is exactly what the request key hashes (with the teacher identity)."""

    messages: tuple[dict[str, str], ...]
    sampling: Sampling = Sampling()
    sample_index: int = 0
    json_schema: dict[str, Any] | None = None
    logprobs: int | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": list(self.messages),
            "sampling": self.sampling.to_json(),
            "sample": self.sample_index,
        }
        if self.json_schema is not None:
            out["schema"] = self.json_schema
        if self.logprobs is not None:
            out["logprobs"] = self.logprobs
        return out

    @staticmethod
    def chat(user: str, *, system: str | None = None, **kwargs: Any) -> Request:
        msgs: list[dict[str, str]] = []
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": user})
        return Request(messages=tuple(msgs), **kwargs)


@dataclass(slots=True)
class TokenLogprobs:
    """Soft labels: the teacher's top-k log-probabilities for each token it generated (``Request.logprobs``
    asks for k). The canonical in-memory form, what the cache keeps (packed, factory.logprobs) and what an
    export writes (``teacher_token_ids``, ``teacher_top_ids``, ``teacher_top_logprobs``):

    - ``token_ids[i]``: the i-th generated token's id, in order (``len == completion_tokens``);
    - ``top_ids[i]`` / ``top_logprobs[i]``: the k most likely tokens at position i and their natural-log
      probabilities, best first, aligned with ``token_ids`` (a teacher may give fewer than k at a position);
    - ``token_logprobs[i]``: the generated token's own logprob (NaN where the teacher gave none).

    Local engines (vllm) and an OpenAI-compatible vLLM server asked with ``token_ids: true`` give ids. Other
    providers give token strings only: then ``token_ids`` and ``top_ids`` are None and ``tokens`` /
    ``top_tokens`` hold the strings, aligned the same way. Values are float32 (as engines compute them)."""

    token_ids: list[int] | None
    top_ids: list[list[int]] | None
    top_logprobs: list[list[float]]
    token_logprobs: list[float] = field(default_factory=list)
    tokens: list[str] | None = None
    top_tokens: list[list[str]] | None = None

    @property
    def has_ids(self) -> bool:
        return self.token_ids is not None and self.top_ids is not None


@dataclass(slots=True)
class Completion:
    """A teacher's answer. ``cached`` tells whether it came from the store instead of the teacher.

    ``reasoning`` is a reasoning model's thinking, kept apart from the answer in ``text``: the server's
    ``reasoning_content`` (or ``reasoning``) field, or what stood between think tags at the start of the
    content (factory.teachers.reasoning). None: the teacher gave none. A length-cut answer
    (``finish_reason == "length"``) may hold reasoning and an empty ``text``."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    key: str = ""
    cached: bool = False
    logprobs: TokenLogprobs | None = field(
        default=None
    )  # with ``Request.logprobs``, when the teacher gave them
    batch: bool = False  # answered through a provider's Batch API (billed at its batch rate)
    reasoning: str | None = None  # a reasoning model's thinking, apart from the answer text
