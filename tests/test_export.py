import asyncio
import json
import subprocess
import sys

from conftest import write_config

from factory import api
from factory.export import split_of
from factory.teachers.scripted import ScriptedTeacher


def _run(tmp_path, seeds_file, extra=""):
    cfg = write_config(
        tmp_path,
        f"name: ex\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\nteacher: scripted:x\n"
        f"params: {{k: 2}}\nlicense: cc-by-4.0\n{extra}",
    )
    t = ScriptedTeacher(
        "scripted:x", "x", {"fn": lambda r: "no" if r.sample_index else "Steps. The answer is 28."}
    )
    return asyncio.run(api.run_async(api.prepare(cfg), teacher=t))


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_hf_folder_loads_with_datasets(tmp_path, seeds_file):
    import datasets

    res = _run(tmp_path, seeds_file, "export: {splits: {train: 0.75, test: 0.25}}\n")
    out = _cli(
        "export",
        res.run_id,
        "--store",
        str(tmp_path / "s.duckdb"),
        "--out",
        str(tmp_path / "hf"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    ds = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "hf-cache"))
    total = sum(len(ds[s]) for s in ds)
    assert total == 8  # 16 records, the 8 without a parsed answer are not curated
    assert set(ds) <= {"train", "test"}
    row = ds[next(iter(ds))][0]
    assert row["answer"] == "28" and row["label"] in ("positive", "negative") and len(row["record_id"]) == 24
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "rationales.parse" in card and "| records curated | 8 |" in card


def test_jsonl_with_rejected_and_slim(tmp_path, seeds_file):
    res = _run(tmp_path, seeds_file)
    store = str(tmp_path / "s.duckdb")
    out = _cli("export", res.run_id, "--store", store, "--out", str(tmp_path / "j"), "--format", "jsonl",
               "--include-rejected", "--slim", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in (tmp_path / "j" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    dropped = [r for r in rows if r["dropped_by"]]
    assert len(dropped) == 8 and "no answer found" in dropped[0]["dropped_by"]
    assert "record_id" not in rows[0]


def test_status_json_has_the_counters(tmp_path, seeds_file):
    res = _run(tmp_path, seeds_file)
    out = _cli("status", "--store", str(tmp_path / "s.duckdb"), "--json", cwd=tmp_path)
    s = json.loads(out.stdout)
    assert s["id"] == res.run_id and s["records_total"] == 16 and s["requests_sent"] == 16
    assert s["cache_hits"] == 0 and s["failures_by_kind"] == {}
    assert s["dropped"] == [
        {"filter": "rationales.parse", "reason": "no answer found in the completion", "records": 8}
    ]


def test_split_assignment_is_deterministic():
    splits = {"train": 0.8, "validation": 0.1, "test": 0.1}
    got = [split_of(f"id{i}", splits) for i in range(2000)]
    assert got == [split_of(f"id{i}", splits) for i in range(2000)]
    assert 1450 < got.count("train") < 1750
