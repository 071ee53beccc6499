"""benchmarks/quality.py end to end on a slice of the PaLM rationales with a tiny random student, its
statistics, its README block and chart, and its refusals of bad flags.

The end-to-end run imports 24 rows of each data set twice (curated and all), exports them, trains three
variants for 2 steps with one seed and scores them; the checks read its results and the folders it wrote,
against the data file itself (not the factory's reading of it)."""

from __future__ import annotations

import importlib
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DATA = Path("/work/shared/data/palm_rationales")
FILES = {"svamp": "svamp_train.jsonl", "cqa": "cqa_train.jsonl"}


def _bench(name: str):  # type: ignore[no-untyped-def]
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _jsonl(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, tiny_llama):  # type: ignore[no-untyped-def]
    if not (DATA / FILES["svamp"]).is_file():
        pytest.skip(f"the PaLM rationales are not at {DATA}")
    tmp = tmp_path_factory.mktemp("quality")
    data = tmp / "data"
    data.mkdir()
    for f in FILES.values():
        (data / f).write_text("".join((DATA / f).read_text().splitlines(keepends=True)[:24]))
    quality = _bench("quality")
    results = tmp / "results"
    mp = pytest.MonkeyPatch()
    mp.setattr(quality._results, "RESULTS", results)
    try:
        rc = quality.main(["--data", str(data), "--student", str(tiny_llama), "--device", "cpu", "--seeds", "1",
                           "--steps", "2", "--batch-size", "2", "--train-rows", "4", "--eval-rows", "5",
                           "--new-tokens", "8", "--variants", "b,c,d,e,f", "--work", str(tmp / "work"),
                           "--kd-teacher", str(tiny_llama), "--kd-k", "4",
                           "--results", "quality-ci"])  # fmt: skip
    finally:
        mp.undo()
    assert rc == 0
    return {
        "data": data,
        "work": tmp / "work",
        "tiny": tiny_llama,
        "results": json.loads((results / "quality-ci.json").read_text()),
    }


def test_every_variant_is_trained_and_scored_on_the_same_held_out_questions(quick_run) -> None:  # type: ignore[no-untyped-def]
    res = quick_run["results"]
    assert res["date"] and res["versions"]["distill-factory"] and res["figures"]["seeds"] == 1
    for name in FILES:
        ds = res["figures"]["datasets"][name]
        assert ds["funnel"][f"{name}-all"]["rows"] == 24 == ds["funnel"][f"{name}-curated"]["rows"]
        # agreement with gold drops the teacher's wrong answers from the curated run only
        assert ds["funnel"][f"{name}-curated"]["curated"] < ds["funnel"][f"{name}-all"]["curated"]
        assert ds["budget"] == {"steps": 2, "batch_size": 2, "train_rows": 4, "inputs_seen": 4,
                                "learning_rate": 1e-4, "max_length": 384}  # fmt: skip
        assert set(ds["variants"]) == {"b", "c", "d", "e", "f"}
        # one rationale a question: no question has both a trusted and a wrong one to pair for dpo
        e = ds["variants"].pop("e")
        assert e["status"] == "skipped" and "a trusted and a wrong sample" in e["reason"]
        for v in ds["variants"].values():
            assert v["status"] == "done" and v["seeds"] == 1 and v["questions"] == ds["scored_questions"] > 0
            assert 0 <= v["ci95"][0] <= v["accuracy"] <= v["ci95"][1] <= 1
            assert len(v["per_seed"]) == 1 and len(v["train_s"]) == 1
        assert set(ds["differences"]) == {"c-b", "d-c", "f-d"}
        work = quick_run["work"] / name / "exports"
        trained = {
            r["input"]
            for d in ("curated-step_by_step", "all-step_by_step")
            for r in _jsonl(work / d / "train.jsonl")
        }
        held = [r["input"] for r in _jsonl(work / "curated-records" / "validation.jsonl")]
        assert len(held) == ds["validation_questions"] and not trained & set(held)
        # (f) kd trains on (d)'s very rows, with the teacher's tokens and top-k at each answer token
        sft, kd = (
            _jsonl(work / "curated-prompt_completion" / "train.jsonl"),
            _jsonl(work / "curated-kd" / "train.jsonl"),
        )
        assert [(r["prompt"], r["completion"]) for r in kd] == [(r["prompt"], r["completion"]) for r in sft]
        # the teacher reads the rows the budget trains on; the others carry empty lists, which kd skips
        read = ds["budget"]["train_rows"]
        assert 0 < read < len(kd) and all(
            r["teacher_token_ids"] == r["teacher_top_ids"] == r["teacher_top_logprobs"] == []
            for r in kd[read:]
        )
        for r in kd[:read]:
            n = len(r["teacher_token_ids"])
            assert len(r["teacher_top_ids"]) == len(r["teacher_top_logprobs"]) == n > 1
            assert all(len(x) == 4 for x in r["teacher_top_ids"]) and all(
                max(x) <= 0 for x in r["teacher_top_logprobs"]
            )
        assert res["figures"]["kd_teacher"] == str(quick_run["tiny"]) and res["figures"]["kd_k"] == 4


