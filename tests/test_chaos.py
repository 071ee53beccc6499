"""Chaos: SIGKILL at many moments, a full disk, two runs on one store, a teacher that restarts, fails or
truncates. Everything goes through the real CLI in subprocesses against the fault server on 127.0.0.1.

The long loops are marked ``slow``; they print their figures (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import orjson
import pytest

from factory.store import CACHE_COLUMNS
from factory.store.journal import journal_dir, read_segments
from factory.teachers.openai import OpenAITeacher
from factory.testing.fault_server import body_key, start_subprocess
from factory.types import Request, Sampling

NAME = "chaos"
CHAOS_SEED = int(os.environ.get("FACTORY_CHAOS_SEED", "20240611"))


# -- helpers ---------------------------------------------------------------------------------------------
def write_seeds(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"s{i:05d}", "text": f"One line about the number {i}."}) + "\n"
                            for i in range(n)))  # fmt: skip
    return path


def write_config(path: Path, *, url: str, store: Path, seeds: Path, in_flight: int = 64, teacher: str = "",
                 commit_interval_s: float = 0.2) -> Path:  # fmt: skip
    path.write_text(
        f"name: {NAME}\nrecipe: prompt\nseeds: '{seeds}'\nstore: '{store}'\nparams: {{max_tokens: 24}}\n"
        f"teacher: {{spec: 'openai:m@{url}', max_in_flight: {in_flight}{', ' + teacher if teacher else ''}}}\n"
        f"runner: {{commit_interval_s: {commit_interval_s}}}\n"
    )
    return path


def factory(*args: str | Path, preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "factory.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def finish(p: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def run_to_end(cfg: Path, timeout: float = 300, **kw) -> tuple[int, str, str]:
    return finish(factory("run", cfg, "--json", **kw), timeout)


def query(store: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def records(store: Path) -> list[tuple]:
    """Every record with its payload and lineage (not created_at), in id order."""
    return query(
        store,
        "SELECT id, run_id, recipe, stage, seed_id, sample_index, text, payload, parent_ids, request_keys, "
        "teacher, template_version FROM records ORDER BY id",
    )


def failed_seeds(store: Path) -> dict[str, tuple[str, str]]:
    rows = query(store, "SELECT seed_id, kind, message FROM failures ORDER BY created_at")
    return {s: (k, m) for s, k, m in rows}


def done_seeds(store: Path) -> set[str]:
    return {r[0] for r in query(store, "SELECT seed_id FROM seeds_done")}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def journal_segments(store: Path) -> list[Path]:
    d = journal_dir(store)
    return sorted(d.glob("seg-*.jsonl")) if d.is_dir() else []


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen[str] | None, timeout: float, poll: float = 0.005) -> bool:  # fmt: skip
    """True once ``cond()`` holds; False when ``proc`` exits first or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def answered(store: Path, url: str) -> set[str]:
    """The fault server's body keys of every answer the store holds, committed or still in the journal
    (what the next open replays): the HTTP body is rebuilt from the request as the openai teacher sends it."""
    teacher = OpenAITeacher(f"openai:m@{url}", f"m@{url}", {})
    rows = [r[0] for r in query(store, "SELECT request FROM cache")] if store.exists() else []
    rows += [r[3] for r in read_segments(journal_dir(store), CACHE_COLUMNS)[1]]
    keys = set()
    for text in rows:
        b = orjson.loads(text)
        s = b["sampling"]
        sampling = Sampling(
            s["temperature"], s["top_p"], s["max_tokens"], tuple(s.get("stop", ())), s.get("seed")
        )
        messages = tuple({"role": m["role"], "content": m["content"]} for m in b["messages"])  # as sent
        keys.add(body_key(orjson.dumps(teacher.payload(Request(messages, sampling, b["sample"])))))
    return keys


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- SIGKILL at twenty moments ---------------------------------------------------------------------------
N_REQUESTS = 5000
IN_FLIGHT = 64
RUN_MODES = ["startup"] * 2 + ["time"] * 3 + ["requests"] * 5 + ["commit"] * 5  # then "end"
EXPORT_MODES = [("time", False), ("tempdir", False), ("time", True), ("tempdir", True)]  # (mode, --overwrite)


