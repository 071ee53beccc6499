"""benchmarks/gpu_check.py stays runnable: its ``--tiny`` mode runs every check's code path on the CPU, with
the packages a GPU image lacks (duckdb, datasets, polars, pydantic, orjson, vllm, trl) refused to the
factory's own modules and to the script, and writes a results file with a figure for each check, which the
benchmarks README's block renders as a table."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

MISSING = ("duckdb", "datasets", "polars", "pydantic", "orjson", "vllm", "trl")

# Refuses MISSING to any import made from the factory's packages or benchmarks/ (third-party packages may
# still import their own dependencies: those ship with them there).
GUARD = """
import importlib.abc, runpy, sys
OURS = tuple(f"{root}/{d}/" for root in [sys.argv[1]] for d in ("factory", "trainers", "benchmarks"))
MISSING = set(sys.argv[2].split(","))

class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] not in MISSING:
            return None
        f = sys._getframe(1)
        while f is not None and f.f_code.co_filename.startswith("<frozen"):
            f = f.f_back
        if f is not None and f.f_code.co_filename.startswith(OURS):
            raise ModuleNotFoundError(f"{f.f_code.co_filename} imports {name}, which the GPU image lacks")
        return None

sys.meta_path.insert(0, Guard())
script = sys.argv[1] + "/benchmarks/gpu_check.py"
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
def test_tiny_mode_runs_every_check_without_the_packages_a_gpu_image_lacks(tmp_path, monkeypatch):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "FACTORY_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-c", GUARD, str(ROOT), ",".join(MISSING), "--tiny", "--out", str(out)]
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    figures = data["figures"]
    assert figures["mode"] == "tiny" and data["versions"]["torch"] != "not installed"
    for name in ("generation", "embeddings", "training"):
        f = figures[name]
        assert (
            f["ours"] > 0 and f["bare"] > 0 and f["ratio"] == pytest.approx(f["ours"] / f["bare"], rel=1e-2)
        )
        assert f["ours_device"] == "cpu" and len(f["ours_s"]) == f["reps"] == 2
    assert figures["generation"]["same_output"] == 1.0  # the teacher generates what bare generate does
    assert figures["embeddings"]["min_cosine_ours_vs_bare"] > 0.999  # the same vectors
    assert figures["training"]["precision"] == "fp32" and figures["training"]["params"] > 0

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _results
    from figures_train import gpu_check

    monkeypatch.setattr(_results, "RESULTS", tmp_path)
    table = gpu_check()
    assert "Not run on a GPU yet" not in table and "tiny mode" in table
    assert all(f"| {name} |" in table for name in ("generation", "embeddings", "training"))
