"""teacher.mode: batch against the fault server's Batch API (a process of its own): the same records as an
online run, the cache shared both ways, SIGKILL at each step resumed without a request run twice, an
expired batch, per-request errors, and the bad input it refuses. Kill points are held by a forwarding
proxy on 127.0.0.1 that stalls one call (the upload, the create's answer, the download)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import duckdb
import pytest
from aiohttp import web

from factory.store import Store
from factory.testing.fault_server import SubprocessHandle, start_subprocess

N_SEEDS, K = 12, 2  # 24 requests
FAST = "batch: {collect_s: 0.2, poll_interval_s: 0.05, poll_max_interval_s: 0.2}"


def _seeds(path: Path, n: int = N_SEEDS, offset: int = 0) -> Path:
    rows = [
        {"id": f"q{i}", "question": f"What is {i} plus {i}?", "answer": str(2 * i)}
        for i in range(offset, offset + n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(
    tmp: Path, name: str, url: str, store: Path, seeds: Path, *, mode: str = "batch", batch: str = FAST
) -> Path:
    p = tmp / f"{name}-{mode}.yaml"
    teacher = f"{{spec: 'openai:m@{url}', mode: {mode}, max_retries: 3, {batch}}}"
    p.write_text(
        f"name: {name}\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds}\nstore: {store}\n"
        f"params: {{k: {K}}}\nteacher: {teacher}\nrunner: {{commit_interval_s: 0.2}}\n"
    )
    return p


def _run(cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "factory.cli", "run", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))  # fmt: skip


def _here(cfg: Path) -> tuple[int, str]:
    """`factory run CFG` in this process (a second of imports less than a child; nothing here is killed)."""
    from factory.cli import main

    return main(["run", str(cfg)]), "(see the captured output)"


def _finish(p: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str]:
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def _records(store: Path) -> list[tuple]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        # ids hold the run id, which holds the teacher's URL (a proxy's differs): compare what was made
        return con.execute("SELECT seed_id, sample_index, payload FROM records ORDER BY ALL").fetchall()
    finally:
        con.close()


def _query(store: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _batch_stats(srv: SubprocessHandle) -> dict:
    return srv.stats()["batch"]


@pytest.fixture(scope="module")
def srv() -> Iterator[SubprocessHandle]:
    with start_subprocess(batch_rate=40) as handle:  # 24 requests run in ~0.6 s
        yield handle


@pytest.fixture(scope="module")
def reference(srv: SubprocessHandle, tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    """The records of an online run of the same config (same run name: same record ids)."""
    tmp = tmp_path_factory.mktemp("ref")
    store = tmp / "ref.duckdb"
    code, err = _here(_config(tmp, "bm", srv.base_url, store, _seeds(tmp / "seeds.jsonl"), mode="online"))
    assert code == 0, err
    rows = _records(store)
    assert len(rows) == N_SEEDS * K
    return rows


# -- a forwarding proxy that can hold one call ---------------------------------------------------------------
class Proxy:
    """Forwards everything to the fault server; a call matching ``hold`` (method, path regex, phase) is held
    for ever, before forwarding (phase "request") or after the server answered (phase "response")."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.hold: tuple[str, str, str] | None = None
        self.held = threading.Event()
        self._holding: set[asyncio.Task] = set()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.session = aiohttp.ClientSession()
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/{tail:.*}", self.forward)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def _holds(self, request: web.Request, phase: str) -> bool:
        h = self.hold
        return (
            h is not None
            and h[0] == request.method
            and h[2] == phase
            and re.search(h[1], request.path) is not None
        )

    async def forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self._holds(request, "request"):
            await self._hold()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        url = self.upstream + request.path_qs
        async with self.session.request(request.method, url, data=body, headers=headers) as r:
            data = await r.read()
            status, ctype = r.status, r.headers.get("Content-Type", "application/json")
        if self._holds(request, "response"):
            await self._hold()
        return web.Response(status=status, body=data, headers={"Content-Type": ctype})

    async def _hold(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._holding.add(task)
        self.held.set()
        await asyncio.sleep(3600)

    def close(self) -> None:
        async def stop() -> None:
            for task in self._holding:
                task.cancel()
            await self.session.close()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def proxy(srv: SubprocessHandle) -> Iterator[Proxy]:
    p = Proxy(srv.base_url.removesuffix("/v1"))
    yield p
    p.close()


# -- tests -----------------------------------------------------------------------------------------------------
def test_batch_run_equals_online_run_and_the_cache_is_shared_both_ways(srv, reference, tmp_path):
    seeds = _seeds(tmp_path / "seeds.jsonl")
    batch_store, online_store = tmp_path / "b.duckdb", tmp_path / "o.duckdb"
    srv.reset()
    code, err = _here(_config(tmp_path, "bm", srv.base_url, batch_store, seeds))
    assert code == 0, err
    assert _records(batch_store) == reference
    stats = srv.stats()
    assert stats["requests"] == 0 and _batch_stats(srv)["requests"] == N_SEEDS * K  # no online call
    assert _batch_stats(srv)["created"] == 1  # one file held the stage's 24 requests
    # every answer came from a batch, and the store says so
    assert _query(batch_store, "SELECT count(*) FROM batch_requests")[0][0] == N_SEEDS * K
    assert _query(batch_store, "SELECT state, answered FROM batches") == [("settled", N_SEEDS * K)]
    keys = [k for (k,) in _query(batch_store, "SELECT key FROM cache")]
    with Store(batch_store, read_only=True) as st:  # what a cost estimate bills at the batch rate
        assert st.batch_answered(keys) == set(keys) and len(keys) == N_SEEDS * K

    # batch, then online on the same store (another run): every request is a cache hit, none is sent
    srv.reset()
    code, err = _here(_config(tmp_path, "again", srv.base_url, batch_store, seeds, mode="online"))
    assert code == 0, err
    assert srv.stats()["requests"] == 0

    # online, then batch: nothing is submitted
    code, err = _here(_config(tmp_path, "bm", srv.base_url, online_store, seeds, mode="online"))
    assert code == 0, err
    srv.reset()
    code, err = _here(_config(tmp_path, "other", srv.base_url, online_store, seeds))
    assert code == 0, err
    assert _batch_stats(srv) == {"requests": 0, "created": 0, "outcomes": {}}
    assert _query(online_store, "SELECT count(*) FROM batches")[0][0] == 0
    online_keys = [k for (k,) in _query(online_store, "SELECT key FROM cache")]
    with Store(online_store, read_only=True) as st:  # answered online: billed at the online rate
        assert len(online_keys) == N_SEEDS * K and st.batch_answered(online_keys) == set()


def _killed_then_resumed(
    tmp_path: Path, url: str, wait, srv: SubprocessHandle, reference: list[tuple]
) -> tuple[Path, str]:
    store = tmp_path / "k.duckdb"
    cfg = _config(tmp_path, "bm", url, store, _seeds(tmp_path / "seeds.jsonl"))
    srv.reset()
    p = _run(cfg)
    try:
        assert wait(p), "the kill point was never reached"
    finally:
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=30)
    return store, err


