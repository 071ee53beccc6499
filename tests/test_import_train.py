"""The shared SVAMP rationales through the whole path, as a user runs it: `factory import`, the default
curation, `factory export --as step_by_step` and `--as preference`, `factory train` (step_by_step, dpo) and
`factory eval`. PaLM wrote one rationale a question; a preference pair needs a right and a wrong one of the
same question, so the file imported here also holds, for each question, a second teacher's wrong answer
(a file of several teachers' answers, as a user would gather one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_import import SVAMP, agrees
from test_train_cli import _cli

N = 40


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory) -> Path:
    if not SVAMP.is_file():
        pytest.skip(f"the PaLM rationales are not at {SVAMP}")
    rows = [json.loads(x) for x in SVAMP.read_text().splitlines()[:N]]
    out = []
    for r in rows:
        out.append({**r, "teacher": "palm-540b"})
        wrong = float(r["answer"]) + 1
        out.append({**r, "teacher": "guesser", "teacher_answer": None,
                    "teacher_rationale": f"A quick guess without working it out. The answer is {wrong:g}."})  # fmt: skip
    p = tmp_path_factory.mktemp("svamp") / "svamp_two_teachers.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in out))
    return p


def test_import_filter_export_train_eval(two_teachers, tmp_path, tiny_llama):
    rows = [json.loads(x) for x in two_teachers.read_text().splitlines()]
    right = {r["id"] for r in rows if r["teacher"] == "palm-540b" and agrees(r)}
    store = str(tmp_path / "s.duckdb")
    out = _cli("import", str(two_teachers), "--recipe", "rationales", "--name", "svamp", "--store", store,
               "--map", "rationale=teacher_rationale", "--json", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["rows"] == 2 * N and res["records_added"] == 2 * N
    assert [f["filter"] for f in res["funnel"]["filters"]][:1] == ["agreement"]

    splits = ["--split-by", "seed"]
    out = _cli("export", res["run_id"], "--store", store, "--as", "step_by_step", "--out", "sbs", *splits,
               "--json", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    sbs = json.loads(out.stdout)
    assert sbs["rows"] == len(right)  # the guesser's answers and PaLM's wrong ones are set aside
    assert sum(sbs["set_aside"].values()) == 2 * N - len(right) - sum(1 for r in rows if r["teacher"] == "palm-540b"
                                                                      and r["teacher_answer"] is None)  # fmt: skip
    out = _cli("export", res["run_id"], "--store", store, "--as", "preference", "--out", "pref", *splits,
               "--json", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == len(right)  # one pair for each question PaLM got right

    for export, task in (("sbs", "step_by_step"), ("pref", "dpo")):
        out = _cli("train", export, "--task", task, "--student", str(tiny_llama), "--max-steps", "2",
                   "--batch-size", "4", "--out", f"st-{task}", cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr
        metrics = json.loads((tmp_path / f"st-{task}" / "metrics.json").read_text())
        assert metrics["train"]["global_step"] == 2
        out = _cli("eval", f"st-{task}", export, "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        ev = json.loads(out.stdout)
        assert ev["reference"] == "gold" and ev["models"][0]["metrics"]["n"] == ev["inputs"] > 0
        assert ev["models"][-1]["kind"] == "teacher" and ev["models"][-1]["metrics"]["exact_match"] == 1.0
