"""The Ray executor on a local Ray instance (2 CPUs) against the fault server on 127.0.0.1: the same records
as a single-process run, a worker killed mid-shard, a cluster run stopped and resumed, a shared rate limit.
"""

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

ray = pytest.importorskip("ray")

from factory import api  # noqa: E402
from factory.cluster import ShardFiles, shard_root  # noqa: E402
from factory.testing.fault_server import FaultConfig, serve_in_thread  # noqa: E402

pytestmark = pytest.mark.slow  # a Ray instance takes 5-15 s to start here

SEEDS = 60


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             logging_level="warning", log_to_driver=False)  # fmt: skip
    yield
    ray.shutdown()


def write_run(tmp: Path, url: str, *, name: str = "cl", executor: str = "", seeds: int = SEEDS,
              teacher: str = "") -> Path:  # fmt: skip
    s = tmp / "seeds.jsonl"
    if not s.exists():
        s.write_text("".join(json.dumps({"id": f"s{i:03d}", "text": f"Say something about {i}."}) + "\n"
                             for i in range(seeds)))  # fmt: skip
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        f"name: cl\nrecipe: prompt\nseeds: seeds.jsonl\nstore: {name}.duckdb\nparams: {{max_tokens: 24}}\n"
        f"teacher: {{spec: 'openai:m@{url}', max_in_flight: 8{', ' + teacher if teacher else ''}}}\n"
        f"runner: {{commit_interval_s: 0.2}}\n" + (f"executor: {executor}\n" if executor else "")
    )
    return cfg


def records(store: Path) -> list[tuple]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(
            "SELECT id, seed_id, stage, sample_index, text, request_keys FROM records ORDER BY id"
        ).fetchall()
    finally:
        con.close()


def single_process(tmp: Path, url: str) -> list[tuple]:
    res = api.run(write_run(tmp, url, name="local"))
    assert res.status == "done"
    return records(tmp / "local.duckdb")


def test_shards_on_two_workers_give_the_single_process_records(tmp_path, ray_local):
    with serve_in_thread(FaultConfig(latency=0.02)) as srv:
        expected = single_process(tmp_path, srv.base_url)
        srv.reset()
        cfg = write_run(
            tmp_path, srv.base_url, name="ray", executor="{kind: ray, shard_seeds: 7, workers: 2}"
        )
        res = api.run(cfg)
        stats = srv.stats()
    assert res.status == "done", (res.error, res.progress)
    got = records(tmp_path / "ray.duckdb")
    assert got == expected and len(got) == SEEDS
    # every request paid once, none twice: the store's cache answered nothing here (a new store)
    assert stats["requests"] == SEEDS and stats["distinct_bodies"] == SEEDS
    assert res.progress.requests_sent == SEEDS and res.progress.seeds_done == SEEDS
    # the shard files are gone once the run is done, and a second run sends nothing
    prep = api.prepare(cfg)
    assert not ShardFiles(shard_root(prep)).listing("")
    again = api.run(cfg)
    assert again.status == "done" and again.progress.requests_sent == 0


def _shard_workers() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ShardWorker.run_shard" in cmd:  # an actor busy with a shard (idle ones are "ShardWorker")
                pids.append(int(d.name))
    return pids


def test_a_worker_killed_mid_shard_loses_and_duplicates_nothing(tmp_path, ray_local):
    with serve_in_thread(FaultConfig(latency=0.15)) as srv:
        expected = single_process(tmp_path, srv.base_url)
        srv.reset()
        cfg = write_run(tmp_path, srv.base_url, name="ray",
                        executor="{kind: ray, shard_seeds: 30, workers: 2, keep_shards: true}")  # fmt: skip
        prep = api.prepare(cfg)
        files = ShardFiles(shard_root(prep))
        import threading

        killed: list[int] = []

        def killer() -> None:  # once a shard has written a part, kill the worker running it
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed:
                if any(".records." in p for p in files.listing("")):
                    pids = _shard_workers()
                    if pids:
                        os.kill(pids[0], signal.SIGKILL)
                        killed.append(pids[0])
                        return
                time.sleep(0.05)

        t = threading.Thread(target=killer)
        t.start()
        res = api.run(cfg)
        t.join()
        stats = srv.stats(detail=True)
    assert killed, "no worker was killed"
    assert res.status == "done", (res.error, res.progress)
    got = records(tmp_path / "ray.duckdb")
    assert got == expected  # nothing lost, nothing twice
    twice = sum(n - 1 for n in stats["per_body"].values())
    # only answers in flight at the kill (at most the worker's 4 connections) may have been paid twice
    assert twice <= 4, twice


