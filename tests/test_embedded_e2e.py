"""The demo path for real: the rationales recipe on the embedded teacher (vLLM on CPU when installed),
exported to an HF folder; a second run sends nothing to the teacher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import SEEDS

pytestmark = pytest.mark.slow


def _cli(*args, cwd, timeout=900):
    return subprocess.run([sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)  # fmt: skip


def test_rationales_on_embedded_teacher_end_to_end(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(SEEDS.read_text().splitlines()[:4]) + "\n")
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(
        "name: e2e\nrecipe: rationales\nseeds: seeds.jsonl\nstore: s.duckdb\nteacher: embedded\n"
        "params: {k: 2, max_tokens: 64, temperature: 0.7}\nlicense: cc-by-4.0\n"
        "curation: {recipe_filters: false}\n"  # the tiny teacher is mostly wrong: keep every parsed sample
    )
    first = _cli("run", str(cfg), "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    s1 = json.loads(first.stdout.strip().splitlines()[-1])
    assert s1["status"] == "done" and s1["records_added"] == 8 and s1["requests_sent"] == 8
    assert s1["completion_tokens"] > 0
    again = _cli("run", str(cfg), "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    s2 = json.loads(again.stdout.strip().splitlines()[-1])
    assert s2["requests_sent"] == 0 and s2["records_added"] == 0
    out = _cli("export", "e2e", "--store", "s.duckdb", "--out", "hf", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import datasets

    ds = datasets.load_dataset(str(tmp_path / "hf"), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert 1 <= len(ds) <= 8
    assert all(r["teacher"].startswith("embedded") and r["rationale"] for r in ds)