@pytest.mark.slow
def test_sigkill_at_twenty_moments_then_resume(tmp_path: Path, record_property):
    """16 kills of `factory run` (start-up and journal replay, random times, mid-commit, the final commit)
    and 4 of `factory export`; each run is resumed by re-running the command. The records must equal an
    uninterrupted run's, and only requests in flight at a kill may be paid for again."""
    rng = random.Random(CHAOS_SEED)
    modes = [*rng.sample(RUN_MODES, len(RUN_MODES)), "end"]
    seeds = write_seeds(tmp_path / "seeds.jsonl", N_REQUESTS)
    t_start = time.monotonic()
    with start_subprocess(latency=0.01) as srv:
        ref_store = tmp_path / "ref.duckdb"
        t0 = time.monotonic()
        code, _, err = run_to_end(
            write_config(tmp_path / "ref.yaml", url=srv.base_url, store=ref_store, seeds=seeds)
        )
        t_ref = time.monotonic() - t0
        assert code == 0, err
        reference = records(ref_store)
        assert len(reference) == N_REQUESTS
        # The HTTP bodies rebuilt from the stored requests are the ones the server saw.
        assert answered(ref_store, srv.base_url) == set(srv.stats(detail=True)["per_body"])
        srv.reset()

        store = tmp_path / "s.duckdb"
        cfg = write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds)
        kills: list[dict] = []
        snapshots: list[dict[str, int]] = [{}]
        for i, mode in enumerate(modes):
            base = srv.stats()
            p = factory("run", cfg, "--json")
            t_spawn = time.monotonic()
            kills_left = sum(1 for m in modes[i:] if m in ("requests", "commit", "time"))
            remaining = N_REQUESTS - base["distinct_bodies"]
            quota = base["requests"] + max(
                20, int(rng.uniform(0.3, 1.0) * remaining / max(1, kills_left + 1))
            )
            if mode == "startup":  # before this invocation's first request: start-up and journal replay
                deadline = t_spawn + rng.uniform(0.2, 2.0)
                reached = wait_until(
                    lambda d=deadline, b=base["requests"]: (
                        time.monotonic() >= d or srv.stats()["requests"] > b
                    ),
                    p,
                    60,
                )
            elif mode == "time":
                reached = wait_until(lambda b=base["requests"]: srv.stats()["requests"] > b, p, 60)
                time.sleep(rng.uniform(0.05, 0.6))
            elif mode == "requests":
                reached = wait_until(lambda q=quota: srv.stats()["requests"] >= q, p, 60)
            elif mode == "commit":  # a rotated segment still on disk: its rows are being committed
                reached = wait_until(lambda q=quota: srv.stats()["requests"] >= q, p, 60)
                reached = reached and wait_until(lambda: len(journal_segments(store)) >= 2, p, 10, poll=0.001)
            else:  # "end": every request answered; the last commit, the status and the close are under way
                reached = wait_until(
                    lambda: (s := srv.stats())["distinct_bodies"] >= N_REQUESTS and s["in_flight"] == 0,
                    p,
                    120,
                )
            at_server = srv.stats()["in_flight"] if p.poll() is None else 0
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            code, _, err = finish(p, 60)
            after = srv.stats(detail=True)
            snapshots.append(after["per_body"])
            sent = {b for b, n in after["per_body"].items() if n > snapshots[-2].get(b, 0)}
            kills.append({"kill": i + 1, "mode": mode, "killed": code == -signal.SIGKILL, "reached": reached,
                          "at_s": round(time.monotonic() - t_spawn, 2), "sent": len(sent), "at_server": at_server,
                          "kept": answered(store, srv.base_url), "exit": code})  # fmt: skip
            # In flight at the kill: sent by this invocation, its answer neither committed nor journaled.
            kills[-1]["in_flight"] = len(sent - kills[-1]["kept"])
            assert code in (0, -signal.SIGKILL), err
        code, out, err = run_to_end(cfg)
        assert code == 0, err
        final = srv.stats(detail=True)["per_body"]
        resumed = json.loads(out)

        # A body sent in invocation k and again later was paid twice because of kill k; if its answer had
        # been kept (committed or journaled) by then, a paid response was lost.
        for k, kill in enumerate(kills, 1):
            sent_k = {b for b, n in snapshots[k].items() if n > snapshots[k - 1].get(b, 0)}
            again = {b for b in sent_k if final[b] > snapshots[k][b]}
            kill["duplicates"], kill["lost"] = len(again), len(again & kill.pop("kept"))
        duplicates = sum(n - 1 for n in final.values())

        # -- export, killed four times --
        ref_out, out_dir = tmp_path / "ref-out", tmp_path / "out"
        t0 = time.monotonic()
        code, _, err = finish(factory("export", NAME, "--store", ref_store, "--out", ref_out))
        t_export = time.monotonic() - t0
        assert code == 0, err
        complete: dict[str, bytes] | None = None
        for j, (mode, overwrite) in enumerate(EXPORT_MODES):
            if j == 2:  # between the kills without and with an existing export: one complete export
                code, _, err = finish(
                    factory("export", NAME, "--store", store, "--out", out_dir, "--overwrite")
                )
                assert code == 0, err
                complete = folder_bytes(out_dir)
                data = {k: v for k, v in complete.items() if k.startswith("data/")}
                assert data and data == {
                    k: v for k, v in folder_bytes(ref_out).items() if k.startswith("data/")
                }
            temp_before = set(tmp_path.glob(".out.*"))  # left behind by earlier kills
            p = factory(
                "export", NAME, "--store", store, "--out", out_dir, *(["--overwrite"] if overwrite else [])
            )
            t_spawn = time.monotonic()
            if mode == "time":
                deadline = t_spawn + rng.uniform(0.3, 0.9) * t_export
                reached = wait_until(lambda d=deadline: time.monotonic() >= d, p, 60)
            else:  # the temporary folder exists: rows are being written
                reached = wait_until(
                    lambda t=temp_before: bool(set(tmp_path.glob(".out.*")) - t), p, 60, poll=0.001
                )
                time.sleep(rng.uniform(0, 0.2))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            code, _, err = finish(p, 60)
            assert code in (0, -signal.SIGKILL), err
            kills.append({"kill": len(kills) + 1, "mode": f"export-{mode}" + ("-overwrite" if overwrite else ""),
                          "killed": code == -signal.SIGKILL, "reached": reached,
                          "at_s": round(time.monotonic() - t_spawn, 2), "sent": 0, "at_server": 0, "in_flight": 0,
                          "duplicates": 0, "lost": 0, "exit": code})  # fmt: skip
            # The folder is there whole, or not at all: never a half-written export.
            if complete is None:
                assert not out_dir.exists() or code == 0
            elif out_dir.exists():
                assert folder_bytes(out_dir) == complete
            else:  # killed between the two renames of the swap: the previous export is kept aside
                (aside,) = tmp_path.glob(".out.export-*-old")
                assert folder_bytes(aside) == complete
    leftovers = sorted(p.name for p in tmp_path.glob(".out.*"))
    t_total = time.monotonic() - t_start

    # -- the figures --
    run_kills = [k for k in kills if k["killed"] and not k["mode"].startswith("export")]
    export_kills = [k for k in kills if k["killed"] and k["mode"].startswith("export")]
    in_flight_sum = sum(k["in_flight"] for k in run_kills)
    figures = {
        "seed": CHAOS_SEED, "requests": N_REQUESTS, "max_in_flight": IN_FLIGHT, "kills": len(run_kills) + len(export_kills),
        "run_kills": len(run_kills), "export_kills": len(export_kills), "duplicates": duplicates,
        "in_flight_at_kills": in_flight_sum, "lost_responses": sum(k["lost"] for k in kills),
        "paid_calls": sum(final.values()), "max_in_flight_at_a_kill": max(k["in_flight"] for k in run_kills),
        "uninterrupted_run_s": round(t_ref, 1), "export_s": round(t_export, 1), "test_s": round(t_total, 1),
        "export_temp_folders_left": len(leftovers),
    }  # fmt: skip
    print("\nkill  mode                     at_s  sent  at_server  in_flight  duplicates  lost  exit")
    for k in kills:
        print(f"{k['kill']:>4}  {k['mode']:<23} {k['at_s']:>5}  {k['sent']:>4}  {k['at_server']:>9}  "
              f"{k['in_flight']:>9}  {k['duplicates']:>10}  {k['lost']:>4}  {k['exit']}")  # fmt: skip
    print("figures:", json.dumps(figures))
    record_property("chaos_figures", json.dumps(figures))

    # -- the verdict --
    # A kill aimed at a moment the run had already passed (a busy box) lands on a finished process.
    assert len(run_kills) >= 12 and len(export_kills) >= 3, kills
    assert records(store) == reference  # ids, payloads and lineage, as if never interrupted
    assert len(done_seeds(store)) == N_REQUESTS and not failed_seeds(store)
    assert len(final) == N_REQUESTS  # every request reached the teacher, no other one did
    assert duplicates == sum(k["duplicates"] for k in kills)  # a request went twice only across a kill
    for k in kills:
        assert k["lost"] == 0, k  # no answer kept before a kill was paid for again
        assert k["duplicates"] <= k["in_flight"] <= IN_FLIGHT, k
    assert duplicates <= in_flight_sum, figures
    assert resumed["seeds_done"] == N_REQUESTS and not journal_segments(store)
    assert query(store, "SELECT count(*) FROM cache WHERE status = 'ok'")[0][0] == N_REQUESTS


