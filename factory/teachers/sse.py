"""An OpenAI chat-completions event stream (``stream: true``), gathered as it arrives.

Each event is one ``data: {json}`` line (others, ``: comments``, ``event:`` and ``id:`` lines, are
skipped); ``data: [DONE]`` ends the stream. Of each chunk the first choice's ``delta`` gives text
(``content``), reasoning (``reasoning_content`` or ``reasoning``), a refusal, logprobs, and its
``finish_reason`` once set; the last chunk (``stream_options: {include_usage: true}``) carries ``usage``
with no choices. An ``error`` object in an event (vLLM sends one when generation fails midway) is kept.

Only the pieces are kept, never the event bytes: memory grows with the answer, not with the stream's
framing. A server that answers a streamed request with one plain JSON body (it ignored ``stream``) is
kept whole in ``raw`` and read as a plain answer.
"""

from __future__ import annotations

from typing import Any

import orjson

RAW_LIMIT = 64 * 1024 * 1024  # a plain body larger than this is not a chat completion


class ChatStream:
    __slots__ = (
        "_tail",
        "content",
        "done",
        "error",
        "events",
        "finish_reason",
        "logprobs",
        "raw",
        "reasoning",
        "refusal",
        "usage",
    )  # fmt: skip

    def __init__(self) -> None:
        self._tail = b""
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.logprobs: list[Any] | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self.done = False
        self.events = 0
        self.raw: list[bytes] | None = []  # the body until the first event; None after it

    def feed(self, data: bytes) -> None:
        if self.raw is not None and sum(map(len, self.raw)) < RAW_LIMIT:
            self.raw.append(data)
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def _event(self, payload: bytes) -> None:
        self.events += 1
        self.raw = None
        if payload == b"[DONE]":
            self.done = True
            return
        doc = orjson.loads(payload)  # a malformed event fails the response (http: BadResponse)
        if not isinstance(doc, dict):
            raise ValueError(f"an event that is not a JSON object: {payload[:80]!r}")
        err = doc.get("error")
        if err:
            message = err.get("message") if isinstance(err, dict) else err
            self.error = str(message or err)[:500]
            return
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for choice in doc.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                text = delta.get("content")
                if isinstance(text, str) and text:
                    self.content.append(text)
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(thought, str) and thought:
                    self.reasoning.append(thought)
                refusal = delta.get("refusal")
                if isinstance(refusal, str) and refusal:
                    self.refusal.append(refusal)
            lp = choice.get("logprobs")
            if isinstance(lp, dict) and isinstance(lp.get("content"), list):
                if self.logprobs is None:
                    self.logprobs = []
                self.logprobs.extend(lp["content"])
            if choice.get("finish_reason") is not None:
                self.finish_reason = str(choice["finish_reason"])

    def plain_body(self) -> bytes | None:
        """The whole body when it held no event at all (a server that ignored ``stream``)."""
        if self.events or not self.raw:
            return None
        return b"".join(self.raw)