def _resume(store: Path, url: str, tmp_path: Path, srv: SubprocessHandle, reference: list[tuple]) -> None:
    cfg = _config(tmp_path, "bm", url, store, tmp_path / "seeds.jsonl")
    code, err = _here(cfg)
    assert code == 0, err
    assert _records(store) == reference
    batch = _batch_stats(srv)
    assert batch["created"] == 1, batch  # never submitted twice
    assert batch["requests"] == N_SEEDS * K, batch  # no request run twice, none lost
    assert srv.stats()["requests"] == 0


@pytest.mark.parametrize(
    "hold",
    [
        ("POST", r"^/v1/files$", "request"),  # killed during the upload
        ("POST", r"^/v1/batches$", "response"),  # the batch was created, its id never came back
        ("GET", r"^/v1/files/[^/]+/content$", "request"),  # killed during the download
    ],
    ids=["upload", "create", "download"],
)
def test_sigkill_at_a_step_resumes_without_submitting_twice(srv, reference, proxy, tmp_path, hold):
    proxy.hold = hold
    store, _ = _killed_then_resumed(tmp_path, proxy.base_url, lambda p: proxy.held.wait(60), srv, reference)
    proxy.hold = None
    _resume(store, proxy.base_url, tmp_path, srv, reference)


def test_sigkill_while_polling_resumes_the_same_batch(srv, reference, tmp_path):
    slow = 8.0  # 24 requests at 8 a second: 3 s in progress

    with start_subprocess(batch_rate=slow) as slow_srv:

        def running(p: subprocess.Popen[str]) -> bool:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and p.poll() is None:
                if _batch_stats(slow_srv)["requests"] >= 4:
                    return True
                time.sleep(0.02)
            return False

        store, err = _killed_then_resumed(tmp_path, slow_srv.base_url, running, slow_srv, reference)
        # the progress line said what the run was waiting on
        assert re.search(r"waiting on batch batch_\w+: (validating|in_progress)", err), err
        assert _query(store, "SELECT state FROM batches") == [("submitted",)]
        status = subprocess.run([sys.executable, "-m", "factory.cli", "status", "bm", "--store", str(store)],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert re.search(
            r"batches: 1 submitted\n  batch_\w+: submitted \((validating|in_progress)\)", status.stdout
        )
        _resume(store, slow_srv.base_url, tmp_path, slow_srv, reference)


def test_status_eta_comes_from_the_providers_counts():
    from factory.store.batches import eta_s

    row = {"state": "submitted", "provider_status": "in_progress", "total": 100, "completed": 20, "failed": 5,
           "in_progress_at": 1000}  # fmt: skip
    assert eta_s(row, now=1050.0) == pytest.approx(75 * 50 / 25)  # 25 done in 50 s, 75 left
    assert eta_s({**row, "completed": 0, "failed": 0}, now=1050.0) is None  # nothing done yet: no guess
    assert eta_s({**row, "provider_status": "validating"}, now=1050.0) is None


def test_expired_batches_resubmit_only_the_unanswered(reference, tmp_path):
    # 20 lines a second and a 0.5 s window: each batch answers about 10 requests, then expires
    with start_subprocess(batch_rate=20, batch_window_s=0.5) as s:
        store = tmp_path / "e.duckdb"
        code, err = _here(_config(tmp_path, "bm", s.base_url, store, _seeds(tmp_path / "seeds.jsonl")))
        assert code == 0, err
        assert _records(store) == reference
        batch = _batch_stats(s)
        assert batch["created"] >= 2
        assert batch["outcomes"]["200"] == N_SEEDS * K  # each request answered once: only the rest went again
        states = _query(store, "SELECT state, answered, retried FROM batches ORDER BY created_at")
        assert all(st == "settled" for st, _, _ in states)
        assert sum(a for _, a, _ in states) == N_SEEDS * K
        assert states[0][2] > 0  # the first batch left some for the next


def test_per_request_errors_are_retried_in_the_next_batch_or_online(reference, tmp_path):
    # a third of the bodies fail their first attempt with a 500 (attempts count across batches and online)
    with start_subprocess(fault_rate=0.35, fault_kinds="500", fault_repeats=1) as s:
        store = tmp_path / "f.duckdb"
        code, err = _here(_config(tmp_path, "bm", s.base_url, store, _seeds(tmp_path / "seeds.jsonl")))
        assert code == 0, err
        assert _records(store) == reference
        batch = _batch_stats(s)
        failed = batch["outcomes"]["500"]
        assert failed > 0 and batch["created"] == 2  # the failed ones went in a second file
        assert batch["outcomes"]["200"] == N_SEEDS * K and s.stats()["requests"] == 0
        assert _query(store, "SELECT count(*) FROM cache WHERE status <> 'ok'")[0][0] == 0

        # retry_errors: online — the failed ones are asked again at once through the online API
        s.reset()
        other = _seeds(tmp_path / "other.jsonl", offset=100)
        online = FAST.replace("}", ", retry_errors: online}")
        code, err = _here(_config(tmp_path, "onl", s.base_url, tmp_path / "g.duckdb", other, batch=online))
        assert code == 0, err
        batch = _batch_stats(s)
        assert batch["created"] == 1 and batch["outcomes"].get("500", 0) > 0
        assert s.stats()["responses"] == {"200": batch["outcomes"]["500"]}


def test_bad_input_batch_mode_without_a_batch_api_and_a_request_over_the_file_limit(srv, tmp_path, cli):
    cfg = tmp_path / "v.yaml"
    cfg.write_text(
        "name: v\nrecipe: rationales\nseeds: s.jsonl\nteacher: {spec: 'vllm:/models/x', mode: batch}\n"
    )
    r = cli("run", str(cfg), cwd=tmp_path)
    assert r.returncode == 2
    assert "mode: batch" in r.stderr and "openai" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    srv.reset()
    seeds = _seeds(tmp_path / "seeds.jsonl")
    tiny = "batch: {max_bytes_per_file: 1024, collect_s: 0.2, poll_interval_s: 0.05}"
    big = _config(tmp_path, "big", srv.base_url, tmp_path / "big.duckdb", seeds, batch=tiny)
    r = cli("run", str(big), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "teacher.batch.max_bytes_per_file" in r.stderr and "Traceback" not in r.stderr
    assert _batch_stats(srv)["created"] == 0


def test_a_store_moved_without_its_upload_file_drops_the_unsent_batch_and_submits_once(
    srv, reference, proxy, tmp_path
):
    import shutil

    proxy.hold = ("POST", r"^/v1/files$", "request")  # killed during the upload: no batch exists yet
    store, _ = _killed_then_resumed(tmp_path, proxy.base_url, lambda p: proxy.held.wait(60), srv, reference)
    proxy.hold = None
    shutil.rmtree(store.with_name(store.name + ".batches"))  # another machine: only the store came along
    _resume(store, proxy.base_url, tmp_path, srv, reference)
    assert sorted(st for (st,) in _query(store, "SELECT state FROM batches")) == ["dropped", "settled"]
