"""Closing the loop: `factory eval` writes each input's result, and a `focus:` round samples again the seeds
the student failed (new requests, its round in each record's lineage, shown on the card); a re-run pays
nothing; a bad focus block is one exit-2 message."""

import asyncio
import dataclasses
import json
import os
import subprocess
import sys

import orjson
import pytest
from conftest import write_config
from test_train import FAST, GOLD, _answer, run_rationales

from factory import api
from factory.errors import ConfigError
from factory.export import export_run
from factory.focus import REWRITE_SYSTEM, ROUND_STRIDE
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher

FAILED_SAMPLES = 3


def _student_says(prompts_to_questions):
    """A stand-in for greedy decoding: right on every other question, wrong on the rest."""

    def generate(model, tok, prompts, **kw):
        out = []
        for ids in prompts:
            q = prompts_to_questions(tok.decode(ids))
            right = sorted(GOLD).index(q) % 2 == 0
            out.append(f"The answer is {int(GOLD[q]) + (0 if right else 7)}.")
        return out

    return generate


def _question_in(text: str) -> str:
    return next(q for q in GOLD if q in text)


@pytest.fixture(scope="module")
def round_one(tmp_path_factory, tiny_llama):
    """Round one: a scripted rationales run, its step_by_step export (lineage kept), a tiny student trained
    on it, and `factory eval`'s per-input file for it, scored on a pool split the student was not trained on."""
    from trainers import causal
    from trainers.config import make_config
    from trainers.run import evaluate_models, train

    tmp = tmp_path_factory.mktemp("round1")
    run_id = run_rationales(tmp, n_seeds=12)
    with Store(tmp / "s.duckdb") as st:
        sbs = export_run(
            st, run_id, tmp / "sbs", shape="step_by_step", splits={"train": 0.5, "pool": 0.5}
        ).out
    cfg = make_config({"export": sbs, "task": "step_by_step", "student": str(tiny_llama), "out": tmp / "student",
                       **FAST, "max_steps": 1, "max_eval_examples": 2, "max_new_tokens": 4, "eval_split": "pool"})  # fmt: skip
    train(cfg)
    mp = pytest.MonkeyPatch()
    mp.setattr(causal, "generate", _student_says(_question_in))
    try:
        report = evaluate_models([tmp / "student"], sbs, split="pool", per_input=tmp / "eval.jsonl")
    finally:
        mp.undo()
    rows = [json.loads(x) for x in (tmp / "eval.jsonl").read_text().splitlines()]
    return {"tmp": tmp, "run_id": run_id, "report": report, "rows": rows, "eval": tmp / "eval.jsonl"}


def test_eval_writes_one_row_per_input_with_right_and_wrong(round_one):
    rows, report = round_one["rows"], round_one["report"]
    seeds = {
        json.loads(x)["id"]: json.loads(x)
        for x in (round_one["tmp"] / "seeds.jsonl").read_text().splitlines()
    }
    pool = {r["seed_id"] for r in _pool_rows(round_one["tmp"] / "sbs")}
    assert (
        len(rows) == report["inputs"] == len(pool) >= 3
        and {r["seed_id"] for r in rows} == pool
        and report["per_input_files"] == [str(round_one["eval"])]
    )
    for r in rows:
        assert (
            r["seed_id"] in seeds and seeds[r["seed_id"]]["question"] == r["input"]
        )  # maps back to its seed
        right = sorted(GOLD).index(r["input"]) % 2 == 0
        assert r["correct"] is right and r["agrees_with_teacher"] is right  # the exported answers are gold's
        assert r["reference"] == str(GOLD[r["input"]]) and r["teacher_answer"] == r["reference"]
        assert isinstance(r["loss"], float) and r["loss"] > 0 and r["round"] == 1 and r["record_id"]
    hits = sum(r["correct"] for r in rows)
    assert 0 < hits < len(rows) and report["models"][0]["metrics"]["exact_match"] == round(
        hits / len(rows), 4
    )
    # `factory train` leaves its own evaluation's rows in the model folder
    trained = (round_one["tmp"] / "student" / "eval_inputs.jsonl").read_text().splitlines()
    assert len(trained) == 2 and all(json.loads(x)["seed_id"] in seeds for x in trained)


def _pool_rows(export):
    from trainers.data import load_export

    return list(load_export(export).splits["pool"])