# -- a full disk -----------------------------------------------------------------------------------------
DISK_SEEDS = 2000


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: a write past `limit` bytes fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _disk_full_then_resume(tmp_path: Path, store: Path, srv, fill: Callable[[], None], free: Callable[[], None],
                           **kw) -> None:  # fmt: skip
    seeds = write_seeds(tmp_path / "seeds.jsonl", DISK_SEEDS)
    ref_store = tmp_path / "ref.duckdb"
    code, _, err = run_to_end(
        write_config(tmp_path / "ref.yaml", url=srv.base_url, store=ref_store, seeds=seeds)
    )
    assert code == 0, err
    cfg = write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds)
    fill()
    before = srv.stats(detail=True)["per_body"]
    code, out, err = run_to_end(cfg, **kw)
    assert code == 3, (code, out, err)  # a store error, not a crash
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert f"cannot write to the store {store}" in line or "cannot write the answer journal" in line, line
    assert "free space and re-run" in line.lower() or "free disk space and re-run" in line.lower(), line
    stopped = json.loads(out)
    assert stopped["status"] == "failed"

    # The store still opens, read-only, and says what happened.
    code, out, err = finish(factory("status", NAME, "--store", store, "--json"))
    assert code == 0, err
    status = json.loads(out)
    assert status["status"] == "failed" and status["seeds_done"] < DISK_SEEDS
    failed = srv.stats(detail=True)["per_body"]
    sent = {b for b, n in failed.items() if n > before.get(b, 0)}
    kept = answered(store, srv.base_url)  # committed, or journaled for the next open to replay
    free()
    code, out, err = run_to_end(cfg)
    assert code == 0, err
    assert records(store) == records(ref_store)
    resumed = json.loads(out)
    assert resumed["seeds_done"] == DISK_SEEDS and not journal_segments(store)
    # No answer kept before the disk filled is paid for again: only those in flight when the run stopped.
    again = {b for b, n in srv.stats(detail=True)["per_body"].items() if b in sent and n > failed[b]}
    assert not again & kept and len(again) <= 64, (len(again & kept), len(again))


