"""The teacher protocol: an identity plus one batch-first async method.

``complete(requests)`` takes requests and returns, in the same order, a :class:`Completion` or the
:class:`TeacherError` that request ended with (after the teacher's own retries). It never raises for
one bad request. API teachers fan out under a semaphore (``native_batch = False``, the runner calls
them as requests arrive); local engines run the whole list as one native batch (``native_batch = True``,
the runner gathers whatever is pending into one call).
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from factory.errors import TeacherError
from factory.types import Completion, Request


class Teacher(abc.ABC):
    backend: ClassVar[str]
    native_batch: ClassVar[bool] = False
    supports_json_schema: ClassVar[bool] = False
    supports_logprobs: ClassVar[bool] = False

    def __init__(self, spec: str, model: str):
        self.spec = spec
        self.model = model
        self.attempts = 0  # every call made to the backend, retries included
        self.errors: Counter[str] = Counter()  # failed attempts by kind, retried ones included

    def identity(self) -> dict[str, Any]:
        """What makes two answers interchangeable: part of every request key. Never holds a secret."""
        return {"backend": self.backend, "model": self.model}

    @property
    def name(self) -> str:
        """Short printable id stored with each answer."""
        return f"{self.backend}:{self.model}"

    @abc.abstractmethod
    async def complete(self, requests: Sequence[Request]) -> list[Completion | TeacherError]: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections, engines and threads."""

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "backend": self.backend, "model": self.model}
