"""Every shipped example config, run with `factory run` against a real OpenAI-compatible server (vLLM's,
serving the embedded model on 127.0.0.1): the same configs users start from, with the teacher swapped for
the API one and the seed files cut to a few rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml
from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EXAMPLES = ROOT / "recipes" / "examples"
SEED_ROWS = 3

# What each recipe's records must hold (payload keys), from the record schemas in the README.
SCHEMA = {
    "rationales": {"input", "rationale", "answer", "gold", "agrees_with_gold", "label", "vote_share"},
    "program_rationales": {"input", "program", "executed_answer", "gold", "verified"},
    "boundary": {"intended_label", "partner", "alpha", "teacher_label", "relabel_agreed"},
    "commonsense": {"head", "relation", "tail", "sample_index"},
    "relabel": {"text", "label", "votes", "confidence", "escalated", "critique_used"},
    "reasoning": {"input", "reasoning", "answer_text", "final_answer", "gold", "vote_share", "finish_reason"},
    "entities": {"text", "entities", "negatives", "spans", "dropped"},
}


def _demo_configs() -> list[Path]:
    return sorted(EXAMPLES.glob("*_demo.yaml"))


@pytest.mark.parametrize("example", _demo_configs(), ids=lambda p: p.stem)
def test_example_config_runs_on_an_openai_compatible_server(example, vllm_server, tmp_path):
    # The same folder layout as the repository, so the config's relative paths mean what they mean there.
    (tmp_path / "conf" / "examples").mkdir(parents=True)  # not "recipes": -m would import it
    shutil.copytree(ROOT / "data", tmp_path / "data")
    shutil.copytree(ROOT / "recipes" / "templates", tmp_path / "conf" / "templates")  # few-shot files named
    for seeds in (tmp_path / "data" / "seeds").glob("*.jsonl"):
        rows = seeds.read_text(encoding="utf-8").splitlines()
        seeds.write_text("\n".join(rows[:SEED_ROWS]) + "\n", encoding="utf-8")
    cfg = yaml.safe_load(example.read_text(encoding="utf-8"))
    api = {"spec": f"openai:smol@{vllm_server}", "max_in_flight": 16}
    cfg["teacher"] = api
    if "teachers" in cfg:
        cfg["teachers"] = {role: api for role in cfg["teachers"]}
    cfg["store"] = str(tmp_path / "s.duckdb")
    cfg.pop("export", None)
    path = tmp_path / "conf" / "examples" / example.name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")

    out = subprocess.run(
        [sys.executable, "-m", "factory.cli", "run", str(path), "--json"],
        capture_output=True, text=True, timeout=800, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["records_added"] > 0 and summary["requests_sent"] > 0
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    payloads = [json.loads(p) for (p,) in con.execute("SELECT payload FROM records").fetchall()]
    con.close()
    want = SCHEMA[cfg["recipe"]]
    assert any(want <= set(p) for p in payloads), (want, payloads[:2])
