"""Paid answers kept and reasons in view: a SIGKILL with many requests in flight, Ctrl+C once (drain) and
twice (abandon), failure reasons on the progress line and in `factory status`, the endpoint named before
the first request. The real CLI in subprocesses against servers on 127.0.0.1."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from test_chaos import NAME, factory, finish, query, run_to_end, wait_until, write_config, write_seeds

from factory.store.journal import Journal
from factory.testing.fault_server import start_subprocess

WINDOW_S = 0.05  # the journal's promise: a kill re-sends at most the answers of its last 50 ms


def status(store: Path) -> dict:
    code, out, err = finish(factory("status", NAME, "--store", store, "--json"), 60)
    assert code == 0, err
    return json.loads(out)


# -- SIGKILL with many requests in flight ---------------------------------------------------------------
def test_sigkill_resends_only_answers_of_the_last_50ms_and_status_counts_stay_true(tmp_path: Path):
    n, in_flight = 4000, 128
    seeds = write_seeds(tmp_path / "seeds.jsonl", n)
    store = tmp_path / "s.duckdb"
    rng = random.Random(7)
    with start_subprocess(latency=0.1) as srv:
        # commits once a second (the default): counters only committed would lag by up to a second
        cfg = write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds, in_flight=in_flight,
                           commit_interval_s=1.0)  # fmt: skip
        p = factory("run", cfg, "--json")
        goal = rng.randint(1200, 2000)
        assert wait_until(lambda: srv.stats()["responses"].get("200", 0) >= goal, p, 120), "no progress"
        t_kill = time.monotonic()
        p.send_signal(signal.SIGKILL)
        code, _, err = finish(p, 60)
        assert code == -signal.SIGKILL, err
        at_kill = srv.stats(detail=True)
        answered = at_kill["answered_at"]
        unanswered = set(at_kill["per_body"]) - set(answered)  # in flight at the server when it was killed
        assert unanswered and at_kill["requests"] < n  # killed mid-run, not after it
        recent = {b for b, t in answered.items() if t >= t_kill - WINDOW_S}
        received = at_kill["requests"]
        received_recently = sum(1 for t in at_kill["received_at"] if t >= t_kill - WINDOW_S)

        # Before resuming: `factory status` (read-only) already counts what the journal holds: every request
        # sent, less at most those sent in the last 50 ms (and a request counted as it was being written
        # may not have been read by the server yet).
        killed = status(store)
        print(f"\nreceived {received} (in the last 50 ms {received_recently}); status after the kill "
              f"{killed['requests_sent']}")  # fmt: skip
        assert received - received_recently <= killed["requests_sent"] <= received + in_flight, (
            killed,
            received,
        )

        code, _out, err = run_to_end(cfg)
        assert code == 0, err
        final = srv.stats(detail=True)

    # Sent again: bodies the killed run had sent. Each must have been unanswered at the kill, or answered
    # in its last 50 ms (an answer still in the socket buffer, or parsed but not yet written out).
    again = {b for b, k in at_kill["per_body"].items() if final["per_body"][b] > k}
    early = {b for b in again if b in answered and b not in recent}
    print(f"\nanswered before the kill {len(answered)}, of them in its last 50 ms {len(recent)}; "
          f"sent again {len(again)} (answered earlier: {len(early)}); in flight at the server {len(unanswered)}")  # fmt: skip
    assert len(answered) >= 1000
    assert not early, sorted(answered[b] - t_kill for b in early)[:10]
    assert unanswered <= again <= unanswered | recent

    # The counters after the crash and the resume: what the server received, less at most what reached it in
    # the killed run's last 50 ms.
    s = status(store)
    assert final["requests"] - received_recently <= s["requests_sent"] <= final["requests"] + in_flight, (
        s, final["requests"]
    )  # fmt: skip
    assert s["attempts"] >= s["requests_sent"]
    # tokens: every answer kept is counted, but for those of the kill's last 50 ms (the counters line follows
    # the rows by up to 10 ms), and nothing the server did not send
    kept_tokens, most = query(store, "SELECT sum(completion_tokens), max(completion_tokens) FROM cache")[0]
    assert kept_tokens - most * len(recent) <= s["completion_tokens"] <= final["tokens_out"]
    assert s["seeds_done"] == n and s["records_total"] == n


# -- Ctrl+C ----------------------------------------------------------------------------------------------
def test_ctrl_c_once_waits_for_the_requests_in_flight_and_resume_sends_none_again(tmp_path: Path):
    n = 200
    seeds = write_seeds(tmp_path / "seeds.jsonl", n)
    store = tmp_path / "s.duckdb"
    with start_subprocess(latency=0.5) as srv:
        cfg = write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds, in_flight=32)
        p = factory("run", cfg, "--json")
        assert wait_until(lambda: srv.stats()["in_flight"] >= 24, p, 60), "nothing in flight"
        p.send_signal(signal.SIGINT)
        code, out, err = finish(p, 120)
        at_stop = srv.stats(detail=True)
        assert code == 130, err
        assert "draining: waiting for" in err and "Ctrl+C again abandons them" in err
        assert "nothing answered was lost" in err and "Traceback" not in err
        assert json.loads(out)["status"] == "interrupted"
        # every request the stopped run sent was answered before it exited
        assert at_stop["in_flight"] == 0 and set(at_stop["per_body"]) == set(at_stop["answered_at"])
        sent_before = at_stop["per_body"]
        assert 24 <= len(sent_before) < n

        code, out, err = run_to_end(cfg)
        assert code == 0, err
        final = srv.stats(detail=True)["per_body"]
    again = [b for b, k in sent_before.items() if final[b] > k]
    assert again == []  # nothing the interrupted run sent is paid twice
    assert len(final) == n and json.loads(out)["seeds_done"] == n


def _abandon(tmp_path: Path, *, drain_s: float, second_signal: bool) -> tuple[int, str, str, dict]:
    seeds = write_seeds(tmp_path / "seeds.jsonl", 40)
    store = tmp_path / "s.duckdb"
    with start_subprocess(latency=120) as srv:  # answers that would come long after the test gave up
        cfg = write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds, in_flight=8)
        cfg.write_text(cfg.read_text().replace("runner: {", f"runner: {{drain_s: {drain_s}, "))
        p = factory("run", cfg, "--json")
        assert wait_until(lambda: srv.stats()["in_flight"] >= 8, p, 60), "nothing in flight"
        p.send_signal(signal.SIGINT)
        if second_signal:
            wait_until(lambda: False, p, 0.5)
            p.send_signal(signal.SIGINT)
        code, out, err = finish(p, 60)  # drain_s or the second Ctrl+C, not the 120 s answers, ends it
    return code, out, err, status(store)


def test_ctrl_c_twice_abandons_the_requests_in_flight_and_says_they_are_paid_again(tmp_path: Path):
    code, out, err, st = _abandon(tmp_path, drain_s=600, second_signal=True)
    assert code == 130, err
    assert "8 requests in flight were abandoned" in err and "paid for) again" in err, err
    assert json.loads(out)["status"] == "interrupted" and st["status"] == "interrupted"
    assert json.loads(out)["abandoned"] == 8
    assert st["requests_sent"] == 8 and st["records_total"] == 0


def test_drain_s_passed_abandons_the_requests_still_in_flight(tmp_path: Path):
    code, _, err, _st = _abandon(tmp_path, drain_s=0.5, second_signal=False)
    assert code == 130, err
    assert "drain_s=0.5s passed" in err and "8 requests in flight were abandoned" in err, err


# -- reasons in view -------------------------------------------------------------------------------------
class _Refusing:
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers every request with one status and message."""

    def __init__(self, status: int, message: str):
        self.status, self.message, self.requests = status, message, 0
        self.loop = None
        started = threading.Event()

        async def chat(request: web.Request) -> web.Response:
            self.requests += 1
            body = {"error": {"message": self.message, "type": "invalid_request_error", "code": None}}
            return web.Response(status=self.status, body=orjson.dumps(body), content_type="application/json")

        async def main() -> None:
            import asyncio

            self.loop = asyncio.get_running_loop()
            app = web.Application()
            app.router.add_post("/v1/chat/completions", chat)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self.stop = asyncio.Event()
            started.set()
            await self.stop.wait()
            await runner.cleanup()

        import asyncio

        self.thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
        self.thread.start()
        assert started.wait(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@pytest.mark.parametrize(
    ("code", "message", "retries"),
    [(401, "Incorrect API key provided.", 0), (500, "The server had an error while processing", 1)],
)
def test_failure_reason_on_the_progress_line_and_in_status(
    tmp_path: Path, code: int, message: str, retries: int
):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 6)
    store = tmp_path / "s.duckdb"
    srv = _Refusing(code, message)
    try:
        cfg = write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds, in_flight=2,
                           teacher=f"max_retries: {retries}, options: {{backoff_base_s: 0.01}}")  # fmt: skip
        rc, _, err = run_to_end(cfg, 120)
    finally:
        srv.close()
    assert rc != 0 and "Traceback" not in err
    where = f"127.0.0.1:{srv.port}"
    assert f"last failure: http_{code} from {where}: {message}" in err, err
    st = status(store)
    (top, *_) = st["failure_reasons"]
    assert (top["kind"], top["attempts"], top["example"]) == (f"http_{code}", srv.requests, message), top
    assert st["requests_sent"] == srv.requests > 0
    rc, out, err = finish(factory("status", NAME, "--store", store), 60)
    assert rc == 0, err
    assert f"  http_{code}: {srv.requests} attempts, {top['seeds']} seeds; e.g. {message}" in out, out


