"""Filter passes on a real store: the ledger, the funnel, re-thresholding from stored scores, `why`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys

import duckdb
import orjson
import pytest
from conftest import write_config

from factory import api
from factory.errors import ConfigError
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher


def _gold(seeds_file):
    return {
        (r := orjson.loads(line))["question"]: r["answer"] for line in seeds_file.read_text().splitlines()
    }


def _teacher(seeds_file):
    gold = _gold(seeds_file)

    def answer(req):
        prompt = req.messages[-1]["content"]
        a = next(
            a
            for q, a in gold.items()
            if prompt.rstrip().endswith(q) or f"Question: {q}" in prompt.split("\n\n")[-1]
        )
        if req.sample_index == 1:
            return f"Off by one somewhere. The answer is {float(a) + 1:g}."
        return f"Work it out: the sum is right. The answer is {a}."  # samples 0 and 2 say the same

    return ScriptedTeacher("scripted:x", "x", {"fn": answer})


FILTERS = "filters:\n  - heuristics: {min_chars: 10}\n  - exact_dedup\n  - agreement\n"


def _cfg(tmp_path, seeds_file, name="cur", filters=FILTERS):
    return write_config(
        tmp_path,
        f"name: {name}\nrecipe: rationales\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        f"teacher: scripted:x\nparams: {{k: 3}}\n{filters}",
        name=f"{name}.yaml",
    )


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, timeout=120,
                          **kw)  # fmt: skip


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_applies_filters_and_status_shows_the_funnel(tmp_path, seeds_file):
    res = asyncio.run(api.run_async(api.prepare(_cfg(tmp_path, seeds_file)), teacher=_teacher(seeds_file)))
    assert res.status == "done" and res.curation is not None
    f = res.curation.funnel
    assert (f["generated"], f["parsed"], f["curated"]) == (24, 24, 8)
    steps = {s["filter"]: s for s in f["filters"]}
    assert [s["filter"] for s in f["filters"]] == ["heuristics", "exact_dedup", "agreement"]
    assert (steps["heuristics"]["in"], steps["heuristics"]["kept"]) == (24, 24)
    assert (steps["exact_dedup"]["in"], steps["exact_dedup"]["kept"]) == (24, 16)
    assert steps["exact_dedup"]["top_reasons"] == [{"reason": "exact duplicate", "records": 8}]
    assert (steps["agreement"]["in"], steps["agreement"]["kept"]) == (16, 8)
    out = _cli("status", "cur", "--store", str(tmp_path / "s.duckdb"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["funnel"] == f
    text = _cli("status", "cur", "--store", str(tmp_path / "s.duckdb"))
    assert "exact_dedup 16/24 (exact duplicate ×8)" in text.stdout and "curated 8" in text.stdout
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        assert st.curated_table(res.run_id).num_rows == 8
    # the same run again: nothing generated, the same pass is current, no new verdict rows
    before = _verdict_rows(tmp_path)
    again = asyncio.run(api.run_async(api.prepare(_cfg(tmp_path, seeds_file)), teacher=_teacher(seeds_file)))
    assert again.curation.funnel == f and _verdict_rows(tmp_path) == before


def _verdict_rows(tmp_path):
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM verdicts").fetchone()[0]
    finally:
        con.close()


def test_new_thresholds_come_from_stored_scores(tmp_path, seeds_file):
    store = str(tmp_path / "s.duckdb")
    asyncio.run(api.run_async(api.prepare(_cfg(tmp_path, seeds_file)), teacher=_teacher(seeds_file)))
    strict = _cli("filter", "cur", "--store", store, "--set", "heuristics.min_chars=1000", "--json")
    assert strict.returncode == 0, strict.stderr
    s = json.loads(strict.stdout)
    assert s["scored"] == {"heuristics": 0, "exact_dedup": 0, "agreement": 0}  # nothing measured again
    assert s["funnel"]["curated"] == 0 and s["funnel"]["filters"][0]["top_reasons"][0]["reason"] == (
        "shorter than 1000 chars"
    )
    loose = _cli("filter", "cur", "--store", store, "--set", "agreement.require_gold=false", "--json")
    assert json.loads(loose.stdout)["funnel"]["curated"] == 16  # wrong answers back, duplicates still out
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        passes = st.funnel(st.resolve_run("cur"))["pass"]
        assert st.count_cache() == 24  # no request was added: no teacher was called
    assert passes == 3


def test_why_names_the_filter_and_the_duplicate(tmp_path, seeds_file):
    store = str(tmp_path / "s.duckdb")
    res = asyncio.run(api.run_async(api.prepare(_cfg(tmp_path, seeds_file)), teacher=_teacher(seeds_file)))
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        rows = st.curated_table(res.run_id, include_rejected=True).to_pylist()
    dup = next(r for r in rows if r["sample_index"] == 2)
    out = _cli("why", dup["id"], "--store", store, "--json")
    assert out.returncode == 0, out.stderr
    why = json.loads(out.stdout)
    assert not why["curated"]
    drop = next(v for v in why["verdicts"] if not v["keep"])
    assert drop["filter"] == "exact_dedup" and json.loads(drop["detail"])["duplicate_of"] == next(
        r["id"] for r in rows if r["seed_id"] == dup["seed_id"] and r["sample_index"] == 0
    )
    missing = _cli("why", "nope", "--store", store)
    assert missing.returncode == 2 and "no record" in missing.stderr


def test_exact_dedup_across_runs(tmp_path, seeds_file):
    asyncio.run(api.run_async(api.prepare(_cfg(tmp_path, seeds_file)), teacher=_teacher(seeds_file)))
    second = asyncio.run(
        api.run_async(api.prepare(_cfg(tmp_path, seeds_file, name="later")), teacher=_teacher(seeds_file))
    )
    f = second.curation.funnel
    assert f["curated"] == 0 and f["filters"][1]["kept"] == 0  # every text is in the earlier run


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ("filters:\n  - exact_dedupe\n", "unknown filter 'exact_dedupe'.*Did you mean 'exact_dedup'"),
        ("filters:\n  - heuristics: {min_char: 3}\n", "unknown param 'min_char'"),
        ("filters:\n  - heuristics: {min_chars: -1}\n", r"heuristics\.min_chars"),
        ("filters:\n  - agreement\n  - agreement\n", "listed twice"),
        ("filters:\n  - [heuristics]\n", "write a filter as"),
    ],
)
def test_bad_filter_lists_are_config_errors(tmp_path, seeds_file, filters, message):
    with pytest.raises(ConfigError, match=message):
        api.prepare(_cfg(tmp_path, seeds_file, filters=filters))


def test_bad_set_flags_exit_2_and_change_nothing(tmp_path, seeds_file):
    store = tmp_path / "s.duckdb"
    asyncio.run(api.run_async(api.prepare(_cfg(tmp_path, seeds_file)), teacher=_teacher(seeds_file)))
    before = _digest(store)
    for flag, msg in [("heuristics.min_chars", "FILTER.PARAM=VALUE"), ("critic.min_score=8", "not in this run"),
                      ("heuristics.min_chars=-5", "heuristics.min_chars")]:  # fmt: skip
        out = _cli("filter", "cur", "--store", str(store), "--set", flag)
        assert out.returncode == 2 and msg in out.stderr, (flag, out.stderr)
    assert _digest(store) == before


def test_a_store_from_before_filter_passes_is_migrated(tmp_path):
    from factory.store.migrations import m001_initial

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT now())")
    m001_initial(con)
    con.execute("INSERT INTO _migrations (name) VALUES ('m001_initial')")
    con.execute(
        "INSERT INTO verdicts (record_id, run_id, filter, filter_version, keep) VALUES ('r', 'x', 'p', 'v', false)"
    )
    con.close()
    with Store(path, read_only=True) as st:  # reading an old store brings it up to date first
        assert st.parse_rejected("x") == {"r"}
        assert st.funnel("x")["pass"] is None


def test_status_reports_the_curated_sets_diversity(tmp_path, seeds_file):
    asyncio.run(api.run_async(api.prepare(_cfg(tmp_path, seeds_file)), teacher=_teacher(seeds_file)))
    out = _cli("status", "cur", "--store", str(tmp_path / "s.duckdb"), "--json", "--diversity")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)["diversity"]
    assert d["records"] == 8 and d["labels"] == {"positive": 8}
    assert 0 < d["distinct_1"] <= 1 and 0 < d["mean_pairwise_cosine"] <= 1
