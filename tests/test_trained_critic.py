"""The trained commonsense critic: fitted on our labeled triples with the real MiniLM encoder, applied to a
commonsense run through the ledger, re-thresholded without refitting."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from conftest import ROOT, write_config

from factory import api
from factory.errors import ConfigError
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from filters.trained_critic import TrainedCriticParams, features, fit

LABELS = ROOT / "data" / "seeds" / "commonsense_critic_labels.jsonl"


def test_fit_ranks_plausible_above_absurd_and_reports_its_threshold():
    clf, threshold, report = fit(TrainedCriticParams(labels=str(LABELS), target_precision=0.8))
    assert report["labeled"] == 50 and 0 < threshold <= 1 and report["cv_auc"] > 0.6
    good = [
        ("PersonX bakes a cake", "xNeed", "to buy flour and eggs"),
        ("PersonX wins the race", "xReact", "proud"),
    ]
    bad = [("PersonX bakes a cake", "xNeed", "asdf qwerty zxcv"),
           ("PersonX wins the race", "xReact", "I'm sorry, I cannot help with that")]  # fmt: skip
    p = clf.predict_proba(features(good + bad))[:, 1]
    assert min(p[:2]) > max(p[2:])


def test_bad_labels_files_are_config_errors(tmp_path):
    missing = TrainedCriticParams(labels=str(tmp_path / "none.jsonl"))
    with pytest.raises(ConfigError, match="not found"):
        fit(missing)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"head": "a", "relation": "xNeed", "tail": "b", "accepted": "yes"}\n')
    with pytest.raises(ConfigError, match="line 1 must be JSON"):
        fit(TrainedCriticParams(labels=str(bad)))
    few = tmp_path / "few.jsonl"
    few.write_text('{"head": "a", "relation": "xNeed", "tail": "b", "accepted": true}\n')
    with pytest.raises(ConfigError, match="at least 5"):
        fit(TrainedCriticParams(labels=str(few)))


def test_critic_in_a_commonsense_run_and_a_new_threshold(tmp_path):
    seeds = tmp_path / "ev.jsonl"
    seeds.write_text(
        '{"id": "e1", "event": "PersonX bakes a cake"}\n{"id": "e2", "event": "PersonX wins the race"}\n'
    )
    (tmp_path / "labels.jsonl").write_text(LABELS.read_text())  # a relative path, resolved against the config
    cfg = write_config(
        tmp_path,
        f"name: cs\nrecipe: commonsense\nseeds: {seeds}\nstore: {tmp_path / 's.duckdb'}\nteacher: scripted:x\n"
        "params: {relations: [xNeed, xReact], samples: 2, new_events: 0}\n"
        "filters:\n  - trained_critic: {labels: labels.jsonl, target_precision: 0.8}\n",
    )

    def fn(req):
        if req.sample_index % 2:
            return "asdf qwerty zxcv"
        return "to buy flour" if "needed" in req.messages[-1]["content"] else "proud"

    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=ScriptedTeacher("scripted:x", "x", {"fn": fn})))
    step = res.curation.funnel["filters"][0]
    assert step["in"] == 8
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        why = [st.why(r["id"]) for r in st.records_table(res.run_id).to_pylist()]
    by_tail: dict[bool, list[float]] = {True: [], False: []}
    for w in why:
        by_tail["asdf" not in w["text"]].append(w["verdicts"][-1]["score"])
    assert min(by_tail[True]) > max(by_tail[False])  # the ledger holds the critic's probabilities
    out = subprocess.run(
        [sys.executable, "-m", "factory.cli", "filter", "cs", "--store", str(tmp_path / "s.duckdb"),
         "--set", "trained_critic.min_probability=0", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,  # another folder: the stored path still holds
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["scored"] == {"trained_critic": 0} and s["funnel"]["curated"] == 8
