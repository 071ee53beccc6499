"""The fault server's reasoning answers and its streamed (server-sent events) responses.

Reasoning (``FaultConfig.reasoning``): each answer is preceded by a trace of about ``reasoning_tokens``
tokens that depends only on the body, returned

* ``reasoning_content``: in ``message.reasoning_content`` (DeepSeek's API, vLLM with a reasoning parser);
* ``reasoning``: in ``message.reasoning`` (the name some servers use);
* ``think``: in the content, as ``<think>\\n{trace}\\n</think>\\n\\n{answer}``.

With reasoning on, ``max_tokens`` (4 characters a token) cuts the output as a real server does: the trace
first, then the answer, with ``finish_reason: length``; a cut inside the trace leaves no content (null,
or an unclosed ``<think>`` in ``think`` mode). Usage counts the trace as completion tokens.

Streaming: a body with ``stream: true`` gets ``text/event-stream`` chunks of ``stream_chunk_chars``
characters each (a role chunk, the trace's chunks, the answer's chunks, a chunk with the finish_reason, a
usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``), ``stream_delay`` seconds apart.
Faults of kind ``disconnect`` drop the connection halfway through the chunks (halfway through the body
of a plain answer, sent with its full Content-Length); ``stall`` stops sending there for
``hang_seconds`` (then drops the connection), so only a client's idle time-out ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from aiohttp import web

REASONING_MODES = ("reasoning_content", "reasoning", "think")
STREAM_FAULTS = ("disconnect", "stall")

_FILLER = (
    "We restate what is asked. We list what is known. We try the first idea and check it against the "
    "example. It does not fit, so we try the next one. "
)


def trace(key: str, tokens: int) -> str:
    """A deterministic reasoning trace of about ``tokens`` tokens (4 characters each) for a body's key."""
    head = f"Let me think about request {key[:8]} step by step. "
    text = head
    while len(text) < tokens * 4:
        text += _FILLER
    return text[: max(len(head), tokens * 4)].rstrip()


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


def with_reasoning(doc: dict[str, Any], body: dict[str, Any], mode: str, thought: str) -> dict[str, Any]:
    """The completion ``doc`` (its first choice) given a reasoning trace in ``mode``, cut by max_tokens."""
    choice = doc["choices"][0]
    message = choice["message"]
    answer = message.get("content") or ""
    limit = body.get("max_tokens")
    budget = limit * 4 if isinstance(limit, int) and limit > 0 else None
    finish = "stop"
    if mode == "think":
        full = f"<think>\n{thought}\n</think>\n\n{answer}"
        if budget is not None and len(full) > budget:
            full, finish = full[:budget], "length"
        message["content"] = full
        spent = _tokens(full)
    else:
        content: str | None = answer
        if budget is not None and len(thought) >= budget:
            thought, content, finish = thought[:budget], None, "length"
        elif budget is not None and len(thought) + len(answer) > budget:
            content, finish = answer[: budget - len(thought)], "length"
        message["content"] = content
        message[mode] = thought
        spent = _tokens(thought) + _tokens(content or "")
    choice["finish_reason"] = finish
    usage = doc["usage"]
    usage["completion_tokens"] = usage["completion_tokens"] - _tokens(answer) + spent
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return doc


def events(doc: dict[str, Any], body: dict[str, Any], chunk_chars: int) -> Iterator[bytes]:
    """The SSE events of a completion ``doc`` (first choice), as OpenAI's API streams it."""
    choice = doc["choices"][0]
    message = choice["message"]
    base = {
        "id": doc["id"],
        "object": "chat.completion.chunk",
        "created": doc["created"],
        "model": doc["model"],
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [c]}) + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for name in ("reasoning_content", "reasoning", "content"):
        text = message.get(name)
        if isinstance(text, str):
            for i in range(0, len(text), chunk_chars):
                yield chunk({name: text[i : i + chunk_chars]})
    yield chunk({}, choice.get("finish_reason") or "stop")
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        yield b"data: " + orjson.dumps({**base, "choices": [], "usage": doc["usage"]}) + b"\n\n"
    yield b"data: [DONE]\n\n"


async def stream(
    request: web.BaseRequest,
    doc: dict[str, Any],
    body: dict[str, Any],
    *,
    chunk_chars: int,
    delay: float,
    fault: str | None,
    hang: Callable[[], Any],
    abort: Callable[[web.BaseRequest], None],
) -> web.StreamResponse:
    """Send ``doc`` as an event stream; ``fault`` (``disconnect`` or ``stall``) breaks it halfway."""
    resp = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    parts = list(events(doc, body, max(1, chunk_chars)))
    half = len(parts) // 2
    for i, part in enumerate(parts):
        if fault is not None and i == half:
            await _break(request, fault, hang, abort)
            return resp
        await resp.write(part)
        if delay > 0 and i + 1 < len(parts):
            await asyncio.sleep(delay)
    await resp.write_eof()
    return resp


async def broken_plain(
    request: web.BaseRequest,
    doc: dict[str, Any],
    fault: str,
    hang: Callable[[], Any],
    abort: Callable[[web.BaseRequest], None],
) -> web.StreamResponse:
    """A plain answer whose connection breaks (``disconnect``) or stalls (``stall``) halfway through its body."""
    data = orjson.dumps(doc)
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(data)
    await resp.prepare(request)
    await resp.write(data[: len(data) // 2])
    await _break(request, fault, hang, abort)
    return resp


async def _break(
    request: web.BaseRequest, fault: str, hang: Callable[[], Any], abort: Callable[[web.BaseRequest], None]
) -> None:
    if fault == "stall":
        with contextlib.suppress(asyncio.TimeoutError):
            await hang()
    abort(request)
