from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import SEEDS, write_config

from factory import api
from factory.seeds import Seed
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from factory.types import Completion
from recipes.program_rationales import (
    ProgramRationalesParams,
    agrees,
    build_requests,
    extract_program,
    prepare,
    process,
)

GOOD = "```python\ndef solution():\n    bags = 5\n    per_bag = 8\n    return bags * per_bag - 12\n```"
SEED = {
    "question": "Maya has 5 bags with 8 marbles in each bag. She gives 12 away. How many are left?",
    "answer": "28",
}


def _run(answers, seed_data=SEED, **params):
    state = prepare(ProgramRationalesParams(k=len(answers), **params), Path)

    async def generate(req):
        return Completion(text=answers[req.sample_index], key=f"k{req.sample_index}", finish_reason="stop")

    return asyncio.run(process(Seed("s1", seed_data), state, generate))


@pytest.mark.parametrize(
    ("text", "program"),
    [
        (GOOD, GOOD[10:-4]),
        ("Here:\n```py\ndef solution():\n    return 1\n```\nDone.", "def solution():\n    return 1"),
        ("```\nx = 2\n```\n```python\ndef solution():\n    return 3\n```", "def solution():\n    return 3"),
        ("```python\ndef solution():\n    return 4", "def solution():\n    return 4"),  # cut by max_tokens
        (
            "Sure.\nimport math\ndef solution():\n    return math.pi",
            "import math\ndef solution():\n    return math.pi",
        ),
        ("The answer is 28.", None),
        ("", None),
    ],
)
def test_extract_program(text, program):
    assert extract_program(text) == program


def test_agreement_within_tolerance():
    assert agrees("0.30000000000000004", "0.3", 1e-6, 0)
    assert agrees("28", "28", 0, 0) and not agrees("29", "28", 1e-6, 1e-9)
    assert agrees("28.4", "28", 0, 0.5) and not agrees("28.4", "28", 0.001, 0)
    assert agrees("paris", "paris", 0, 0) and not agrees(None, "1", 1, 1)


def test_correct_program_is_verified():
    (d,) = _run([GOOD])
    assert d.reject is None and d.score == 1.0 and d.stage == "program"
    assert d.text == d.payload["program"] == GOOD[10:-4]
    p = d.payload
    assert (p["executed_answer"], p["gold"], p["verified"], p["sandbox_status"]) == ("28", "28", True, "ok")
    assert p["completion"] == GOOD and p["finish_reason"] == "stop" and p["input"] == SEED["question"]
    assert d.request_keys == ("k0",)


def test_wrong_program_is_kept_and_rejected_with_the_reason():
    (d,) = _run(["```python\ndef solution():\n    return 5 * 8 - 10\n```"])
    assert d.reject == "executed answer 30 != gold 28" and d.score == 0.0
    assert d.payload["verified"] is False and d.payload["executed_answer"] == "30"


def test_fraction_and_float_answers_compare_as_numbers():
    progs = [
        "```python\nfrom fractions import Fraction\ndef solution():\n    return Fraction(56, 2)\n```",
        "```python\ndef solution():\n    return 28.000000001\n```",
    ]
    assert [d.payload["verified"] for d in _run(progs)] == [True, True]


@pytest.mark.parametrize(
    ("completion", "status", "reject"),
    [
        ("I think the answer is 28.", None, "no program found in the completion"),
        ("```python\ndef solution():\n    pass\n```", "ok", "solution() returned None"),
        ("```python\ndef solution(:\n```", "error", "program error: SyntaxError"),
        ("```python\nanswer = 28\n```", "error", "program error: the program defines no solution() function"),
        ("```python\nimport os\ndef solution():\n    os.system('id')\n```", "forbidden", "program forbidden"),
    ],
)
def test_unusable_output_is_kept_with_a_reason(completion, status, reject):
    (d,) = _run([completion])
    assert d.payload["sandbox_status"] == status and d.reject.startswith(reject)
    assert d.payload["verified"] is False and d.payload["completion"] == completion