def _num(x: str | None) -> float | None:
    try:
        return float(str(x).replace(",", ""))
    except ValueError:
        return None


def test_uncurated_trains_on_wrong_answers_curated_does_not_and_the_teacher_line_is_the_file_s(
    quick_run,
) -> None:  # type: ignore[no-untyped-def]
    raw = {r["question"]: r for r in _jsonl(quick_run["data"] / FILES["svamp"])}
    exports = quick_run["work"] / "svamp" / "exports"

    def right(row: dict) -> bool:  # type: ignore[type-arg]
        gold = _num(raw[row["input"]]["answer"])
        return gold is not None and _num(row["label"]) == gold

    every = _jsonl(exports / "all-step_by_step" / "train.jsonl")
    curated = _jsonl(exports / "curated-step_by_step" / "train.jsonl")
    assert any(not right(r) for r in every) and all(right(r) for r in curated)
    assert len(every) > len(curated)
    held = sorted(_jsonl(exports / "curated-records" / "validation.jsonl"), key=lambda r: r["record_id"])[:5]
    expect = [_num(raw[r["input"]]["teacher_answer"]) == _num(raw[r["input"]]["answer"]) for r in held]
    teacher = quick_run["results"]["figures"]["datasets"]["svamp"]["teacher"]
    assert teacher["accuracy"] == pytest.approx(sum(expect) / len(expect), abs=1e-4)


def test_the_readme_block_and_chart_render_from_the_results(quick_run, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    figs = _bench("figures_quality")
    monkeypatch.setattr(figs, "load", lambda name="quality": quick_run["results"])
    table = figs.quality_table()
    for name in ("SVAMP", "CommonsenseQA"):
        assert f"**{name}**" in table
    assert table.count("| (c) step-by-step, curated |") == 2 and "teacher (palm-540b)" in table
    svg = figs.chart(quick_run["results"]["figures"])
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "(b) step-by-step, all rationales" in texts and any(t and t.startswith("teacher") for t in texts)


def test_bootstrap_pairs_seeds_by_question() -> None:
    stats = _bench("quality_stats")
    right = [[True] * 40, [True] * 40]
    half = [[i % 2 == 0 for i in range(40)]] * 2
    acc = stats.accuracy(half)
    assert acc["accuracy"] == 0.5 and acc["per_seed"] == [0.5, 0.5] and acc["seed_sd"] == 0.0
    assert acc["ci95"][0] < 0.5 < acc["ci95"][1]
    diff = stats.difference(right, half)
    assert diff["difference"] == 0.5 and diff["ci95"][0] > 0.3
    assert stats.difference(half, half)["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same questions"):
        stats.difference(right, [[True] * 39])


@pytest.mark.parametrize(
    ("args", "said"),
    [(["--variants", "a,z"], "unknown --variants ['z']"), (["--data", "/nonexistent"], "pass --data DIR")],
)
def test_bad_flags_are_one_message_and_exit_2(args, said, capsys) -> None:  # type: ignore[no-untyped-def]
    quality = _bench("quality")
    assert quality.main(["--quick", *args]) == 2
    assert said in capsys.readouterr().err


def test_the_committed_chart_is_the_committed_results_file_s() -> None:
    figs = _bench("figures_quality")
    assert figs.SVG.read_text(encoding="utf-8") == figs.chart(figs.load("quality")["figures"]), (
        "python benchmarks/quality.py writes the chart with its results"
    )