def _focus_config(tmp, round_one, name="focus", focus=None):
    one = round_one["tmp"]
    body = (f"name: {name}\nrecipe: rationales\nseeds: {one / 'seeds.jsonl'}\nstore: {one / 's.duckdb'}\n"
            "teacher: scripted:x\nparams: {k: 2}\nlicense: cc-by-4.0\nexport: {splits: {train: 1.0}}\n"
            + (focus if focus is not None else
               f"focus: {{from_eval: {round_one['eval']}, failed_samples: {FAILED_SAMPLES}}}\n"))  # fmt: skip
    return write_config(tmp, body, name=f"{name}.yaml")


def _round_answer(req):
    """Like round one's teacher, per round: each round's first sample is right."""
    return _answer(dataclasses.replace(req, sample_index=req.sample_index % ROUND_STRIDE)).replace(
        f"Sample {req.sample_index % ROUND_STRIDE} ", f"Sample {req.sample_index} "
    )


def _run(cfg):
    teacher = ScriptedTeacher("scripted:x", "x", {"fn": _round_answer})
    return asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher))


def test_round_two_seeds_are_the_ones_round_one_failed(tmp_path, round_one):
    failed = {r["seed_id"] for r in round_one["rows"] if not r["correct"]}
    solved = {r["seed_id"] for r in round_one["rows"] if r["correct"]}
    res = _run(_focus_config(tmp_path, round_one))
    assert res.status == "done" and res.progress.requests_sent == FAILED_SAMPLES * len(failed)
    with Store(round_one["tmp"] / "s.duckdb") as st:
        two = st.records_table(res.run_id).to_pylist()
        one_keys = {k for r in st.records_table(round_one["run_id"]).to_pylist() for k in r["request_keys"]}
        assert {r["seed_id"] for r in two} == failed and not failed & solved
        for r in two:
            p = orjson.loads(r["payload"])
            assert p["focus"]["round"] == 2 and p["focus"]["eval"] == str(round_one["eval"])
            assert p["focus"]["outcome"] == "failed" and p["focus"]["eval_failed"] == len(failed)
            assert ROUND_STRIDE <= r["sample_index"] < ROUND_STRIDE + FAILED_SAMPLES
            assert not set(r["request_keys"]) & one_keys  # new requests, not round one's answers
        assert len(two) == FAILED_SAMPLES * len(failed)
        exp = export_run(st, res.run_id, tmp_path / "hf", shape="step_by_step", splits={"train": 1.0})
    import pyarrow.parquet as pq

    table = pq.read_table(exp.out / "data").to_pylist()
    assert table and all(r["focus_round"] == 2 and r["focus_eval"] == str(round_one["eval"]) for r in table)
    card = (exp.out / "README.md").read_text()
    section = card.split("## Focus rounds", 1)[1].split("\n## ", 1)[0]
    assert (
        f"| 2 | `eval.jsonl` (sha256 `{p['focus']['eval_digest']}`) | {len(failed)} | {len(solved)} | failed |"
        in section
    )
    assert f"{FAILED_SAMPLES} samples each" in section

    again = _run(_focus_config(tmp_path, round_one))  # the same config: nothing left to do
    assert again.run_id == res.run_id and again.progress.requests_sent == 0
    renamed = _run(_focus_config(tmp_path, round_one, name="focus-copy"))  # a new run of the same round
    assert renamed.progress.requests_sent == 0 and renamed.progress.cache_hits == FAILED_SAMPLES * len(failed)


def test_solved_seeds_can_be_kept_with_fewer_samples(tmp_path, round_one):
    focus = f"focus: {{from_eval: {round_one['eval']}, failed_samples: 2, solved_samples: 1}}\n"
    res = _run(_focus_config(tmp_path, round_one, name="both", focus=focus))
    with Store(round_one["tmp"] / "s.duckdb") as st:
        recs = st.records_table(res.run_id).to_pylist()
    per_seed = {}
    for r in recs:
        per_seed.setdefault(r["seed_id"], []).append(orjson.loads(r["payload"])["focus"]["outcome"])
    want = {r["seed_id"]: "failed" if not r["correct"] else "solved" for r in round_one["rows"]}
    assert {s: (o[0], len(o)) for s, o in per_seed.items()} == {
        s: (o, 2 if o == "failed" else 1) for s, o in want.items()
    }


