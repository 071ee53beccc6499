"""The openai teacher against the fault-injection server on 127.0.0.1: concurrency, retries, rejections."""

from __future__ import annotations

import asyncio
import time

import pytest

from factory.errors import ConfigError, TeacherRejected, TeacherUnavailable
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
        # learning a rate from these 429s is tested below; here they only count as retried attempts
        t = _teacher(srv.base_url, max_in_flight=16, learn_rate_limit=False)
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
        t = _teacher(srv.base_url, request_timeout_s=0.2, timeout_per_1k_tokens_s=0, max_retries=2)
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


# ---------------------------------------------------------------------------------------- rate limits


def _limited_run(cfg: FaultConfig, n: int, **opts) -> tuple[list, dict, OpenAITeacher, float]:
    with serve_in_thread(cfg) as srv:
        t = _teacher(srv.base_url, **opts)
        t0 = time.perf_counter()
        out = asyncio.run(_complete(t, _reqs(n)))
        wall = time.perf_counter() - t0
        stats = srv.stats()
    assert all(isinstance(c, Completion) for c in out), [o for o in out if not isinstance(o, Completion)][:3]
    return out, stats, t, wall


def test_a_told_rate_spaces_requests_and_meets_no_429():
    # 600 a minute = 10/s with a bucket of 3. Sent as fast as the semaphore allows, most first attempts
    # are refused; spaced at the told rate, none is (one or two when the box stalls the server thread).
    cfg = FaultConfig(latency=0.02, rpm=600, rpm_burst=3)
    _, untold, _, _ = _limited_run(cfg, 40, max_in_flight=16, learn_rate_limit=False)
    _, told, t, wall = _limited_run(cfg, 40, max_in_flight=16, max_requests_per_minute=600)
    assert untold["rate_limited"] >= 10
    assert told["rate_limited"] <= 2 and t.attempts == told["requests"] == 40 + told["rate_limited"]
    assert 3.5 <= wall <= 8.0  # 40 starts at 10/s


def test_an_untold_rate_is_learnt_from_429s():
    # 1,200 a minute = 20/s: the first burst of 32 meets the limit; then the pacer holds the starts near
    # it, so few attempts are wasted.
    cfg = FaultConfig(latency=0.05, rpm=1200, rpm_burst=5)
    _, stats, t, wall = _limited_run(cfg, 160, max_in_flight=32)
    assert (
        t.pacer.rate is not None
    )  # it paced (its last value says little: the tail sends less than it allows)
    assert stats["rate_limited"] > 0
    assert t.attempts == stats["requests"] <= 1.3 * 160, stats
    # the start-up (half the rate being sent, then 10% more each second) weighs on a run this short:
    # benchmarks/peers.py measures the rate over 2,000 requests
    assert wall <= 160 / 20 / 0.6, wall


def test_429s_wait_out_an_outage_without_using_up_retries():
    # Every attempt is refused for 1.5 s (Retry-After: the time left); max_retries=0 would give up on
    # any other failure at once.
    with serve_in_thread(FaultConfig(latency=0.01)) as srv:
        srv.outage(1.5, kind="429")
        t = _teacher(srv.base_url, max_in_flight=8, max_retries=0)
        out = asyncio.run(_complete(t, _reqs(8)))
        stats = srv.stats()
    assert all(isinstance(c, Completion) for c in out)
    assert stats["responses"].get("200") == 8
    # an outage is not a rate: after one cut at the first 429, the rate is not cut again and again
    assert t.pacer.rate is not None and t.pacer.epoch == 1


def test_429s_give_up_after_rate_limit_wait_s():
    # Refused every time, 0.1 s apart: given up once 0.5 s have gone by since the first 429.
    cfg = FaultConfig(fault_rate=1.0, fault_kinds=("429",), fault_repeats=10_000, retry_after=0.1)
    with serve_in_thread(cfg) as srv:
        t = _teacher(srv.base_url, max_in_flight=2, rate_limit_wait_s=0.5)
        t0 = time.perf_counter()
        out = asyncio.run(_complete(t, _reqs(2)))
        waited = time.perf_counter() - t0
        # A Retry-After beyond the budget: given up at once rather than waited out.
        srv.outage(60, kind="429")
        t = _teacher(srv.base_url, max_in_flight=2, rate_limit_wait_s=0.5)
        t0 = time.perf_counter()
        out += asyncio.run(_complete(t, _reqs(2)))
        at_once = time.perf_counter() - t0
    assert all(isinstance(o, TeacherUnavailable) and o.kind == "http_429" for o in out)
    assert 0.4 <= waited <= 5.0 and at_once < 0.5


@pytest.mark.parametrize(
    "opts, field",
    [({"max_requests_per_minute": 0}, "max_requests_per_minute"),
     ({"max_requests_per_minute": "fast"}, "max_requests_per_minute"),
     ({"rate_limit_wait_s": -1}, "rate_limit_wait_s")],
)  # fmt: skip
def test_bad_rate_options_name_the_field(opts, field):
    with pytest.raises(ConfigError, match=f"teacher.{field}"):
        _teacher("http://127.0.0.1:9/v1", **opts)
