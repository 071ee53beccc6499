"""Crash safety (SIGKILL part-way, then resume) and secrets, through the real CLI and a real HTTP server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from factory.testing.fault_server import FaultConfig, serve_in_thread

IN_FLIGHT = 16


def _seeds(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i:04d}", "question": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(n)))  # fmt: skip
    return path


def _config(tmp: Path, name: str, url: str, store: Path, seeds: Path, extra: str = "") -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(
        f"name: crash\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds}\nstore: {store}\nparams: {{k: 2}}\n"
        f"teacher: {{spec: 'openai:m@{url}', max_in_flight: {IN_FLIGHT}}}\nrunner: {{commit_interval_s: 0.5}}\n{extra}"
    )
    return p


def _run_cli(cfg: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "factory.cli", "run", str(cfg), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kw)  # fmt: skip


def _records(store: Path) -> list[tuple]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute("SELECT id, seed_id, sample_index, payload FROM records ORDER BY id").fetchall()
    finally:
        con.close()


def test_sigkill_then_resume_gives_identical_records_and_pays_once(tmp_path):
    seeds = _seeds(tmp_path / "seeds.jsonl", 150)  # 300 requests, ~16 in flight at 0.1 s: ~2 s of work
    with serve_in_thread(FaultConfig(latency=0.1)) as srv:
        ref_store = tmp_path / "ref.duckdb"
        ref = _run_cli(_config(tmp_path, "ref", srv.base_url, ref_store, seeds))
        assert ref.wait(timeout=120) == 0, ref.stderr.read()
        reference = _records(ref_store)
        assert len(reference) == 300
        srv.reset()

        store = tmp_path / "s.duckdb"
        cfg = _config(tmp_path, "cut", srv.base_url, store, seeds)
        kills = 0
        for after in (40, 120, 0):  # kill at different moments: part-way, later, during start-up
            p = _run_cli(cfg)
            start = srv.stats()["requests"]
            deadline = time.time() + 60
            while srv.stats()["requests"] - start < after and time.time() < deadline and p.poll() is None:
                time.sleep(0.01)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait(timeout=60)
        final = _run_cli(cfg)
        assert final.wait(timeout=120) == 0, final.stderr.read()
        stats = srv.stats(detail=True)
    assert kills >= 2
    assert _records(store) == reference
    repeats = sum(n - 1 for n in stats["per_body"].values() if n > 1)
    # Only requests in flight at a kill may be sent again: never one whose answer had arrived.
    assert repeats <= kills * IN_FLIGHT, repeats
    assert stats["distinct_bodies"] == 300


def test_ctrl_c_keeps_finished_work_and_resume_completes(tmp_path):
    seeds = _seeds(tmp_path / "seeds.jsonl", 120)
    with serve_in_thread(FaultConfig(latency=0.1)) as srv:
        store = tmp_path / "s.duckdb"
        cfg = _config(tmp_path, "int", srv.base_url, store, seeds)
        p = _run_cli(cfg)
        deadline = time.time() + 60
        while srv.stats()["requests"] < 60 and time.time() < deadline:  # some answers are in
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 130, p.stderr.read()
        summary = json.loads(p.stdout.read())
        assert summary["status"] == "interrupted" and 0 < summary["seeds_done"] < 120
        sent_first = srv.stats()["requests"]
        final = _run_cli(cfg)
        assert final.wait(timeout=120) == 0
        again = json.loads(final.stdout.read())
        total_sent = srv.stats()["requests"]
    assert len(_records(store)) == 240
    assert again["seeds_done"] == 120
    assert total_sent - sent_first <= 240 - 2 * summary["seeds_done"] + IN_FLIGHT


SECRET = "sk-test-Zq81vN0secretvalue"


def test_api_key_is_used_but_never_stored(tmp_path):
    # The server cannot see headers; test_key_is_sent_as_bearer_header checks that the key is sent.
    with serve_in_thread(FaultConfig()) as srv:
        store = tmp_path / "s.duckdb"
        seeds = _seeds(tmp_path / "seeds.jsonl", 5)
        cfg = _config(tmp_path, "sec", srv.base_url, store, seeds).read_text()
        cfg = cfg.replace("max_in_flight", "api_key_env: FACTORY_TEST_SECRET, max_in_flight")
        (tmp_path / "sec.yaml").write_text(cfg)
        p = subprocess.run([sys.executable, "-m", "factory.cli", "-vv", "run", str(tmp_path / "sec.yaml")],
                           capture_output=True, text=True, env={**os.environ, "FACTORY_TEST_SECRET": SECRET}, timeout=120)  # fmt: skip
        assert p.returncode == 0, p.stderr
        for fmt in ("hf", "jsonl"):
            e = subprocess.run([sys.executable, "-m", "factory.cli", "export", "--store", str(store), "--out",
                                str(tmp_path / f"out-{fmt}"), "--format", fmt], capture_output=True, text=True, timeout=120)  # fmt: skip
            assert e.returncode == 0, e.stderr
        s = subprocess.run([sys.executable, "-m", "factory.cli", "status", "--store", str(store), "--json"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    haystacks = [p.stdout, p.stderr, s.stdout, s.stderr]
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.name != "sec.yaml":
            haystacks.append(f.read_bytes().decode("latin-1"))
    assert not any(SECRET in h for h in haystacks)
    assert any(
        "FACTORY_TEST_SECRET" in h for h in haystacks
    )  # the variable's name is recorded, not its value


def test_key_is_sent_as_bearer_header():
    """On the wire: a plain socket server captures the request the teacher sends."""
    import asyncio
    import socket
    import threading

    from factory.teachers.openai import OpenAITeacher
    from factory.types import Request

    seen: list[bytes] = []
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve() -> None:
        conn, _ = lsock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(v for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
                              if k.lower() == b"content-length"))  # fmt: skip
            while len(body) < length:
                body += conn.recv(65536)
            seen.append(head)
            doc = b'{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{}}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(doc), doc))  # fmt: skip

    threading.Thread(target=serve, daemon=True).start()
    os.environ["FACTORY_TEST_SECRET2"] = SECRET
    try:
        url = f"http://127.0.0.1:{port}/v1"
        t = OpenAITeacher(f"openai:m@{url}", f"m@{url}", {"api_key_env": "FACTORY_TEST_SECRET2"})

        async def go():
            out = await t.complete([Request.chat("hello")])
            await t.aclose()
            return out

        assert asyncio.run(go())[0].text == "hi"
        assert f"Authorization: Bearer {SECRET}".encode() in seen[0].split(b"\r\n")
        assert SECRET not in json.dumps(t.describe()) and SECRET not in json.dumps(t.identity())
    finally:
        del os.environ["FACTORY_TEST_SECRET2"]
        lsock.close()


@pytest.mark.parametrize("kind", ["500", "reset"])
def test_outage_mid_run_is_survived(tmp_path, kind):
    seeds = _seeds(tmp_path / "seeds.jsonl", 40)
    with serve_in_thread(FaultConfig(latency=0.05)) as srv:
        store = tmp_path / "s.duckdb"
        cfg = _config(tmp_path, "out", srv.base_url, store, seeds, extra="")
        srv.outage(1.0, kind)
        p = _run_cli(cfg)
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert len(_records(store)) == 80
