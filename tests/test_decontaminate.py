"""`decontaminate`: planted evaluation items found and named, clean records kept, thresholds from stored
scores, every evaluation file format, bad paths and fields as config errors, and a run end to end."""

from __future__ import annotations

import asyncio
import json

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_config
from pydantic import ValidationError

from factory import api
from factory.errors import ConfigError
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from filters import get_filter
from filters.base import Context, Row

FILTER = get_filter("decontaminate")

GSM = [
    {"id": "gsm-1", "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                                "clips in May. How many clips did Natalia sell altogether in April and May?"},
    {"id": "gsm-2", "question": "Weng earns 12 dollars an hour for babysitting. Yesterday, she just did 50 minutes "
                                "of babysitting. How much did she earn?"},
]  # fmt: skip
CLEAN = "A farmer plants rows of corn along the river and counts the ears of each row at the end of summer."


@pytest.fixture
def evals(tmp_path):
    d = tmp_path / "evals"
    d.mkdir()
    (d / "gsm.jsonl").write_text("".join(json.dumps(x) + "\n" for x in GSM))
    (d / "arc.csv").write_text(
        "prompt,answer\nWhich gas do plants take in from the air to make their food during photosynthesis?,CO2\n"
    )
    (d / "lines.txt").write_text(
        "\nthe mitochondria is the powerhouse of the cell and makes most of its energy\n"
    )
    pq.write_table(pa.table({"text": ["Rivers carry sediment from the mountains down to the sea over millions of years"],
                             "id": ["geo-9"]}), d / "geo.parquet")  # fmt: skip
    (d / "short.json").write_text(json.dumps({"data": ["What is two plus two?"]}))
    return d


def rows_of(*items: tuple[str, dict]) -> list[Row]:
    return [Row(f"r{k}", "s", f"seed{k}", 0, t, p) for k, (t, p) in enumerate(items)]


def run(rows, **params):
    return asyncio.run(
        FILTER.score(rows, FILTER.params.model_validate(params), Context(run_id="x", recipe="prompt"))
    )


def test_planted_contamination_is_found_and_named(evals):
    copied = "Let me restate it: WENG EARNS 12 dollars an hour for babysitting; yesterday she just did 50 minutes of it!"
    rows = rows_of(
        (CLEAN, {"input": "How many ears are there?"}),
        (copied, {}),
        ("The answer is 72.", {"input": GSM[0]["question"]}),
        (
            "Tell me, do plants take in from the air to make their food during photosynthesis, asked the teacher",
            {},
        ),
        ("Why? The mitochondria is the powerhouse of the cell and makes most of its energy.", {}),
        ("rivers carry sediment from the mountains down to the sea over millions of years", {}),
        ("What is two plus two?", {}),
        ("What is two plus two? Four, of course, and three plus three is six.", {}),
    )
    scored = run(rows, eval_files=[str(evals)])
    params = FILTER.params(eval_files=[str(evals)])
    verdicts = [FILTER.decide(s, params) for s in scored]
    assert [keep for keep, _ in verdicts] == [True, False, False, False, False, False, False, True]
    assert scored[0].score == 0 and scored[0].detail is None
    d = scored[1].detail
    assert d["eval_file"] == str(evals / "gsm.jsonl") and d["eval_item"] == "gsm-2" and d["field"] == "text"
    assert d["ngram"] == "weng earns 12 dollars an hour for babysitting yesterday she just did 50"
    assert scored[1].score == d["overlaps"] == 3  # 15 copied words hold three 13-grams
    assert verdicts[1][1] == "overlaps eval item gsm-2 of evals/gsm.jsonl"  # the path from the folder given
    assert scored[2].detail["field"] == "input" and scored[2].detail["eval_item"] == "gsm-1"
    assert scored[2].score == len(GSM[0]["question"].split()) - 12
    assert scored[3].detail["eval_file"].endswith("arc.csv") and scored[3].detail["eval_item"] == "0"
    assert scored[4].detail["eval_file"].endswith("lines.txt") and scored[4].detail["eval_item"] == "1"
    assert scored[5].detail["eval_item"] == "geo-9"
    assert scored[6].detail["eval_file"].endswith("short.json")  # a short item matches only itself
    assert scored[7].score == 0


def test_min_overlap_is_a_threshold_on_the_stored_count(evals):
    rows = rows_of(
        ("Weng earns 12 dollars an hour for babysitting. Yesterday, she just did 50 minutes of", {})
    )
    (s,) = run(rows, eval_files=[str(evals / "gsm.jsonl")])
    assert s.score == 3
    assert not FILTER.decide(s, FILTER.params(eval_files=[str(evals)], min_overlap=3))[0]
    assert FILTER.decide(s, FILTER.params(eval_files=[str(evals)], min_overlap=4)) == (True, None)
    assert FILTER.thresholds == ("min_overlap",)
    assert FILTER.version(FILTER.params(eval_files=[str(evals)], min_overlap=4)) == FILTER.version(
        FILTER.params(eval_files=[str(evals)])
    )
    assert FILTER.version(FILTER.params(eval_files=[str(evals)], n=8)) != FILTER.version(
        FILTER.params(eval_files=[str(evals)])
    )


def test_the_version_follows_the_evaluation_files_content(evals):
    params = FILTER.params(eval_files=[str(evals)])
    before = FILTER.version(params)
    assert FILTER.version(FILTER.params(eval_files=[str(evals)])) == before
    (evals / "lines.txt").write_text("a new evaluation item\n")
    assert FILTER.version(params) != before
    assert FILTER.path_params == ("eval_files",) and not FILTER.set_level


def test_fields_and_n_choose_what_is_compared(evals):
    rows = rows_of(("The answer is 72.", {"input": GSM[0]["question"], "question": "unrelated"}))
    assert run(rows, eval_files=[str(evals)], fields=["text"])[0].score == 0
    assert run(rows, eval_files=[str(evals)], fields=["question", "input"])[0].score > 0
    near = rows_of(("she sold half as many clips in May and some more in June", {}))
    assert run(near, eval_files=[str(evals)])[0].score == 0
    assert run(near, eval_files=[str(evals)], n=6)[0].detail["ngram"] == "she sold half as many clips"


def test_eval_field_picks_the_text(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"q": GSM[1]["question"], "a": "10"}) + "\n")
    rows = rows_of((GSM[1]["question"], {}))
    assert run(rows, eval_files=[str(f)], eval_field="q")[0].detail["eval_item"] == "0"
    with pytest.raises(
        ConfigError, match=r"eval_field: .*qa\.jsonl has none of the fields text, question, prompt"
    ):
        run(rows, eval_files=[str(f)])
    with pytest.raises(ConfigError, match=r"eval_field: .*qa\.jsonl has no field 'question_text'"):
        run(rows, eval_files=[str(f)], eval_field="question_text")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.jsonl", r"decontaminate\.eval_files: .*missing\.jsonl not found"),
        (lambda d: (d / "evals.xlsx").write_text("x") and d / "evals.xlsx", r"evals\.xlsx is not one of"),
        (lambda d: (d / "empty").mkdir() or d / "empty", r"empty holds no \.jsonl"),
        (lambda d: (d / "bad.json").write_text("{nope") and d / "bad.json", r"bad\.json is not valid JSON"),
    ],
)
def test_bad_eval_paths_are_config_errors(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ConfigError, match=message):
        run(rows_of((CLEAN, {})), eval_files=[str(path)])