def test_disk_full_file_size_limit_then_resume(tmp_path: Path):
    """A file-size limit on the run's process (RLIMIT_FSIZE: writes past it fail with EFBIG) stands in for a
    full disk where mounting a small filesystem is not allowed."""
    with start_subprocess(latency=0.005) as srv:
        _disk_full_then_resume(
            tmp_path,
            tmp_path / "s.duckdb",
            srv,
            lambda: None,
            lambda: None,
            preexec_fn=_limit_file_size(1_000_000),
        )


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if sys.platform != "linux" or shutil.which("mount") is None:
        return False
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def test_disk_full_on_a_real_small_filesystem_then_resume(tmp_path: Path):
    """A real ENOSPC: the store on an 8 MB tmpfs, filled so that the run cannot finish; then space is freed."""
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "8m"):
        pytest.skip("mounting a tmpfs is not allowed here")
    filler = mnt / "filler"

    def fill() -> None:
        from factory.store import Store

        with Store(
            mnt / "s.duckdb"
        ):  # created and migrated first: the disk fills during the run, not at its open
            pass
        filler.write_bytes(b"\0" * (shutil.disk_usage(mnt).free - 1_300_000))

    try:
        with start_subprocess(latency=0.005) as srv:
            _disk_full_then_resume(tmp_path, mnt / "s.duckdb", srv, fill, lambda: filler.unlink())
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


