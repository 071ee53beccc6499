"""Seeds in a config from the Hugging Face ecosystem: a save_to_disk folder, a folder of Parquet shards, a
dataset id that must already be in the local cache."""

from __future__ import annotations

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_config

ROWS = [{"id": f"q{i}", "text": f"question {i}"} for i in range(6)]


def _config(tmp_path, seeds: str):
    return write_config(
        tmp_path,
        f"name: hfseeds\nrecipe: prompt\nseeds: '{seeds}'\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: {spec: 'scripted:t', options: {default: 'fine'}}\n",
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