@pytest.mark.parametrize(
    "focus, words",
    [
        ("focus: {from_eval: nowhere.jsonl}\n", ["focus.from_eval", "nowhere.jsonl", "not found"]),
        (
            "focus: {from_eval: EVAL, failed_sample: 2}\n",
            ["focus.failed_sample", "Did you mean 'failed_samples'"],
        ),
        (
            "focus: {from_eval: EVAL, failed_samples: 0}\n",
            ["focus.failed_samples", "greater than or equal to 1"],
        ),
        ("focus: {from_eval: BAD}\n", ["focus.from_eval", "bad.jsonl line 2 is not JSON"]),
        ("focus: {from_eval: SLIM}\n", ["focus.from_eval", "no seed_id", "--slim"]),
        ("focus: EVAL\n", ["'focus'", "valid dictionary"]),
    ],
)
def test_a_bad_focus_block_is_one_exit_2_message(tmp_path, round_one, focus, words):
    (tmp_path / "bad.jsonl").write_text('{"seed_id": "a", "correct": true}\n{oops\n')
    (tmp_path / "slim.jsonl").write_text('{"input": "q", "correct": false}\n')
    focus = (
        focus.replace("EVAL", str(round_one["eval"]))
        .replace("BAD", "bad.jsonl")
        .replace("SLIM", "slim.jsonl")
    )
    cfg = _focus_config(tmp_path, round_one, name="bad", focus=focus)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(cfg), "--dry-run"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=120)  # fmt: skip
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert all(w in out.stderr for w in words), out.stderr


def test_focus_needs_a_recipe_that_samples_k_answers(tmp_path, round_one):
    seeds = tmp_path / "texts.jsonl"
    seeds.write_text('{"text": "a fine day"}\n')
    (tmp_path / "labels.yaml").write_text("- {name: a, description: one}\n- {name: b, description: two}\n")
    cfg = write_config(tmp_path, f"name: lab\nrecipe: relabel\nseeds: {seeds}\nstore: {tmp_path / 's.duckdb'}\n"
                       "params: {labels: labels.yaml}\n"
                       f"focus: {{from_eval: {round_one['eval']}}}\n")  # fmt: skip
    with pytest.raises(
        ConfigError, match="focus: the relabel recipe has no samples-per-question parameter `k`"
    ):
        api.prepare(cfg)


REWORDED = "In other words: "


def _rewriting_teacher(req):
    """Rewrites a question by prefixing it; answers a rewritten question like the original."""
    if req.messages[0]["content"] == REWRITE_SYSTEM:
        return REWORDED + req.messages[-1]["content"]
    msgs = tuple({**m, "content": m["content"].replace(REWORDED, "")} for m in req.messages)
    return _round_answer(dataclasses.replace(req, messages=msgs))


def test_rewrite_asks_the_teacher_for_a_variant_of_each_failed_question(tmp_path, round_one):
    failed = {r["seed_id"]: r["input"] for r in round_one["rows"] if not r["correct"]}
    focus = f"focus: {{from_eval: {round_one['eval']}, failed_samples: 2, rewrite: true}}\n"
    cfg = _focus_config(tmp_path, round_one, name="rewrite", focus=focus)
    teacher = ScriptedTeacher("scripted:x", "x", {"fn": _rewriting_teacher})
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher))
    assert res.status == "done" and res.progress.requests_sent == 3 * len(
        failed
    )  # a rewrite + 2 samples each
    with Store(round_one["tmp"] / "s.duckdb") as st:
        recs = st.records_table(res.run_id).to_pylist()
    assert {r["seed_id"] for r in recs} == set(failed) and len(recs) == 2 * len(failed)
    for r in recs:
        p = orjson.loads(r["payload"])
        assert (
            p["input"] == REWORDED + failed[r["seed_id"]]
            and p["focus"]["rewritten_from"] == failed[r["seed_id"]]
        )
        assert len(r["request_keys"]) == 2  # the rewrite's answer, then the sample's
    by_seed = {}
    for r in recs:
        by_seed.setdefault(r["seed_id"], set()).add(r["request_keys"][0])
    assert all(len(v) == 1 for v in by_seed.values()) and len(set().union(*by_seed.values())) == len(failed)
