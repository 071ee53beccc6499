"""Tokens-per-minute pacing and providers' x-ratelimit-* headers: the pacer alone, then the openai teacher
against the fault server with a tokens-per-minute limit on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from factory.config import TeacherConfig
from factory.errors import ConfigError
from factory.teachers.openai import OpenAITeacher
from factory.teachers.pacing import Pacer, parse_duration
from factory.testing.fault_server import FaultConfig, _duration, serve_in_thread
from factory.types import Completion, Request, Sampling


@pytest.mark.parametrize(
    "text, seconds",
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5s", 0.5), ("2m", 120.0),
     ("1s20ms", 1.02)],
)  # fmt: skip
def test_durations_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "-1s", "1.s", "1 s", "1d", "1s1m", "soon", "1e3s", "ms"])
def test_bad_durations_are_none(text):
    assert parse_duration(text) is None


@pytest.mark.parametrize("seconds", [0.02, 0.5, 1.0, 61.25, 360.0])
def test_the_fault_servers_resets_read_back(seconds):
    assert parse_duration(_duration(seconds)) == pytest.approx(seconds, abs=0.001)


def test_tokens_space_starts_and_usage_corrects_the_reservation():
    p = Pacer(tokens_per_minute=600)  # 10 tokens a second
    now = time.monotonic()
    assert p.take(now, 50) == now
    assert p.take(now, 50) == pytest.approx(now + 5.0)
    assert p.waiting_for == "tokens"
    p.used(50, 10)  # 40 not spent: 4 s given back
    assert p.take(now, 0) == pytest.approx(now + 6.0, abs=0.05)


def test_a_request_above_the_minute_holds_one_minute_not_for_ever():
    p = Pacer(tokens_per_minute=600)
    now = time.monotonic()
    assert p.take(now, 10_000) == now
    assert p.take(now, 1) == pytest.approx(now + 60.0)  # the big one reserved the whole minute


def test_headers_hold_starts_and_teach_limits(caplog):
    p = Pacer()
    assert not p.active
    with caplog.at_level(logging.DEBUG, logger="factory.teachers.pacing"):
        p.observe({"x-ratelimit-limit-tokens": "many", "x-ratelimit-remaining-requests": "0",
                   "x-ratelimit-reset-requests": "soon"})  # fmt: skip
    assert not p.active  # nothing was read from them
    assert "x-ratelimit-limit-tokens" in caplog.text and "x-ratelimit-reset-requests" in caplog.text
    p.observe({"x-ratelimit-limit-tokens": "6000", "x-ratelimit-limit-requests": "120",
               "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.5s"})  # fmt: skip
    assert p.tokens_per_minute == 6000 and p.rate == p.ceiling == 2.0
    now = time.monotonic()
    assert p.take(now) >= now + 1.4 and p.waiting_for == "pause"
    told = Pacer(60, tokens_per_minute=100)
    told.observe({"x-ratelimit-limit-tokens": "6000", "x-ratelimit-limit-requests": "120"})
    assert told.tokens_per_minute == 100 and told.ceiling == 1.0  # a told limit wins


# --------------------------------------------------------------------------- against the fault server

N = 20
# 400 tokens a second with a bucket of 200: a request reserves about 80 (a ~160-byte body / 4 plus
# max_tokens 40) and spends about 30, so the limit, not the latency, sets the pace.
LIMIT = FaultConfig(latency=0.02, tpm=24_000, tpm_burst=200)


def _run(cfg: FaultConfig, **opts) -> tuple[dict, OpenAITeacher, float]:
    reqs = [Request.chat(f"question {i}", sampling=Sampling(seed=i, max_tokens=40)) for i in range(N)]
    with serve_in_thread(cfg) as srv:
        t = OpenAITeacher(f"openai:m@{srv.base_url}", f"m@{srv.base_url}",
                          {"backoff_base_s": 0.01, "max_in_flight": 16, "learn_rate_limit": False, **opts})  # fmt: skip

        async def go() -> list:
            try:
                return await t.complete(reqs)
            finally:
                await t.aclose()

        t0 = time.perf_counter()
        out = asyncio.run(go())
        wall = time.perf_counter() - t0
        stats = srv.stats()
    assert all(isinstance(c, Completion) for c in out), [o for o in out if not isinstance(o, Completion)][:3]
    return stats, t, wall


def test_a_told_token_limit_meets_no_429():
    # Sent as fast as the semaphore allows, most first attempts overdraw the bucket; paced by the told
    # limit, none does (one or two when the box stalls the server thread).
    untold, _, _ = _run(LIMIT)
    told, t, wall = _run(LIMIT, max_tokens_per_minute=24_000)
    assert untold["rate_limited"] >= 8
    assert told["rate_limited"] <= 2 and t.attempts == told["requests"] == N + told["rate_limited"]
    assert wall <= 10.0


def test_an_untold_limit_is_learnt_from_headers():
    # Only the first burst of 4, sent before any answer came back, can overdraw the bucket (2 of them do).
    cfg = FaultConfig(latency=0.02, tpm=24_000, tpm_burst=200, rpm=6000, ratelimit_headers=True)
    stats, t, _ = _run(cfg, max_in_flight=4)
    assert t.pacer.tokens_per_minute == 24_000 and t.pacer.ceiling == 100.0
    assert stats["rate_limited"] <= 4
    assert t.attempts == stats["requests"] == N + stats["rate_limited"]


def test_the_token_limit_is_a_validated_config_field():
    cfg = TeacherConfig(spec="openai:m", base_url="http://127.0.0.1:9/v1", max_tokens_per_minute=90_000)
    assert cfg.backend_options()["max_tokens_per_minute"] == 90_000
    with pytest.raises(ValueError, match="max_tokens_per_minute"):
        TeacherConfig(spec="openai:m", max_tokens_per_minute=0)
    with pytest.raises(ConfigError, match=r"teacher\.max_tokens_per_minute"):
        OpenAITeacher("openai:m@http://127.0.0.1:9/v1", "m", {"max_tokens_per_minute": "fast"})
