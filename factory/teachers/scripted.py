"""A deterministic teacher for unit tests that need exact outputs.

``scripted:NAME`` answers each request with ``options["answers"]`` looked up by the last user message
(a dict), or by a callable ``options["fn"](request) -> str``; anything else gets ``options["default"]``.
An answer that is a Completion is returned as it is (a finish_reason, token counts of its own).
An answer of None is a rejection the exact request always gets (cacheable, like a local engine refusing
it); an answer that is a TeacherError is returned as it is. It counts calls, so tests can assert that a
cached request never reached it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from factory.errors import TeacherError, TeacherRejected
from factory.teachers.base import Teacher
from factory.types import Completion, Request


class ScriptedTeacher(Teacher):
    backend = "scripted"
    native_batch = False

    def __init__(self, spec: str, model: str, options: dict[str, Any]):
        super().__init__(spec, model or "script")
        self.answers: dict[str, str | Completion | TeacherError | None] = dict(options.get("answers", {}))
        self.fn: Callable[[Request], str | Completion | TeacherError | None] | None = options.get("fn")
        self.default: str | Completion | TeacherError | None = options.get("default", "")
        self.calls: list[Request] = []
        self.token_s = float(options.get("token_s", 0.0))
        self.streams_tokens = self.token_s > 0
        self._partial: dict[int, int] = {}  # words generated so far, by id(request)

    def partial_tokens(self) -> int:
        return sum(self._partial.values())

    async def _generate(self, req: Request, words: int) -> None:
        self.in_flight += 1
        self._partial[id(req)] = 0
        try:
            for i in range(words):
                await asyncio.sleep(self.token_s)
                self._partial[id(req)] = i + 1
        finally:
            self.in_flight -= 1
            del self._partial[id(req)]

    async def complete(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        out: list[Completion | TeacherError] = []
        for req in requests:
            self.calls.append(req)
            self.attempts += 1
            prompt = req.messages[-1]["content"]
            text = self.fn(req) if self.fn else self.answers.get(prompt, self.default)
            if text is None:
                out.append(TeacherRejected("scripted rejection", kind="invalid_request", cacheable=True))
                continue
            if isinstance(text, TeacherError | Completion):
                out.append(text)
                continue
            if self.token_s:
                await self._generate(req, len(text.split()))
            out.append(
                Completion(
                    text=text,
                    finish_reason="stop",
                    prompt_tokens=len(prompt.split()),
                    completion_tokens=len(text.split()),
                )
            )
        return out


def create(spec: str, model: str, options: dict[str, Any]) -> Teacher:
    return ScriptedTeacher(spec, model, options)
