"""RUN arguments resolve to exactly one run (exact id, exact name, else a unique prefix), and a config's
store is found again by the commands that read a store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_seeds

from factory import api
from factory.teachers.scripted import ScriptedTeacher


def make_run(proj: Path, name: str, k: int = 2, file: str | None = None) -> str:
    write_seeds(proj / "s.jsonl", 2)
    cfg = proj / (file or f"{name}.yaml")
    cfg.write_text(
        f"name: {name}\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: s.jsonl\nstore: st/store.duckdb\nteacher: scripted:x\n"
        f"params: {{k: {k}}}\nfilters:\n  - heuristics: {{min_chars: 1}}\n"
    )
    t = ScriptedTeacher("scripted:x", "x", {"fn": lambda r: f"{name}. The answer is {r.sample_index}."})
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=t))
    assert res.status == "done"
    return str(res.run_id)


@pytest.fixture
def runs(tmp_path):
    """A project folder with a store under st/ holding runs ok, ok-v2, m8a and m8c; a second folder to run
    commands from, where no store is."""
    proj = tmp_path / "proj"
    proj.mkdir()
    ids = {n: make_run(proj, n) for n in ("ok", "ok-v2", "m8a", "m8c")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return proj, elsewhere, ids


def status_id(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["id"])


def test_exact_name_wins_over_a_longer_name_it_begins(runs, cli):
    proj, _, ids = runs
    store = str(proj / "st" / "store.duckdb")
    assert ids["ok-v2"].startswith("ok-")  # "ok-" begins both ids, and "ok" both names
    out = cli("export", "ok", "--store", store, "--out", "x", "--format", "jsonl", cwd=proj)
    assert out.returncode == 0 and f"of {ids['ok']} " in out.stdout, out
    assert status_id(cli("status", "ok", "--store", store, "--json", cwd=proj)) == ids["ok"]
    assert status_id(cli("status", ids["ok-v2"], "--store", store, "--json", cwd=proj)) == ids["ok-v2"]


def test_an_ambiguous_prefix_is_exit_2_listing_the_candidates(runs, cli):
    proj, _, ids = runs
    store = proj / "st" / "store.duckdb"
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    for cmd in (("status",), ("export", "--out", "x"), ("report", "--out", "r.html"), ("filter",)):
        out = cli(cmd[0], "m8", *cmd[1:], "--store", str(store), cwd=proj)
        assert out.returncode == 2, (cmd, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "RUN 'm8' is ambiguous" in lines[0] and "Traceback" not in out.stderr
        assert f"{ids['m8a']} (m8a, updated " in lines[0] and f"{ids['m8c']} (m8c, updated " in lines[0]
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    assert not (proj / "x").exists() and not (proj / "r.html").exists()
    # a prefix of one run's name or id is enough
    assert status_id(cli("status", "m8c", "--store", str(store), "--json", cwd=proj)) == ids["m8c"]
    assert status_id(cli("status", "ok-v", "--store", str(store), "--json", cwd=proj)) == ids["ok-v2"]
    assert status_id(cli("status", ids["m8a"][:5], "--store", str(store), "--json", cwd=proj)) == ids["m8a"]


def test_a_shared_name_and_no_run_pick_the_latest_with_a_note(runs, cli):
    proj, _, ids = runs
    store = str(proj / "st" / "store.duckdb")
    newer = make_run(proj, "ok", k=3, file="ok3.yaml")  # same name, other params: another run
    assert newer != ids["ok"]
    out = cli("status", "ok", "--store", store, "--json", cwd=proj)
    assert status_id(out) == newer
    assert "note: 2 runs are named 'ok': using the latest" in out.stderr and ids["ok"] in out.stderr
    assert status_id(cli("status", ids["ok"], "--store", store, "--json", cwd=proj)) == ids["ok"]
    out = cli("status", "--store", store, "--json", cwd=proj)
    assert status_id(out) == newer and "no RUN given: using the latest of the 5 runs" in out.stderr


def test_config_finds_its_store_and_run(runs, cli):
    proj, elsewhere, ids = runs
    cfg = str(proj / "ok-v2.yaml")
    # without --store or --config the default store is searched, and the message says so
    out = cli("status", "ok-v2", cwd=elsewhere)
    assert (
        out.returncode == 2 and "no store at data/factory.duckdb (the default store: no --store" in out.stderr
    )
    assert "--store PATH or --config CONFIG.yaml" in out.stderr
    assert status_id(cli("status", "--config", cfg, "--json", cwd=elsewhere)) == ids["ok-v2"]
    assert status_id(cli("status", cfg, "--json", cwd=elsewhere)) == ids["ok-v2"]  # RUN given as the config
    assert status_id(cli("status", "m8a", "--config", cfg, "--json", cwd=elsewhere)) == ids["m8a"]  # RUN wins
    out = cli("export", "--config", cfg, "--out", "e", "--format", "jsonl", cwd=elsewhere)
    assert out.returncode == 0 and f"of {ids['ok-v2']} " in out.stdout, out.stderr
    assert (elsewhere / "e" / "train.jsonl").is_file()
    out = cli("export", cfg, "--out", "e2", "--format", "jsonl", cwd=elsewhere)
    assert out.returncode == 0 and f"of {ids['ok-v2']} " in out.stdout, out.stderr
    out = cli("filter", "--config", cfg, "--json", cwd=elsewhere)
    assert out.returncode == 0 and json.loads(out.stdout)["run_id"] == ids["ok-v2"], out.stderr
    out = cli("report", "--config", cfg, "--out", "r.html", "--map-points", "0", cwd=elsewhere)
    assert out.returncode == 0 and ids["ok-v2"] in out.stdout and (elsewhere / "r.html").is_file()
    out = cli("status", "zzz", "--config", cfg, cwd=elsewhere)
    store = proj / "st" / "store.duckdb"
    assert out.returncode == 2 and f"no run 'zzz' in {store}" in out.stderr and "known runs: " in out.stderr
    assert "--store PATH or --config CONFIG.yaml" in out.stderr


def test_view_takes_the_config(runs, cli):
    proj, elsewhere, ids = runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "factory.cli", "view", "--config", str(proj / "m8c.yaml"), "--port", "0"],
        cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert f"serving {proj / 'st' / 'store.duckdb'} read-only at http://127.0.0.1:" in line
    assert f"#run={ids['m8c']}" in line
    out = cli("view", "--config", str(proj / "m8c.yaml"), "--store", "nope.duckdb", cwd=elsewhere)
    assert out.returncode == 2 and "--store: no store at nope.duckdb; check the path" in out.stderr
    gone = proj / "gone.yaml"
    gone.write_text((proj / "m8c.yaml").read_text().replace("st/store.duckdb", "st/other.duckdb"))
    out = cli("status", "--config", str(gone), cwd=elsewhere)
    assert (
        out.returncode == 2 and f"--config {gone}: no store at {proj / 'st' / 'other.duckdb'}" in out.stderr
    )