def test_a_cluster_run_stopped_part_way_resumes_without_paying_twice(tmp_path):
    with serve_in_thread(FaultConfig(latency=0.1)) as srv:
        expected = single_process(tmp_path, srv.base_url)
        srv.reset()
        cfg = write_run(tmp_path, srv.base_url, name="ray",
                        executor="{kind: ray, shard_seeds: 10, workers: 2, keep_shards: true}")  # fmt: skip
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [sys.executable, "-m", "factory.cli", "run", str(cfg), "--json"]
        p = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        files = ShardFiles(shard_root(api.prepare(cfg)))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
            p_.endswith("_SUCCESS.json") for p_ in files.listing("")
        ):
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 130, err[-2000:]
        first = json.loads(out.strip().splitlines()[-1])
        assert first["status"] == "interrupted" and 0 < first["seeds_done"] < SEEDS
        p2 = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert p2.returncode == 0, p2.stderr[-2000:]
        stats = srv.stats(detail=True)
    assert records(tmp_path / "ray.duckdb") == expected
    assert max(stats["per_body"].values()) == 1  # no request was sent twice across the two invocations
    assert stats["requests"] == SEEDS


def test_workers_share_one_rate_limit(tmp_path, ray_local):
    # 600 a minute (10/s), bucket 3: two workers each pacing on their own to the told limit would send
    # 20/s and meet many 429s; sharing one budget they meet (almost) none.
    with serve_in_thread(FaultConfig(latency=0.02, rpm=600, rpm_burst=3)) as srv:
        cfg = write_run(tmp_path, srv.base_url, name="ray", seeds=40, teacher="max_requests_per_minute: 600",
                        executor="{kind: ray, shard_seeds: 5, workers: 2}")  # fmt: skip
        t0 = time.perf_counter()
        res = api.run(cfg)
        wall = time.perf_counter() - t0
        stats = srv.stats()
    assert res.status == "done", (res.error, res.progress)
    assert stats["rate_limited"] <= 3, stats
    assert wall >= 40 / 10 * 0.8  # 40 starts at 10/s, across both workers


def test_the_budget_holds_for_the_whole_cluster_run(tmp_path, ray_local):
    with serve_in_thread(FaultConfig(latency=0.02)) as srv:
        cfg = write_run(
            tmp_path, srv.base_url, name="ray", executor="{kind: ray, shard_seeds: 10, workers: 2}"
        )
        body = cfg.read_text()
        cfg.write_text(body + "budget: {max_requests: 25}\n")
        first = api.run(cfg)
        sent_first = srv.stats()["requests"]
        cfg.write_text(body)  # the budget raised: the same run goes on
        second = api.run(cfg)
        stats = srv.stats(detail=True)
    assert first.status == "budget" and sent_first <= 25 and first.progress.seeds_done == sent_first
    assert second.status == "done" and len(records(tmp_path / "ray.duckdb")) == SEEDS
    assert stats["requests"] == SEEDS and max(stats["per_body"].values()) == 1


def test_an_unreachable_cluster_or_a_stray_flag_is_refused_before_the_store_is_touched(tmp_path):
    cfg = write_run(
        tmp_path, "http://127.0.0.1:9/v1", name="ray", executor="{kind: ray, address: 'ray://127.0.0.1:9'}"
    )
    p = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(cfg)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=180)  # fmt: skip
    assert p.returncode == 2 and "executor.address" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "ray.duckdb").exists()
    # a shard location no filesystem opens names the field
    cfg.write_text(
        cfg.read_text().replace("address: 'ray://127.0.0.1:9'", "shard_dir: 'nosuchfs://bucket/x'")
    )
    p = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(cfg)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=180)  # fmt: skip
    assert p.returncode == 2 and "executor.shard_dir" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "ray.duckdb").exists()
    # --address without the ray executor names the flag
    local = write_run(tmp_path, "http://127.0.0.1:9/v1", name="local")
    p = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(local), "--address", "auto"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 2 and "--address" in p.stderr and not (tmp_path / "local.duckdb").exists()


PLUGIN = """
import hashlib, json, os, uuid
from filters.base import Filter, FilterParams, Scored

class Params(FilterParams):
    min_chars: int = 1

def key(text):
    return hashlib.sha256(text.encode()).hexdigest()

def precompute(rows, params, folder):
    (folder / "chars").mkdir(parents=True, exist_ok=True)
    tmp = folder / "chars" / f"{uuid.uuid4().hex}.json.tmp"
    tmp.write_text(json.dumps({key(r.text): [len(r.text), os.getpid()] for r in rows}))
    os.replace(tmp, str(tmp)[: -len(".tmp")])

async def score(rows, params, ctx):
    found = {}
    for f in sorted((ctx.cache_dir / "chars").glob("*.json")):
        found.update(json.loads(f.read_text()))
    got = [found.get(key(r.text), [len(r.text), os.getpid()]) for r in rows]
    return [Scored(r.id, float(n), {"by": pid}) for r, (n, pid) in zip(rows, got)]

CHARS = Filter(slug="chars", summary="Characters.", params=Params, code_version="1", score=score,
               decide=lambda s, p: (s.score >= p.min_chars, None), set_level=True, precompute=precompute)
"""