def test_eval_files_are_required():
    with pytest.raises(ValidationError, match="eval_files"):
        FILTER.params()
    with pytest.raises(ValidationError, match="at least one"):
        FILTER.params(eval_files=[])


# ------------------------------------------------------------------------------------- end to end


def _teacher(seeds_file):
    gold = {
        (r := orjson.loads(line))["question"]: r["answer"] for line in seeds_file.read_text().splitlines()
    }

    def answer(req):
        prompt = req.messages[-1]["content"].split("\n\n")[-1]
        a = next(a for q, a in gold.items() if f"Question: {q}" in prompt)
        return f"Step {req.sample_index}: adding and multiplying carefully. The answer is {a}."

    return ScriptedTeacher("scripted:x", "x", {"fn": answer})


def _cfg(tmp_path, seeds_file, filters):
    return write_config(
        tmp_path,
        f"name: deco\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        f"teacher: scripted:x\nparams: {{k: 2}}\n{filters}",
        name="deco.yaml",
    )


def test_a_run_drops_records_of_an_evaluation_question(tmp_path, seeds_file):
    questions = [orjson.loads(x)["question"] for x in seeds_file.read_text().splitlines()]
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": "test-17", "question": questions[2]}) + "\n")
    cfg = _cfg(tmp_path, seeds_file, "filters:\n  - decontaminate: {eval_files: [bench.jsonl]}\n")  # relative
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=_teacher(seeds_file)))
    (step,) = res.curation.funnel["filters"]
    assert (step["in"], step["kept"]) == (16, 14)
    assert step["top_reasons"] == [{"reason": "overlaps eval item test-17 of bench.jsonl", "records": 2}]
    with Store(tmp_path / "s.duckdb") as st:
        again = asyncio.run(api.filter_run(st, res.run_id, api.prepare(cfg).filters))
        assert again.scored == {"decontaminate": 0}  # a row filter: stored scores are reused
        with bench.open("a") as f:  # a changed evaluation file is a new version: everything is scored again
            f.write(json.dumps({"id": "test-18", "question": questions[5]}) + "\n")
        edited = asyncio.run(api.filter_run(st, res.run_id, api.prepare(cfg).filters))
    assert edited.scored == {"decontaminate": 16} and edited.funnel["filters"][0]["kept"] == 12
    missing = _cfg(tmp_path, seeds_file, "filters:\n  - decontaminate: {eval_files: [nope.jsonl]}\n")
    with pytest.raises(ConfigError, match=r"decontaminate\.eval_files: .*nope\.jsonl not found"):
        api.prepare(missing)
