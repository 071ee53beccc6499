"""The fault-injection server, exercised for real over 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from hashlib import blake2b
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from factory.testing.fault_server import (
    STATE_KEY,
    FaultConfig,
    FaultServer,
    body_key,
    make_app,
    serve,
    serve_in_thread,
    start_subprocess,
)
from factory.testing.fault_server import main as fault_server_main

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never route loopback via a proxy


def chat_body(content: str = "What is 2 + 2?", **extra: Any) -> bytes:
    return orjson.dumps({"model": "teacher-x", "messages": [{"role": "user", "content": content}], **extra})


def http(
    url: str, data: bytes | None = None, method: str | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """One request with urllib; non-2xx statuses are returned, not raised."""
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post_chat(srv: Any, body: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    return http(srv.base_url + "/chat/completions", body, timeout=timeout)


def content_of(raw: bytes) -> str:
    return orjson.loads(raw)["choices"][0]["message"]["content"]


# ------------------------------------------------------------------------------------- replies


def test_replies_are_deterministic_and_openai_shaped():
    with serve_in_thread(FaultConfig()) as srv:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", srv.base_url)
        body = chat_body(seed=1)
        s1, h1, r1 = post_chat(srv, body)
        s2, _, r2 = post_chat(srv, body)
        s3, _, r3 = post_chat(srv, chat_body(seed=2))
        assert (s1, s2, s3) == (200, 200, 200)
        assert h1["Content-Type"].startswith("application/json")
        assert content_of(r1) == content_of(r2)
        assert content_of(r1) != content_of(r3)

        out = orjson.loads(r1)
        assert out["object"] == "chat.completion"
        assert out["id"].startswith("chatcmpl-")
        assert isinstance(out["created"], int)
        assert out["model"] == "teacher-x"
        choice = out["choices"][0]
        assert choice["index"] == 0
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["role"] == "assistant"
        key = blake2b(body, digest_size=8).hexdigest()
        assert body_key(body) == key
        text = choice["message"]["content"]
        assert text.startswith("Step 1: we read the problem. Step 2: we compute")
        assert text.endswith(f"The answer is {int(key[:6], 16) % 100}.")
        usage = out["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_reply_callable_models_and_bad_bodies():
    def reply(messages: list, body: dict) -> str:
        return f"{body['model']}: {messages[-1]['content'].upper()}"

    with serve_in_thread(FaultConfig(reply=reply, model="fake-teacher")) as srv:
        status, _, raw = post_chat(srv, chat_body("hello there"))
        assert status == 200
        assert content_of(raw) == "teacher-x: HELLO THERE"

        status, _, raw = http(srv.base_url + "/models")
        assert status == 200
        models = orjson.loads(raw)
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["fake-teacher"]

        status, _, raw = post_chat(srv, chat_body("two please", n=2))
        choices = orjson.loads(raw)["choices"]
        assert [c["index"] for c in choices] == [0, 1]
        assert choices[0]["message"]["content"] != choices[1]["message"]["content"]

        assert http(srv.base_url + "/completions", b"{}")[0] == 404
        assert http(srv.base_url + "/chat/completions")[0] == 405  # GET

        status, _, raw = post_chat(srv, b"{not json")
        assert status == 400 and "error" in orjson.loads(raw)
        status, _, _ = post_chat(srv, b'{"model": "m"}')
        assert status == 400


# ------------------------------------------------------------------------------------- latency


def test_fixed_latency_is_respected_and_does_not_block():
    latency = 0.25
    with serve_in_thread(FaultConfig(latency=latency)) as srv:
        t0 = time.perf_counter()
        status, _, _ = post_chat(srv, chat_body())
        elapsed = time.perf_counter() - t0
        assert status == 200
        assert elapsed >= latency * 0.95

        async def burst(n: int) -> list[int]:
            async with aiohttp.ClientSession() as session:

                async def one(i: int) -> int:
                    async with session.post(srv.base_url + "/chat/completions", data=chat_body(seed=i)) as r:
                        await r.read()
                        return r.status

                return await asyncio.gather(*(one(i) for i in range(n)))

        t0 = time.perf_counter()
        statuses = asyncio.run(burst(100))
        elapsed = time.perf_counter() - t0
        assert statuses == [200] * 100
        assert latency * 0.95 <= elapsed < latency * 20  # concurrent sleeps, not 100 serial ones
        assert srv.stats()["max_in_flight"] >= 50


def test_lognormal_latency_is_seeded_heavy_tailed_and_capped():
    cfg = FaultConfig(latency_median=0.05, latency_sigma=1.0, seed=7)
    assert [FaultServer(cfg)._delay() for _ in range(2)] == [FaultServer(cfg)._delay()] * 2  # seeded
    server = FaultServer(cfg)
    many = sorted(server._delay() for _ in range(4001))
    assert 0.04 < many[2000] < 0.06  # median
    assert many[-1] > 10 * many[2000]  # heavy tail
    capped = FaultServer(FaultConfig(latency=0.01, latency_median=0.05, latency_sigma=2.0, latency_max=0.2))
    assert all(0.01 <= capped._delay() <= 0.2 for _ in range(2000))

    with serve_in_thread(FaultConfig(latency_median=0.05, latency_sigma=0.3)) as srv:
        t0 = time.perf_counter()
        for i in range(3):
            assert post_chat(srv, chat_body(seed=i))[0] == 200
        assert time.perf_counter() - t0 > 3 * 0.05 * 0.3


# ---------------------------------------------------------------------------------- rate limit


def test_rpm_limit_answers_429_with_retry_after():
    with serve_in_thread(FaultConfig(rpm=3)) as srv:
        statuses = [post_chat(srv, chat_body(seed=i))[0] for i in range(3)]
        assert statuses == [200, 200, 200]
        status, headers, raw = post_chat(srv, chat_body(seed=99))
        assert status == 429
        retry_after = int(headers["Retry-After"])
        assert 1 <= retry_after <= 20  # one token refills every 20 s at 3 rpm
        assert float(headers["retry-after-ms"]) > 0
        assert orjson.loads(raw)["error"]["type"] == "rate_limit_error"
        stats = srv.stats()
        assert stats["rate_limited"] == 1
        assert stats["responses"] == {"200": 3, "429": 1}


# ------------------------------------------------------------------------------------- faults


def test_500_fault_fails_first_repeats_then_succeeds():
    with serve_in_thread(FaultConfig(fault_rate=1.0, fault_kinds=("500",), fault_repeats=2)) as srv:
        body = chat_body()
        s1, _, r1 = post_chat(srv, body)
        s2, _, _ = post_chat(srv, body)
        s3, _, r3 = post_chat(srv, body)
        assert (s1, s2, s3) == (500, 500, 200)
        assert "error" in orjson.loads(r1)
        assert content_of(r3)
        stats = srv.stats()
        assert stats["faults"] == {"500": 2}
        assert stats["responses"] == {"200": 1, "500": 2}


def test_429_fault_carries_retry_after():
    with serve_in_thread(FaultConfig(fault_rate=1.0, fault_kinds="429")) as srv:
        status, headers, _ = post_chat(srv, chat_body())
        assert status == 429
        assert headers["Retry-After"] == "1"
        assert headers["retry-after-ms"] == "1000"
        assert post_chat(srv, chat_body())[0] == 200
    with serve_in_thread(FaultConfig(fault_rate=1.0, fault_kinds=["429"], retry_after=0.25)) as srv:
        status, headers, _ = post_chat(srv, chat_body())
        assert status == 429
        assert headers["Retry-After"] == "1"
        assert headers["retry-after-ms"] == "250"


def test_truncated_fault_gives_invalid_json_then_success():
    with serve_in_thread(FaultConfig(fault_rate=1.0, fault_kinds=["truncated"])) as srv:
        status, _, raw = post_chat(srv, chat_body())
        assert status == 200
        assert raw.startswith(b'{"id":"chatcmpl-')
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        status, _, raw = post_chat(srv, chat_body())
        assert status == 200 and content_of(raw)
        assert srv.stats()["faults"] == {"truncated": 1}


def test_reset_fault_drops_the_connection():
    async def go(url: str) -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.post(url, data=chat_body()) as r:
                    await r.read()
            async with session.post(url, data=chat_body()) as r:  # the retry succeeds
                await r.read()
                return r.status

    with serve_in_thread(FaultConfig(latency=0.01, fault_rate=1.0, fault_kinds=["reset"])) as srv:
        assert asyncio.run(go(srv.base_url + "/chat/completions")) == 200
        stats = srv.stats()
        assert stats["dropped"] == {"reset": 1}
        assert stats["responses"] == {"200": 1}


def test_timeout_fault_hangs_until_the_client_gives_up():
    async def go(url: str) -> float:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            t0 = time.perf_counter()
            with pytest.raises(asyncio.TimeoutError):
                async with session.post(url, data=chat_body()) as r:
                    await r.read()
            return time.perf_counter() - t0

    with serve_in_thread(FaultConfig(fault_rate=1.0, fault_kinds=["timeout"])) as srv:
        elapsed = asyncio.run(go(srv.base_url + "/chat/completions"))
        assert 0.25 <= elapsed < 5
        assert srv.stats()["dropped"] == {"timeout": 1}
        deadline = time.monotonic() + 5
        while srv.stats()["in_flight"] and time.monotonic() < deadline:  # the hung handler is released
            time.sleep(0.02)
        assert srv.stats()["in_flight"] == 0
        assert post_chat(srv, chat_body())[0] == 200  # second attempt succeeds
    # stop() does not wait for the hour-long hang of a client that is still connected


async def _statuses(url: str, bodies: list[bytes], repeats: int) -> list[list[int]]:
    """Each body ``repeats`` times in a row; different bodies concurrently, over keep-alive."""
    async with aiohttp.ClientSession() as session:

        async def attempts(body: bytes) -> list[int]:
            out = []
            for _ in range(repeats):
                async with session.post(url, data=body) as r:
                    await r.read()
                    out.append(r.status)
            return out

        return await asyncio.gather(*(attempts(b) for b in bodies))


def test_fault_and_reject_rates_pick_bodies_deterministically():
    cfg = FaultConfig(fault_rate=0.3, fault_kinds=["500", "429"], reject_rate=0.2, seed=3)
    bodies = [chat_body(seed=i) for i in range(300)]

    def run(config: FaultConfig, repeats: int) -> list[list[int]]:
        with serve_in_thread(config) as srv:
            return asyncio.run(_statuses(srv.base_url + "/chat/completions", bodies, repeats))

    runs = run(cfg, 3)
    first = [r[0] for r in runs]
    assert first == [r[0] for r in run(cfg, 1)]  # same seed, same bodies picked, same kinds
    rejected = first.count(400)
    faulted = first.count(500) + first.count(429)
    assert 35 <= rejected <= 90  # about 20 % of 300
    assert 40 <= faulted <= 110  # about 30 % of the remaining 240
    assert first.count(500) and first.count(429)
    for status, (_, second, third) in zip(first, runs, strict=True):
        if status == 400:
            assert second == third == 400  # rejected every time
        else:
            assert second == third == 200  # faults last one attempt by default

    assert [r[0] for r in run(dataclasses.replace(cfg, seed=4), 1)] != first  # the seed salts the choice


def test_reject_rate_one_rejects_forever():
    with serve_in_thread(FaultConfig(reject_rate=1.0)) as srv:
        for _ in range(3):
            status, _, raw = post_chat(srv, chat_body())
            assert status == 400
            assert orjson.loads(raw)["error"]["type"] == "invalid_request_error"
        stats = srv.stats()
        assert stats["rejected"] == 3
        assert stats["responses"] == {"400": 3}


def test_config_validation():
    assert FaultConfig(fault_kinds="500, reset").fault_kinds == ("500", "reset")
    assert FaultConfig(fault_kinds=[429]).fault_kinds == ("429",)
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultConfig(fault_kinds=["503"])
    with pytest.raises(ValueError, match="fault_rate"):
        FaultConfig(fault_rate=1.5)
    assert fault_server_main(["--fault-kinds", "bogus"]) == 2


# --------------------------------------------------------------------------------- admin


def test_outage_endpoint_fails_everything_for_a_while():
    with serve_in_thread(FaultConfig()) as srv:
        root = srv.base_url.removesuffix("/v1")
        status, _, raw = http(root + "/admin/outage?seconds=0.4&kind=500", b"")
        assert status == 200 and orjson.loads(raw)["kind"] == "500"
        assert [post_chat(srv, chat_body(seed=i))[0] for i in range(3)] == [500, 500, 500]
        time.sleep(0.45)
        assert post_chat(srv, chat_body())[0] == 200

        srv.outage(0.3, "truncated")
        status, _, raw = post_chat(srv, chat_body())
        assert status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        srv.outage(0, "500")  # ends it
        assert post_chat(srv, chat_body())[0] == 200

        assert http(root + "/admin/outage?seconds=1&kind=teapot", b"")[0] == 400
        assert srv.stats()["faults"] == {"500": 3, "truncated": 1}


def test_stats_counts_and_reset():
    with serve_in_thread(FaultConfig(reject_rate=0.0)) as srv:
        a, b = chat_body(seed=1), chat_body(seed=2)
        for body in (a, a, a, b):
            assert post_chat(srv, body)[0] == 200
        post_chat(srv, b"garbage")

        status, _, raw = http(srv.base_url.removesuffix("/v1") + "/admin/stats")
        assert status == 200
        stats = orjson.loads(raw)
        assert stats["requests"] == 5
        assert stats["responses"] == {"200": 4, "400": 1}
        assert stats["distinct_bodies"] == 3
        assert "per_body" not in stats

        detail = srv.stats(detail=True)
        assert detail["per_body"] == {body_key(a): 3, body_key(b): 1, body_key(b"garbage"): 1}
        assert all(re.fullmatch(r"[0-9a-f]{16}", k) for k in detail["per_body"])
        over_http = orjson.loads(http(srv.base_url.removesuffix("/v1") + "/admin/stats?detail=1")[2])
        assert over_http["per_body"] == detail["per_body"]

        assert http(srv.base_url.removesuffix("/v1") + "/admin/reset", b"")[0] == 200
        stats = srv.stats()
        assert stats["requests"] == 0 and stats["responses"] == {} and stats["distinct_bodies"] == 0
        post_chat(srv, a)
        srv.reset()
        assert srv.stats()["requests"] == 0


def test_async_serve_and_embeddable_app():
    async def go() -> None:
        async with serve(latency=0.01) as srv, aiohttp.ClientSession() as session:
            async with session.post(srv.base_url + "/chat/completions", data=chat_body()) as r:
                assert r.status == 200
                assert (await r.json())["choices"][0]["message"]["content"]
            assert srv.stats()["responses"] == {"200": 1}

        app = make_app(FaultConfig(fault_rate=1.0, fault_kinds=["500"]))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
            async with aiohttp.ClientSession() as session:
                for expected in (500, 200):
                    async with session.post(url, data=chat_body()) as r:
                        assert r.status == expected
            assert app[STATE_KEY].snapshot()["responses"] == {"200": 1, "500": 1}
        finally:
            await runner.cleanup()

    asyncio.run(go())


# ----------------------------------------------------------------------------- subprocess


def test_module_entry_point_prints_one_line_and_stops_on_sigint():
    cmd = [sys.executable, "-m", "factory.testing.fault_server", "--port", "0", "--latency", "0.05"]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            m = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+)/v1)\n", line)
            assert m, line
            status, _, raw = http(m.group(1) + "/chat/completions", chat_body())
            assert status == 200 and content_of(raw)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
            assert proc.stdout.read() == ""  # exactly one line
        finally:
            if proc.poll() is None:
                proc.kill()


def test_start_subprocess_handle():
    with start_subprocess(latency=0.05, fault_rate=1.0, fault_kinds="500", rpm=1000) as srv:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", srv.base_url)
        body = chat_body()
        assert post_chat(srv, body)[0] == 500
        assert post_chat(srv, body)[0] == 200
        stats = srv.stats(detail=True)
        assert stats["responses"] == {"200": 1, "500": 1}
        assert stats["per_body"] == {body_key(body): 2}
        srv.outage(5, "500")
        assert post_chat(srv, chat_body(seed=1))[0] == 500
        srv.outage(0)
        srv.reset()
        assert srv.stats()["requests"] == 0
        proc = srv.proc
    assert proc.returncode == 0  # SIGTERM is a clean stop

    with pytest.raises(ValueError, match="reply callable"):
        start_subprocess(reply=lambda m, b: "x")