# -- two runs on one store -------------------------------------------------------------------------------
def test_second_run_on_the_same_store_is_refused(tmp_path: Path):
    n = 200
    seeds = write_seeds(tmp_path / "seeds.jsonl", n)
    with start_subprocess(latency=0.3) as srv:  # 200 requests, 8 at a time, 0.3 s each: about 8 s
        store = tmp_path / "s.duckdb"
        cfg = write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds, in_flight=8)
        first = factory("run", cfg, "--json")
        assert wait_until(lambda: srv.stats()["requests"] > 0, first, 60), "the first run sent nothing"
        others = [factory("run", cfg, "--json"), factory("status", "--store", store)]
        second, status = (finish(p, 120) for p in others)
        still_running = first.poll() is None
        code, out, err = finish(first)
    assert still_running, "the first run ended before the second started: nothing was tested"
    code2, _, err2 = second
    assert code2 == 3, err2
    (line,) = error_lines(err2)
    assert f"the store {store} is in use by another process" in line, line
    assert "Traceback" not in err2
    # status reads what the run in progress shows of itself beside the store, and changes nothing
    code3, out3, err3 = status
    assert code3 == 0 and "running (in another process; the store is in use)" in out3, err3
    assert code == 0, err
    assert json.loads(out)["seeds_done"] == n
    got = records(store)
    assert len(got) == n and len({r[0] for r in got}) == n
    assert done_seeds(store) == {f"s{i:05d}" for i in range(n)} and not failed_seeds(store)


# -- a teacher that restarts, fails, truncates or resets -------------------------------------------------
def test_teacher_restarted_mid_run(tmp_path: Path):
    """The server is killed part-way (connections reset, then refused for 2 s) and started again on the
    same port; retries carry the run through."""
    n = 1500
    seeds = write_seeds(tmp_path / "seeds.jsonl", n)
    srv = start_subprocess(latency=0.02)
    port = srv.port
    try:
        store = tmp_path / "s.duckdb"
        cfg = write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds, in_flight=32)
        p = factory("run", cfg, "--json")
        assert wait_until(lambda: srv.stats()["requests"] >= 300, p, 120), "the run did not get going"
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(30)
        srv.stop()
        time.sleep(2.0)
        srv = start_subprocess(latency=0.02, port=port)
        code, out, err = finish(p)
        assert code == 0, err
        after_restart = srv.stats()["requests"]
    finally:
        srv.stop()
    assert json.loads(out)["seeds_done"] == n and after_restart > 0
    assert len(records(store)) == n and done_seeds(store) == {f"s{i:05d}" for i in range(n)}
    assert not failed_seeds(store)