def test_looping_program_records_a_timeout():
    (d,) = _run(["```python\ndef solution():\n    while True:\n        pass\n```"], timeout_s=1, cpu_s=1)
    assert d.payload["sandbox_status"] == "timeout" and d.reject.startswith("program timeout")
    assert d.payload["executed_answer"] is None


def test_without_gold_programs_run_but_are_not_verified():
    (d,) = _run([GOOD], seed_data={"question": "q"}, gold_field=None)
    assert d.reject is None and d.payload["verified"] is None and d.score is None


def test_seed_text_is_data_never_code(tmp_path):
    marker = tmp_path / "evaluated"
    question = f"What is {{{{ 7*7 }}}} and {{0}}? __import__('os').system('touch {marker}')"
    state = prepare(ProgramRationalesParams(k=1), Path)
    req = build_requests(Seed("x", {"question": question}), state)[0]
    assert question in req.messages[-1]["content"] and "49" not in req.messages[-1]["content"]
    (d,) = _run([GOOD], seed_data={"question": question, "answer": "{{ 28 }}"})
    assert (
        d.payload["input"] == question and d.payload["gold"] == "{{ 28 }}" and d.payload["verified"] is False
    )
    assert not marker.exists()


def test_cpu_limit_above_wall_limit_is_a_config_error():
    from factory.errors import ConfigError

    with pytest.raises(ConfigError, match="cpu_s"):
        prepare(ProgramRationalesParams(timeout_s=1, cpu_s=3), Path)


def test_runner_stores_verified_and_rejected_programs(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    rows = [json.loads(line) for line in SEEDS.read_text().splitlines()[:3]]
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gold = {r["question"]: r["answer"] for r in rows}
    cfg = write_config(
        tmp_path,
        f"name: pr\nrecipe: program_rationales\nseeds: {seeds}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: scripted:x\nparams: {k: 2}\nrunner: {commit_interval_s: 0.05}\n",
    )

    def fn(req):
        question = req.messages[-1]["content"].rsplit("\n", 1)[0]
        value = int(gold[question]) + req.sample_index  # sample 0 right, sample 1 off by one
        return f"```python\ndef solution():\n    return {value}\n```"

    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=ScriptedTeacher("scripted:x", "x", {"fn": fn})))
    assert res.status == "done"
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        curated = [orjson.loads(p) for p in st.curated_table(res.run_id).column("payload").to_pylist()]
        drops = st.verdict_counts(res.run_id)
    assert len(curated) == 3 and all(p["verified"] and p["sandbox_status"] == "ok" for p in curated)
    assert sum(n for _, _, n in drops) == 3
    assert all(f == "program_rationales.parse" and r.startswith("executed answer") for f, r, _ in drops)


@pytest.mark.slow
def test_program_rationales_on_embedded_teacher_end_to_end(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(SEEDS.read_text().splitlines()[:4]) + "\n")
    cfg = tmp_path / "pr.yaml"
    cfg.write_text(
        "name: pr-e2e\nrecipe: program_rationales\nseeds: seeds.jsonl\nstore: s.duckdb\nteacher: embedded\n"
        "params: {k: 2, max_tokens: 96, temperature: 0.7}\nlicense: cc-by-4.0\n"
    )
    run = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(cfg), "--json"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["records_added"] == 8 and summary["requests_sent"] == 8
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        records = st.records_table(st.resolve_run(None)).to_pylist()
    assert len(records) == 8 and {r["teacher"].split(":")[0] for r in records} == {"embedded"}
    for r in records:  # a 135M model writes poor programs: the pipeline is checked, not the answers
        p = orjson.loads(r["payload"])
        assert p["gold"] is not None and p["completion"] is not None
        assert p["sandbox_status"] in (
            None,
            "ok",
            "timeout",
            "memory",
            "killed",
            "error",
            "output_limit",
            "forbidden",
        )
        assert (p["program"] is None) == (p["sandbox_status"] is None)
        assert isinstance(p["verified"], bool) and r["text"] == (p["program"] or "")
    assert list((tmp_path).glob("factory-sandbox-*")) == []
