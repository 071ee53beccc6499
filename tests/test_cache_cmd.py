"""`factory cache stats | ls | forget` through the real CLI, on stores made by real runs against the fault
server (counted requests) or the scripted teacher (exact rejections)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_process, write_seeds

from factory import api
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from factory.testing.fault_server import FaultConfig, serve_in_thread

KEY_ENV = "FACTORY_CACHE_TEST_KEY"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): sha(p) for p in sorted(d.rglob("*")) if p.is_file()}


def config(tmp: Path, name: str, model: str, url: str, seeds: int) -> Path:
    s = write_seeds(tmp / f"{name}.jsonl", seeds)
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {s.name}\nstore: st/store.duckdb\nparams: {{k: 3}}\n"
        f"teacher: {{spec: 'openai:{model}@{url}', api_key_env: {KEY_ENV}}}\nlicense: cc-by-4.0\n"
        "filters: [exact_dedup]\n"
    )
    return cfg


def run(cfg: Path) -> str:
    res = asyncio.run(api.run_async(api.prepare(cfg)))
    assert res.status == "done", res
    return str(res.run_id)


@pytest.fixture
def two_teachers(tmp_path, monkeypatch):
    """Run `fa` (teacher m1, 8 seeds × 3 = 24 requests) and `fb` (teacher m2, 4 seeds × 3 = 12) against one
    fault server, which stays up so that re-runs reach the same teacher identity."""
    monkeypatch.setenv(KEY_ENV, "sk-test")
    monkeypatch.chdir(tmp_path)
    with serve_in_thread(FaultConfig(latency=0.0)) as srv:
        fa = run(config(tmp_path, "fa", "m1", srv.base_url, 8))
        fb = run(config(tmp_path, "fb", "m2", srv.base_url, 4))
        assert srv.stats()["requests"] == 36
        yield tmp_path, srv, fa, fb


def test_stats_and_ls_count_the_rows(two_teachers, cli):
    tmp, _srv, fa, fb = two_teachers
    store = tmp / "st" / "store.duckdb"
    out = cli("cache", "stats", "--config", "fa.yaml", "--json", cwd=tmp)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["rows"] == 36 and s["failed"] == 0 and s["file_bytes"] == store.stat().st_size
    by_teacher = {g["name"]: g["rows"] for g in s["by_teacher"]}
    assert sorted(by_teacher.values()) == [12, 24] and len(by_teacher) == 2
    assert {g["name"]: g["rows"] for g in s["by_run"]} == {fa: 24, fb: 12}
    assert [(g["name"], g["rows"]) for g in s["by_age"]] == [("< 1 day", 36)]
    assert {g["name"]: g["rows"] for g in s["by_status"]} == {"ok": 36}
    with Store(store, read_only=True) as st:
        exact = st._scalar("SELECT sum(strlen(key) + strlen(request) + coalesce(strlen(text), 0)) FROM cache")
    assert s["bytes"] == exact
    human = cli("cache", "stats", "--store", str(store), cwd=tmp)
    assert human.returncode == 0 and "36 rows" in human.stdout and "by teacher:" in human.stdout

    out = cli("cache", "ls", "--store", str(store), "--run", "fb", "--limit", "0", "--json", cwd=tmp)
    rows = json.loads(out.stdout)
    assert len(rows) == 12 and {r["run"] for r in rows} == {fb} and {r["status"] for r in rows} == {"ok"}
    m2 = rows[0]["teacher"]
    limited = json.loads(cli("cache", "ls", "--config", "fa.yaml", "--limit", "5", "--json", cwd=tmp).stdout)
    assert len(limited) == 5
    only_m2 = json.loads(cli("cache", "ls", "--config", "fa.yaml", "--teacher", m2, "--limit", "0", "--json",
                             cwd=tmp).stdout)  # fmt: skip
    assert {r["key"] for r in only_m2} == {r["key"] for r in rows}
    assert json.loads(cli("cache", "ls", "--config", "fa.yaml", "--failed", "--json", cwd=tmp).stdout) == []


def test_forget_by_teacher_dry_run_then_yes_and_a_rerun_resends_exactly_those(two_teachers, cli):
    tmp, srv, _fa, fb = two_teachers
    store = tmp / "st" / "store.duckdb"
    assert cli("export", "fb", "--config", "fb.yaml", "--out", "before", cwd=tmp).returncode == 0
    with Store(store, read_only=True) as st:
        m2 = next(r["teacher"] for r in st.runs() if r["id"] == fb)
        records = st._rows("SELECT * FROM records ORDER BY id")
        verdicts = st._rows("SELECT * FROM verdicts ORDER BY record_id, filter, pass_id")
        facts = (st.teacher_usage(fb), st.request_sampling(fb), st.rejections(fb))
    assert facts[0][0]["requests"] == 12 and facts[1][0]["requests"] == 12
    before = sha(store)

    dry = cli("cache", "forget", "--config", "fb.yaml", "--teacher", m2, cwd=tmp)  # stdin is not a terminal
    assert dry.returncode == 0, dry.stderr
    assert "12 cache rows" in dry.stdout and "dry run: nothing changed; add --yes" in dry.stdout
    assert (
        f"records of these runs were made from them (they keep their text; a new run asks again): {fb} (12)"
        in (dry.stdout)
    )
    assert sha(store) == before  # the dry run wrote nothing
    no = cli_process(
        "cache", "forget", "--config", "fb.yaml", "--teacher", m2, "--json", cwd=tmp, stdin="y\n"
    )
    assert json.loads(no.stdout)["dry_run"] is True and sha(store) == before  # --json never asks

    store.with_name(store.name + ".compact-4194304").write_bytes(b"left by a killed compaction")
    out = cli("cache", "forget", "--config", "fb.yaml", "--teacher", m2, "--yes", "--json", cwd=tmp)
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert done["dry_run"] is False and done["rows"] == 12
    # compacted: rewritten with the live data only (the later runs below write to the rewritten file)
    assert done["compacted"] is True and done["file_bytes_after"] < done["file_bytes_before"]
    assert done["file_bytes_after"] == store.stat().st_size and not list(store.parent.glob("*.compact-*"))
    assert not store.with_name(store.name + ".wal").exists()  # nothing of the old file is left to replay
    with Store(store, read_only=True) as st:
        assert st.count_cache() == 24 and st.count_cache(m2) == 0
        assert st._rows("SELECT * FROM records ORDER BY id") == records
        assert st._rows("SELECT * FROM verdicts ORDER BY record_id, filter, pass_id") == verdicts
        assert (st.teacher_usage(fb), st.request_sampling(fb), st.rejections(fb)) == facts  # report, card

    # the finished run exports the same files, card included (its tokens and sampling still count)
    assert cli("export", "fb", "--config", "fb.yaml", "--out", "after", cwd=tmp).returncode == 0
    assert tree(tmp / "after") == tree(tmp / "before") and tree(tmp / "before")
    report = cli("report", "--config", "fb.yaml", "--out", "r.html", "--map-points", "0", cwd=tmp)
    assert report.returncode == 0, report.stderr

    # the same requests under new run names: m2's 12 are asked again, m1's come from the cache
    sent = srv.stats()["requests"]
    for name, model, seeds in (("fb2", "m2", 4), ("fa2", "m1", 8)):
        run(config(tmp, name, model, srv.base_url, seeds))
    assert srv.stats()["requests"] - sent == 12
    with Store(store, read_only=True) as st:  # answered again: counted once, from the cache
        assert st.teacher_usage(fb)[0]["requests"] == 12 and st.count_cache(m2) == 12


def test_forget_by_run_removes_exactly_its_rows(two_teachers, cli):
    tmp, _srv, fa, fb = two_teachers
    store = tmp / "st" / "store.duckdb"
    with Store(store, read_only=True) as st:
        fb_keys = {r[0] for r in st._rows("SELECT key FROM cache WHERE run_id = ?", [fb])}
    out = cli("cache", "forget", "--store", str(store), "--run", fa, "--yes", "--no-compact", cwd=tmp)
    assert out.returncode == 0, out.stderr
    assert (
        "forgot 24 cache rows" in out.stdout and "records, verdicts and exports are unchanged" in out.stdout
    )
    assert "not compacted (--no-compact)" in out.stdout
    from factory.card import LABEL_FIELDS
    from factory.store.browse import Browser

    with Store(store, read_only=True) as st:
        assert {r[0] for r in st._rows("SELECT key FROM cache")} == fb_keys
        assert st._scalar("SELECT count(*) FROM records WHERE run_id = ?", [fa]) == 24
        # the viewer still opens the run's records, and says their answers were forgotten
        rid, text = st._rows("SELECT id, text FROM records WHERE run_id = ? LIMIT 1", [fa])[0]
        rec = Browser(st, LABEL_FIELDS).record(fa, rid)
        assert rec["text"] == text and rec["answers"]
        assert all(a["missing"] and a["forgotten"] for a in rec["answers"])
    keys = sorted(r[0] for r in Store(store, read_only=True).con.execute("SELECT key FROM cache").fetchall())
    out = cli("cache", "compact", "--store", str(store), "--json", cwd=tmp)
    sizes = json.loads(out.stdout)
    assert sizes["file_bytes_after"] < sizes["file_bytes_before"]
    with Store(store, read_only=True) as st:
        assert sorted(r[0] for r in st._rows("SELECT key FROM cache")) == keys
        assert st._scalar("SELECT count(*) FROM cache_forgotten") == 24
    again = cli("cache", "forget", "--store", str(store), "--run", fa, "--yes", cwd=tmp)
    assert again.returncode == 0 and "0 cache rows" in again.stdout and "nothing changed" in again.stdout


def test_forget_failed_only_and_the_rerun_asks_exactly_the_failed_requests(tmp_path, seeds_file, cli):
    cfg = tmp_path / "rej.yaml"
    cfg.write_text(
        f"name: rej\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: scripted:x\nparams: {k: 3}\n"
    )

    def teacher(reject: bool) -> ScriptedTeacher:
        return ScriptedTeacher("scripted:x", "x", {"fn": lambda r: None if reject and "Maya" in r.messages[-1][
            "content"] else "ok. The answer is 1."})  # fmt: skip

    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher(True)))
    assert res.status == "incomplete"
    # the cached rejections are served again: nothing is asked
    t = teacher(False)
    assert asyncio.run(api.run_async(api.prepare(cfg), teacher=t)).status == "incomplete" and t.calls == []
    ls = json.loads(cli("cache", "ls", "--config", str(cfg), "--failed", "--json", cwd=tmp_path).stdout)
    assert len(ls) == 3 and {r["status"] for r in ls} == {"rejected"}
    by_error = cli("cache", "ls", "--config", str(cfg), "--error", "SCRIPTED REJ", "--json", cwd=tmp_path)
    assert {r["key"] for r in json.loads(by_error.stdout)} == {r["key"] for r in ls}
    none = cli("cache", "ls", "--config", str(cfg), "--error", "401", "--json", cwd=tmp_path)
    assert none.returncode == 0 and json.loads(none.stdout) == []
    out = cli("cache", "forget", "--config", str(cfg), "--failed-only", "--yes", cwd=tmp_path)
    assert out.returncode == 0 and "forgot 3 cache rows" in out.stdout, out
    t = teacher(False)
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=t))
    assert res.status == "done" and len(t.calls) == 3
    assert all("Maya" in r.messages[-1]["content"] for r in t.calls)


def test_forget_refuses_without_a_selector_or_with_an_unknown_one(two_teachers, cli):
    tmp, _srv, _fa, _fb = two_teachers
    store = tmp / "st" / "store.duckdb"
    before = sha(store)
    for args, expected in (
        ((), "give at least one of --run, --teacher"),
        (("--teacher", "openai:nope"), "--teacher 'openai:nope': no cache row has it"),
        (("--run", "zzz"), "no run 'zzz'"),
        (("--older-than", "soon"), "--older-than 'soon'"),
        (("--older-than", "1e400d"), "--older-than '1e400d': at most 100 years"),
    ):
        out = cli("cache", "forget", "--store", str(store), *args, "--yes", cwd=tmp)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in out.stderr
    assert sha(store) == before
    old = cli("cache", "forget", "--store", str(store), "--older-than", "30d", "--yes", cwd=tmp)
    assert old.returncode == 0 and "0 cache rows" in old.stdout  # every row is minutes old


def test_forget_asks_on_a_terminal(tmp_path, seeds_file):
    """With stdin a terminal and no --yes, forget asks: anything but y changes nothing."""
    import os

    cfg = tmp_path / "tty.yaml"
    cfg.write_text(
        f"name: tty\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: scripted:x\nparams: {k: 1}\n"
    )
    t = ScriptedTeacher("scripted:x", "x", {"default": "x. The answer is 1."})
    asyncio.run(api.run_async(api.prepare(cfg), teacher=t))
    store = tmp_path / "s.duckdb"

    def answer(text: str) -> subprocess.CompletedProcess[str]:
        main, side = os.openpty()
        try:
            os.write(main, text.encode())
            return subprocess.run(
                [sys.executable, "-m", "factory.cli", "cache", "forget", "--config", str(cfg), "--run", "tty"],
                stdin=side, capture_output=True, text=True, cwd=tmp_path, timeout=120,
            )  # fmt: skip
        finally:
            os.close(main)
            os.close(side)

    before = sha(store)
    out = answer("n\n")
    assert out.returncode == 0 and "forget these 8 cache rows? [y/N]" in out.stderr
    assert "dry run: nothing changed" in out.stdout and sha(store) == before
    out = answer("y\n")
    assert out.returncode == 0 and "forgot 8 cache rows" in out.stdout, out
    with Store(store, read_only=True) as st:
        assert st.count_cache() == 0 and st._scalar("SELECT count(*) FROM records") == 8


def test_a_compaction_that_fails_leaves_the_store_as_it_was(tmp_path, seeds_file, monkeypatch):
    import errno
    import os

    from factory.errors import StoreError
    from factory.store import compact as compact_mod

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: c\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: scripted:x\nparams: {k: 1}\n"
    )
    asyncio.run(
        api.run_async(
            api.prepare(cfg), teacher=ScriptedTeacher("scripted:x", "x", {"default": "a. The answer is 1."})
        )
    )
    store = tmp_path / "s.duckdb"
    before = sha(store)

    def full(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(compact_mod.os, "replace", full)
    with pytest.raises(StoreError, match=r"No space left on device.*The store is as it was"):
        compact_mod.compact(Store(store))
    assert sha(store) == before and not [n for n in os.listdir(tmp_path) if ".compact-" in n]
    with Store(store, read_only=True) as st:
        assert st.count_cache() == 8