def test_truncated_json_resets_and_500s_are_retried(tmp_path: Path):
    n = 600
    seeds = write_seeds(tmp_path / "seeds.jsonl", n)
    with start_subprocess(latency=0.005, fault_rate=0.3, fault_kinds="truncated,reset,500", seed=3) as srv:
        store = tmp_path / "s.duckdb"
        code, out, err = run_to_end(
            write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds)
        )
        stats = srv.stats()
    assert code == 0, err
    assert {"truncated", "reset", "500"} <= set(stats["faults"])
    assert len(records(store)) == n and not failed_seeds(store)
    code, out, err = finish(factory("status", NAME, "--store", store, "--json"))
    seen = json.loads(out)["failures_by_kind"]
    assert seen.get("bad_body") and seen.get("connection") and seen.get("http_500"), seen


def test_failures_after_the_last_retry_are_recorded_with_reasons_then_resume(tmp_path: Path):
    """Faults that outlast the retries: each seed ends as records or as a failure with its kind and message;
    re-running retries the failed seeds only."""
    n = 400
    seeds = write_seeds(tmp_path / "seeds.jsonl", n)
    # A picked body fails its first 3 attempts; with 1 retry it fails in the first run, succeeds in the second.
    with start_subprocess(
        latency=0.005, fault_rate=0.15, fault_kinds="truncated,reset", fault_repeats=3, seed=5
    ) as srv:
        store = tmp_path / "s.duckdb"
        cfg = write_config(
            tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds, teacher="max_retries: 1"
        )
        code, out, err = run_to_end(cfg)
        assert code == 1, err
        assert "seeds failed" in err and "re-run" in err
        failed = failed_seeds(store)
        done = done_seeds(store)
        assert failed and not (set(failed) & done)
        assert set(failed) | done == {f"s{i:05d}" for i in range(n)}  # every seed accounted for
        for kind, message in failed.values():
            assert kind in ("bad_body", "connection") and message, (kind, message)
        assert {r[4] for r in records(store)} == done

        code, out, err = run_to_end(cfg)
        assert code == 0, err
    assert json.loads(out)["records_added"] == len(failed)
    assert len(records(store)) == n and len(done_seeds(store)) == n


@pytest.mark.slow
def test_thirty_seconds_of_500s_mid_run(tmp_path: Path):
    """The teacher answers 500 to everything for 30 s part-way through; with retries that outlast it
    (max_retries 30, backoff capped at 4 s) the run completes."""
    n = 400
    seeds = write_seeds(tmp_path / "seeds.jsonl", n)
    with start_subprocess(latency=0.01) as srv:
        store = tmp_path / "s.duckdb"
        cfg = write_config(tmp_path / "s.yaml", url=srv.base_url, store=store, seeds=seeds, in_flight=16,
                           teacher="max_retries: 30, options: {backoff_max_s: 4}")  # fmt: skip
        p = factory("run", cfg, "--json")
        assert wait_until(lambda: srv.stats()["requests"] >= 50, p, 120), "the run did not get going"
        t0 = time.monotonic()
        srv.outage(30, "500")
        code, _, err = finish(p, 300)
        elapsed = time.monotonic() - t0
        stats = srv.stats()
    assert code == 0, err
    assert elapsed >= 30 and stats["faults"].get("500", 0) >= 16
    assert len(records(store)) == n and not failed_seeds(store)
    print(
        f"\n30 s outage: run finished {elapsed:.1f} s after it began; {stats['faults']['500']} answers were 500s"
    )
