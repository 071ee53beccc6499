"""Seeds in a config from the Hugging Face ecosystem: a save_to_disk folder, a folder of Parquet shards, a
dataset id that must already be in the local cache."""

from __future__ import annotations

import json
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_config

ROWS = [{"id": f"q{i}", "text": f"question {i}"} for i in range(6)]


def _config(tmp_path, seeds: str, name: str = "cfg.yaml"):
    return write_config(
        tmp_path,
        f"name: hfseeds\nrecipe: prompt\nseeds: '{seeds}'\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: {spec: 'scripted:t', options: {default: 'fine'}}\n",
        name,
    )


def test_folders_of_a_dataset_are_seeds_and_the_same_rows_the_same_run(tmp_path, cli):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "shards" / "data").mkdir(parents=True)
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table.slice(0, 3), tmp_path / "shards" / "data" / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(3), tmp_path / "shards" / "data" / "train-00001-of-00002.parquet")
    ids = set()
    for seeds in ("saved", "shards"):
        out = cli("run", str(_config(tmp_path, seeds)), "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        ids.add(out.stdout)
    from factory.api import prepare

    assert prepare(_config(tmp_path, "saved")).run_id == prepare(_config(tmp_path, "shards")).run_id
    assert len(list((tmp_path / "s.duckdb.seeds").glob("*.parquet"))) == 1


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("hf:no-such-org/no-such-dataset", "is not in the local Hugging Face cache .*Nothing is downloaded"),
        ("hf:", "write hf:DATASET_ID"),
        ("empty_folder", "neither a dataset saved with save_to_disk .* nor a folder of .parquet shards"),
    ],
)
def test_bad_sources_are_one_message(tmp_path, cli, seeds, message):
    import re

    (tmp_path / "empty_folder").mkdir()
    out = cli("run", str(_config(tmp_path, seeds)), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.search(message, out.stderr), out.stderr
    assert not (tmp_path / "s.duckdb").exists()


def _hub_cache(home, repo: str, splits: dict[str, list[dict]]) -> str:
    """A dataset repository's Parquet files in a hub cache under ``home`` as huggingface_hub lays it out:
    blobs named by their sha256, snapshots/REV/data/SPLIT-00000-of-00001.parquet linking to them, refs/main
    naming REV."""
    import hashlib
    import os

    root = home / "hub" / f"datasets--{repo.replace('/', '--')}"
    rev = hashlib.sha1(repo.encode()).hexdigest()
    for split, rows in splits.items():
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        data = sink.getvalue().to_pybytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / rev / "data" / f"{split}-00000-of-00001.parquet"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(rev)
    return rev


def test_hf_ids_resolve_from_a_local_hub_cache_offline(tmp_path):
    """hf:ID and hf:ID:SPLIT read a repository's files from the hub cache (`factory run` in a process whose
    HF_HOME is a folder built here, offline); a split it lacks is one message naming the ones it has."""
    import subprocess
    import sys

    home = tmp_path / "hf"
    held_out = [{"id": "t0", "text": "a held-out question"}]
    _hub_cache(home, "acme/questions", {"train": ROWS, "test": held_out})
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
           "HF_DATASETS_CACHE": str(home / "datasets"), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    configs = [str(_config(tmp_path, s, name=f"c{i}.yaml"))
               for i, s in enumerate(("hf:acme/questions", "hf:acme/questions:test"))]  # fmt: skip
    bad = str(_config(tmp_path, "hf:acme/questions:validation", name="bad.yaml"))
    script = """
import contextlib, io, json, sys
from factory.cli import main
calls = []
for cfg in sys.argv[1:]:  # one process (one import of datasets) for the three commands
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["run", cfg, "--json"])
    calls.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(calls))
"""
    done = subprocess.run([sys.executable, "-c", script, *configs, bad], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    first, second, third = json.loads(done.stdout.strip().splitlines()[-1])
    assert first["rc"] == second["rc"] == 0, (first["err"][-1000:], second["err"][-1000:])
    runs = [json.loads(c["out"]) for c in (first, second)]
    assert [r["seeds_done"] for r in runs] == [len(ROWS), 1] and runs[0]["run_id"] != runs[1]["run_id"]
    files = {repr(pq.read_table(p).to_pylist()) for p in (tmp_path / "s.duckdb.seeds").glob("*.parquet")}
    assert files == {repr(ROWS), repr(held_out)}  # each split's rows, written once beside the store
    assert third["rc"] == 2 and "Traceback" not in third["err"], third["err"][-2000:]
    assert "'acme/questions' is in the local Hugging Face cache" in third["err"] and "'test'" in third["err"]
