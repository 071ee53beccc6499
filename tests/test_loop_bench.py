"""benchmarks/loop.py's own parts: the round configs it writes are valid run configs (a focused round names
its eval and round), and the training folder it combines holds every round's train rows and round one's
pool and test splits, readable as one step_by_step export."""

import importlib.util
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import ROOT

from factory.config import load_config
from trainers.data import load_export

sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("bench_loop", ROOT / "benchmarks" / "loop.py")
assert _spec is not None and _spec.loader is not None
loop = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loop)


def test_round_configs_are_run_configs(tmp_path):
    one = load_config(loop.round_config(tmp_path, 1, None, 5))
    assert one.focus is None and one.export.splits == loop.SPLITS and one.export.shape == "step_by_step"
    assert one.recipe == "rationales" and (tmp_path / "round1.yaml").is_file()
    (tmp_path / "pool.jsonl").write_text('{"seed_id": "a", "correct": false}\n')
    two = load_config(loop.round_config(tmp_path, 2, tmp_path / "pool.jsonl", 5))
    assert two.focus is not None and two.focus.round == 2 and two.focus.failed_samples == 5
    assert two.focus.from_eval == str(tmp_path / "pool.jsonl") and two.export.splits == {"train": 1.0}
    assert two.name != one.name and two.seeds == one.seeds


def _export(folder, splits, focus=None):
    for name, n in splits.items():
        rows = {"input": [f"{name} q{i}" for i in range(n)], "label": ["1"] * n, "rationale": ["r"] * n,
                "seed_id": [f"{name}-{i}" for i in range(n)]}  # fmt: skip
        if focus:
            rows.update(focus_round=[focus] * n, focus_eval=["pool.jsonl"] * n)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(rows), folder / "data" / f"{name}-00000-of-00001.parquet")
    return folder


def test_combine_stacks_the_train_rows_of_every_round(tmp_path):
    one = _export(tmp_path / "e1", {"train": 4, "validation": 3, "test": 2})
    two = _export(tmp_path / "e2", {"train": 5}, focus=2)
    assert loop.combine([one, two], tmp_path / "data") == {"train": 9, "validation": 3, "test": 2}
    export = load_export(tmp_path / "data")
    assert export.shape == "step_by_step" and set(export.splits) == {"train", "validation", "test"}
    train = export.splits["train"]
    assert sorted(x for x in train["focus_round"] if x is not None) == [2] * 5
    assert train["focus_round"].count(None) == 4 and len(export.splits["validation"]) == 3
