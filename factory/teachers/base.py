"""The teacher protocol: an identity plus one batch-first async method.

``complete(requests)`` takes requests and returns, in the same order, a :class:`Completion` or the
:class:`TeacherError` that request ended with (after the teacher's own retries). It never raises for
one bad request. API teachers fan out under a semaphore, and an async engine (vLLM's) batches continuously
on its own (``native_batch = False``: the runner calls them as requests arrive); a batch engine
(transformers) runs the whole list as one native batch (``native_batch = True``: the runner gathers
whatever is pending into one call).
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from factory.errors import TeacherError
from factory.types import Completion, Request


class Withheld(Exception):
    """A request the teacher did not send because its caller is stopping (``Teacher.paused``)."""


class Teacher(abc.ABC):
    backend: ClassVar[str]
    native_batch: ClassVar[bool] = False
    supports_json_schema: ClassVar[bool] = False
    supports_logprobs: ClassVar[bool] = False
    streams_tokens: bool = False  # partial_tokens() tells the tokens of answers still being generated
    # a backend that can send requests through a provider's Batch API sets this, and sets batch_settings
    # when configured with mode: batch; then it provides batch_api(), batch_line(), batch_outcome() and
    # batch_failed() (see factory.teachers.openai), which factory.batch_queue drives
    supports_batch: ClassVar[bool] = False
    batch_settings: Any = None

    def __init__(self, spec: str, model: str):
        self.spec = spec
        self.model = model
        self.attempts = 0  # every call made to the backend, retries included
        self.unsent = 0  # attempts that never reached a server (refused, DNS, connect time-out)
        self.in_flight = 0  # attempts sent and not yet answered (backends that can tell; else 0)
        self.paused = False  # set by a runner that is stopping: a backend that can, sends nothing more
        self.errors: Counter[str] = Counter()  # failed attempts by kind, retried ones included
        self.examples: dict[str, str] = {}  # the latest message of each failure kind
        self.last_failure: str | None = None  # the latest failed attempt, as one short line
        # Set by the runner: called with each request and its answer (a Completion, or a TeacherError that
        # is not retried) the moment the answer is parsed, before the caller's task resumes. Optional for
        # a backend; the runner takes the answers of one that does not call it when complete() returns.
        self.on_answer: Callable[[Request, Completion | TeacherError], None] | None = None

    def failed(self, err: TeacherError, where: str = "") -> TeacherError:
        """Count a failed attempt by kind and keep its message as the example of that kind."""
        self.errors[err.kind] += 1
        reason = short_reason(str(err))
        if err.kind.startswith("http_"):  # "http_401 …: HTTP 401: Incorrect API key" says the status twice
            reason = reason.removeprefix(f"HTTP {err.kind[5:]}: ")
        self.examples[err.kind] = reason
        self.last_failure = f"{err.kind}{f' from {where}' if where else ''}: {reason}"
        return err

    def identity(self) -> dict[str, Any]:
        """What makes two answers interchangeable: part of every request key. Never holds a secret."""
        return {"backend": self.backend, "model": self.model}

    @property
    def name(self) -> str:
        """Short printable id stored with each answer."""
        return f"{self.backend}:{self.model}"

    @abc.abstractmethod
    async def complete(self, requests: Sequence[Request]) -> list[Completion | TeacherError]: ...

    def partial_tokens(self) -> int:
        """Output tokens generated so far for the requests still in flight, by a backend that can see them
        (``streams_tokens``: a local engine); asked when progress is reported, about once a second."""
        return 0

    def suggested_in_flight(self) -> int | None:
        """How many seeds a runner should keep in flight to keep this teacher busy, by its own measure (a
        local engine's capacity; asked again as the run goes, so it may change once the engine has
        started), or None: then the runner sizes its window from the config's ``max_in_flight``."""
        return None

    def pacing(self) -> str | None:
        """Why this teacher holds its starts back now, for progress lines (``waiting 12 s: tokens per
        minute``); None when it does not (or cannot tell)."""
        pacer = getattr(self, "pacer", None)
        holding = getattr(pacer, "holding", None)
        return holding() if callable(holding) else None

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections, engines and threads."""

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "backend": self.backend, "model": self.model}


def short_reason(message: str, limit: int = 160) -> str:
    """One line from a failure message: a JSON error body is reduced to its ``message`` (OpenAI and vLLM
    put it under ``error.message``, others under ``message`` or ``detail``)."""
    head, brace, rest = message.partition("{")
    if brace:
        try:
            import orjson

            doc = orjson.loads(brace + rest)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            err = doc.get("error")
            inner = err.get("message") if isinstance(err, dict) else err
            text = inner or doc.get("message") or doc.get("detail")
            if isinstance(text, str) and text:
                message = f"{head.strip().rstrip(':')}: {text}" if head.strip() else text
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