def test_filters_precompute_hooks_run_in_the_workers(tmp_path, ray_local, caplog):
    """The built-in hooks (MinHash signatures, sentence embeddings) and a plugin filter's own hook run in the
    workers; the driver's pass finds their work in its cache."""
    import logging

    plugin = tmp_path / "chars_filter.py"
    plugin.write_text(PLUGIN)
    with serve_in_thread(FaultConfig(latency=0.01)) as srv:
        cfg = write_run(
            tmp_path, srv.base_url, name="ray", executor="{kind: ray, shard_seeds: 15, workers: 2}"
        )
        cfg.write_text(
            cfg.read_text() + f"filters:\n  - minhash_dedup\n  - embed_dedup\n  - {plugin}:CHARS\n"
        )
        with caplog.at_level(logging.INFO, logger="filters"):
            res = api.run(cfg)
    assert res.status == "done", (res.error, res.progress)
    assert res.curation is not None and res.curation.funnel["curated"] >= 1
    # the driver's pass found every signature and every vector in its cache: the workers sent them
    messages = [r.getMessage() for r in caplog.records]
    line = next(m for m in messages if "signatures" in m)
    assert f"signatures 0 computed / {SEEDS} reused" in line, line
    assert any(m.startswith("embed_dedup:") for m in messages), messages
    assert not [m for m in messages if m.startswith("encoded ")], messages
    assert list((tmp_path / "ray.duckdb.filters" / "embeddings").rglob("*.keys.npy"))
    # the plugin's counts were made by the workers' processes, none by this one
    con = duckdb.connect(str(tmp_path / "ray.duckdb"), read_only=True)
    try:
        details = [
            json.loads(d)
            for (d,) in con.execute("SELECT detail FROM verdicts WHERE filter = 'chars'").fetchall()
        ]
    finally:
        con.close()
    assert details and {d["by"] for d in details}.isdisjoint({os.getpid()}), details[:3]
    assert len(list((tmp_path / "ray.duckdb.filters" / "chars").glob("*.json"))) == 4  # one per shard


def test_workers_get_their_seeds_with_each_shard(tmp_path, ray_local):
    # The driver reads the seed file a shard at a time; a worker never opens it: it prepares the run from the
    # driver's config and the file's digest, and its seeds come with each shard.
    from factory.cluster import ShardWorker

    with serve_in_thread(FaultConfig(latency=0.01)) as srv:
        cfg = write_run(
            tmp_path, srv.base_url, name="ray", executor="{kind: ray, shard_seeds: 20, workers: 2}"
        )
        prep = api.prepare(cfg)
        (tmp_path / "seeds.jsonl").rename(tmp_path / "elsewhere.jsonl")
        worker = ShardWorker(prep.config.model_dump(mode="json"), str(tmp_path), prep.seeds_digest, None, {})
        assert worker.ready() == prep.run_id and len(worker.prep.seeds) == 0
        api.run_sync(worker.close())
        (tmp_path / "elsewhere.jsonl").rename(tmp_path / "seeds.jsonl")
        res = api.run_sync(api.run_async(prep))
    assert res.status == "done", (res.error, res.progress)
    assert len(records(tmp_path / "ray.duckdb")) == SEEDS


def test_a_401_in_one_shard_stops_the_whole_cluster_run(tmp_path, ray_local):
    """A wrong key fails every shard the same way: the first shard's 401 stops the run (its message and
    exit code, as in one process), no shard after it is sent, and nothing of it is cached."""
    with serve_in_thread(FaultConfig(api_key="sk-right-0123456789abcdefgh")) as srv:
        cfg = write_run(
            tmp_path, srv.base_url, name="ray", executor="{kind: ray, shard_seeds: 5, workers: 2}"
        )
        res = api.run(cfg)
        sent = srv.stats()["requests"]
    assert res.status == "failed" and res.exit_code == 5, (res.status, res.error)
    assert "401 from" in (res.error or "") and "teacher.api_key_env" in (res.error or "")
    assert sent <= 2 * 8  # what two workers had in flight at the first 401, not the 60 seeds' requests
    con = duckdb.connect(str(tmp_path / "ray.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM cache").fetchone() == (0,)
    finally:
        con.close()
