"""The openai teacher against the fault-injection server on 127.0.0.1: concurrency, retries, rejections."""

from __future__ import annotations

import asyncio
import time

import pytest

from factory.errors import TeacherRejected, TeacherUnavailable
from factory.teachers.openai import OpenAITeacher
from factory.testing.fault_server import FaultConfig, serve_in_thread
from factory.types import Completion, Request, Sampling


def _teacher(url: str, **opts) -> OpenAITeacher:
    opts.setdefault("backoff_base_s", 0.01)
    return OpenAITeacher(f"openai:m@{url}", f"m@{url}", opts)


def _reqs(n: int) -> list[Request]:
    return [Request.chat(f"question {i}", sampling=Sampling(seed=i)) for i in range(n)]


async def _complete(t: OpenAITeacher, reqs: list[Request]) -> list:
    try:
        return await t.complete(reqs)
    finally:
        await t.aclose()


def test_bounded_concurrency_and_usage():
    with serve_in_thread(FaultConfig(latency=0.05)) as srv:
        t = _teacher(srv.base_url, max_in_flight=8)
        out = asyncio.run(_complete(t, _reqs(64)))
        stats = srv.stats()
    assert all(isinstance(c, Completion) for c in out)
    assert all(c.completion_tokens > 0 and c.prompt_tokens > 0 and c.latency_ms >= 50 for c in out)
    assert stats["requests"] == 64
    assert 4 <= stats["max_in_flight"] <= 8  # the semaphore holds, and it is really used


def test_transient_faults_are_retried_until_success():
    cfg = FaultConfig(
        fault_rate=1.0, fault_kinds=("500", "truncated", "reset", "429"), fault_repeats=2, retry_after=0.05
    )
    with serve_in_thread(cfg) as srv:
        t = _teacher(srv.base_url, max_in_flight=16)
        out = asyncio.run(_complete(t, _reqs(40)))
        stats = srv.stats()
    assert all(isinstance(c, Completion) and c.text for c in out), [
        o for o in out if not isinstance(o, Completion)
    ]
    assert stats["requests"] == 40 * 3  # two failed attempts then a success, for each
    assert t.attempts == 120
    assert (
        set(t.errors) <= {"http_500", "bad_body", "connection", "http_429"} and sum(t.errors.values()) == 80
    )


def test_retry_after_is_honoured():
    cfg = FaultConfig(fault_rate=1.0, fault_kinds=("429",), fault_repeats=1, retry_after=0.4)
    with serve_in_thread(cfg) as srv:
        t = _teacher(srv.base_url)
        loop_time = asyncio.run(_timed(t, _reqs(3)))
    assert loop_time >= 0.4  # jitter alone (base 0.01 s) would have retried at once


async def _timed(t, reqs):
    t0 = time.perf_counter()
    await _complete(t, reqs)
    return time.perf_counter() - t0


def test_other_4xx_is_not_retried():
    with serve_in_thread(FaultConfig(reject_rate=1.0)) as srv:
        t = _teacher(srv.base_url)
        out = asyncio.run(_complete(t, _reqs(5)))
        stats = srv.stats()
    assert all(isinstance(o, TeacherRejected) and o.kind == "http_400" for o in out)
    assert stats["requests"] == 5


def test_timeouts_give_up_after_max_retries():
    cfg = FaultConfig(fault_rate=1.0, fault_kinds=("timeout",), fault_repeats=100)
    with serve_in_thread(cfg) as srv:
        t = _teacher(srv.base_url, request_timeout_s=0.2, max_retries=2)
        out = asyncio.run(_complete(t, _reqs(2)))
    assert all(isinstance(o, TeacherUnavailable) and o.kind == "timeout" for o in out)
    assert t.attempts == 6


def test_unreachable_endpoint_is_a_connection_error():
    t = _teacher("http://127.0.0.1:9/v1", max_retries=1)
    out = asyncio.run(_complete(t, _reqs(1)))
    assert isinstance(out[0], TeacherUnavailable) and out[0].kind == "connection"


@pytest.mark.parametrize("n_in_flight", [1, 32])
def test_payload_shape(n_in_flight):
    seen = []

    def reply(messages, body):
        seen.append(body)
        return "ok"

    with serve_in_thread(FaultConfig(reply=reply)) as srv:
        t = _teacher(srv.base_url, max_in_flight=n_in_flight)
        req = Request.chat("hi", system="sys", sampling=Sampling(temperature=0.3, max_tokens=9, stop=("\n",), seed=5),
                           json_schema={"type": "object"})  # fmt: skip
        asyncio.run(_complete(t, [req]))
    body = seen[0]
    assert body["model"] == "m" and body["max_tokens"] == 9 and body["stop"] == ["\n"] and body["seed"] == 5
    assert body["messages"][0] == {"role": "system", "content": "sys"}
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
