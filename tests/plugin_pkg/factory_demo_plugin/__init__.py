"""A recipe, a filter and a teacher, each written against the plugin contract of distill-factory."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from factory.errors import TeacherError, TeacherUnavailable
from factory.teachers.base import Teacher
from factory.types import Completion, Request
from filters.base import Context, Filter, FilterParams, Row, Scored
from recipes.functions import recipe


# -- a recipe: two functions -------------------------------------------------------------------------------
def prompt(row: dict[str, Any]) -> str:
    return f"Say this loudly: {row['text']}"


def parse(row: dict[str, Any], text: str) -> dict[str, Any] | None:
    """Completions in capitals, kept with the seed text."""
    text = text.strip()
    return {"text": text.upper(), "source": row["text"]} if text else None


SHOUT = recipe("shout", prompt, parse, required=["text"])


# -- a filter ----------------------------------------------------------------------------------------------
class MinWordsParams(FilterParams):
    min_words: int = 3


async def _score(rows: list[Row], params: MinWordsParams, ctx: Context) -> list[Scored]:
    return [Scored(r.id, score=float(len(r.text.split()))) for r in rows]


def _decide(s: Scored, params: MinWordsParams) -> tuple[bool, str | None]:
    ok = s.score is not None and s.score >= params.min_words
    return ok, None if ok else f"fewer than {params.min_words} words"


MIN_WORDS = Filter(
    slug="min_words",
    summary="Keep records of at least min_words words.",
    params=MinWordsParams,
    code_version="1",
    score=_score,
    decide=_decide,
    thresholds=("min_words",),
)


# -- a teacher ---------------------------------------------------------------------------------------------
class Relay(Teacher):
    """Relays chat requests to an OpenAI-compatible server (option base_url), one connection per request."""

    backend = "relay"

    def __init__(self, spec: str, model: str, options: dict[str, Any]):
        super().__init__(spec, model)
        self.base_url = str(options.pop("base_url")).rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url}

    async def complete(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return [await self._one(r) for r in requests]

    async def _one(self, req: Request) -> Completion | TeacherError:
        s = req.sampling
        body = {"model": self.model, "messages": list(req.messages), "temperature": s.temperature,
                "max_tokens": s.max_tokens, "seed": s.seed}  # fmt: skip
        self.attempts += 1
        t0 = time.perf_counter()
        assert self._session is not None
        try:
            async with self._session.post(self.base_url + "/chat/completions", json=body) as r:
                doc = await r.json()
        except aiohttp.ClientError as exc:
            return self.failed(TeacherUnavailable(str(exc), kind="connection"))
        choice = doc["choices"][0]
        return Completion(
            text=choice["message"]["content"],
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=doc["usage"]["prompt_tokens"],
            completion_tokens=doc["usage"]["completion_tokens"],
            latency_ms=(time.perf_counter() - t0) * 1000,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