def test_refused_connections_are_not_counted_as_requests_sent(tmp_path: Path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seeds = write_seeds(tmp_path / "seeds.jsonl", 3)
    store = tmp_path / "s.duckdb"
    cfg = write_config(tmp_path / "s.yaml", url=f"http://127.0.0.1:{port}/v1", store=store, seeds=seeds,
                       teacher="max_retries: 1, options: {backoff_base_s: 0.01}")  # fmt: skip
    rc, _, err = run_to_end(cfg, 120)
    assert rc != 0 and "Traceback" not in err, err
    assert f"last failure: connection from 127.0.0.1:{port}: cannot connect to 127.0.0.1:{port}" in err, err
    st = status(store)
    assert st["requests_sent"] == 0 and st["attempts"] == 6
    assert st["failure_reasons"][0]["kind"] == "connection" and st["failure_reasons"][0]["attempts"] == 6


def test_the_endpoint_is_named_before_the_first_request(tmp_path: Path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 2)
    cfg = tmp_path / "c.yaml"
    # No @URL: the OpenAI API. A dry run calls no teacher: nothing leaves this machine.
    cfg.write_text(f"name: {NAME}\nrecipe: prompt\nseeds: '{seeds}'\nstore: '{tmp_path / 's.duckdb'}'\n"
                   "teacher: 'openai:smol'\n")  # fmt: skip
    code, out, err = finish(factory("run", cfg, "--dry-run"), 60)
    assert code == 0, err
    assert out.splitlines()[0] == "teacher openai:smol → https://api.openai.com/v1 (no @URL in the spec)"
    code, out, err = finish(factory("run", cfg, "--dry-run", "--json"), 60)
    assert json.loads(out)["endpoints"] == [
        "teacher openai:smol → https://api.openai.com/v1 (no @URL in the spec)"
    ]
    # With a URL, a real run names it on stderr before it sends anything.
    with start_subprocess(latency=0.0) as srv:
        cfg2 = write_config(tmp_path / "s.yaml", url=srv.base_url, store=tmp_path / "s2.duckdb", seeds=seeds)
        code, out, err = run_to_end(cfg2)
        assert srv.stats()["requests"] == 2
    assert code == 0, err
    assert err.splitlines()[0] == f"teacher openai:m@{srv.base_url} → {srv.base_url}"


# -- the journal's writer --------------------------------------------------------------------------------
def test_each_appended_row_is_on_disk_at_once_with_the_counters_every_10_ms(tmp_path: Path):
    counters = {"run_id": "r", "invocation": 1, "requests_sent": 0}

    def on_disk() -> list[bytes]:
        return b"".join(p.read_bytes() for p in sorted((tmp_path / "j").glob("seg-*.jsonl"))).splitlines()

    j = Journal(tmp_path / "j")
    j.start(lambda: dict(counters))
    for i in range(3):
        counters["requests_sent"] = i + 1
        j.append((f"k{i}", "t", "ok", "{}", "x", "stop", 1, 1, 1.0, None, "r"))
        rows = [orjson.loads(line) for line in on_disk()]
        assert [r[0] for r in rows if isinstance(r, list)] == [f"k{n}" for n in range(i + 1)]  # no flush()
    assert orjson.loads(on_disk()[1])["stats"]["requests_sent"] == 1  # with the first row
    j.rotate()  # at each commit
    assert orjson.loads(on_disk()[-1])["stats"]["requests_sent"] == 3  # whatever the time
    j.close()


def test_rows_close_together_go_out_in_one_write_before_the_tasks_they_wake(tmp_path: Path):
    """Within ``coalesce_s`` of a write, rows wait for the start of the next loop pass: one write for the
    answers of one pass, on disk before any task that awaits one of them resumes."""
    import asyncio

    def rows_on_disk() -> list[str]:
        lines = b"".join(p.read_bytes() for p in sorted((tmp_path / "j").glob("seg-*.jsonl"))).splitlines()
        return [r[0] for r in map(orjson.loads, lines) if isinstance(r, list)]

    j = Journal(tmp_path / "j", coalesce_s=60.0)
    seen_by_task: list[list[str]] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[None] = loop.create_future()

        async def waiter() -> None:
            await answer
            seen_by_task.append(rows_on_disk())

        task = loop.create_task(waiter())
        await asyncio.sleep(0)  # the waiter awaits its answer
        j.append(("k0", "t", "ok", "{}", "x", "stop", 1, 1, 1.0, None, "r"))
        assert rows_on_disk() == ["k0"]  # the first row of a quiet journal: at once
        for i in (1, 2):
            j.append((f"k{i}", "t", "ok", "{}", "x", "stop", 1, 1, 1.0, None, "r"))
        answer.set_result(None)  # as the HTTP client does after handing the answer over
        assert rows_on_disk() == ["k0"]  # queued, not yet written
        await task
        assert rows_on_disk() == ["k0", "k1", "k2"]

    asyncio.run(go())
    assert seen_by_task == [["k0", "k1", "k2"]]
    j.close()


def test_an_answer_is_in_the_journal_while_the_loop_is_busy_before_its_task_resumes(
    tmp_path: Path, monkeypatch
):
    """The first response's last byte puts a one-second CPU-bound callback on the loop, ahead of the task
    that awaits the answer: the answer reaches the journal file during that second (the teacher hands it
    to the runner as it is parsed, and the journal's thread writes it), not after."""
    import asyncio

    from factory import api
    from factory.store.journal import journal_dir
    from factory.teachers import http
    from factory.teachers.openai import OpenAITeacher
    from factory.testing.fault_server import serve_in_thread

    seen: list[bool] = []
    stalled: list[bool] = []
    store = tmp_path / "s.duckdb"

    def stall() -> None:
        end = time.monotonic() + 1.0
        while time.monotonic() < end and not seen:
            for seg in journal_dir(store).glob("seg-*.jsonl"):
                if seg.read_bytes().startswith(b'["'):  # an answer row (counters lines are objects)
                    seen.append(True)

    complete = http._Connection.on_message_complete

    def on_message_complete(self: http._Connection) -> None:
        if not stalled:
            stalled.append(True)
            asyncio.get_running_loop().call_soon(stall)
        complete(self)

    monkeypatch.setattr(http._Connection, "on_message_complete", on_message_complete)
    seeds = write_seeds(tmp_path / "seeds.jsonl", 4)
    with serve_in_thread(latency=0.0) as srv:
        cfg = write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds, in_flight=1)
        teacher = OpenAITeacher(f"openai:m@{srv.base_url}", f"m@{srv.base_url}", {})

        async def go() -> api.Result:
            try:
                return await api.run_async(api.prepare(cfg), teacher=teacher)
            finally:
                await teacher.aclose()

        res = asyncio.run(go())
    assert res.status == "done" and stalled
    assert seen == [True]
