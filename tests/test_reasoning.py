"""The `reasoning` recipe: thinking split from the answer, final answers checked as mathematics, by tests in the
sandbox, or by vote; cut-off traces kept with the reason; the exports reasoning students train on."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from conftest import write_config

from factory import api
from factory.seeds import Seed
from factory.teachers.scripted import ScriptedTeacher
from factory.types import Completion
from recipes.reasoning import ReasoningParams, build_requests, prepare, process, split_thinking

HALF = (
    "<think>\nHalf of 3 is 3/2, and half again is 3/4... wait, the question asks for half of 1.\n</think>\n\n"
)


def _run(answers: list[str | Completion], seed: dict[str, object], **params: object):
    state = prepare(ReasoningParams(k=len(answers), **params), Path)

    async def generate(req):
        a = answers[req.sample_index]
        if isinstance(a, Completion):
            return a
        return Completion(text=a, key=f"k{req.sample_index}", finish_reason="stop", completion_tokens=len(a))

    return asyncio.run(process(Seed("s1", seed), state, generate))


def test_split_thinking_from_tags_from_the_field_and_when_cut_off() -> None:
    tags = ("<think>", "</think>")
    assert split_thinking(Completion(text="<think>a\nb</think>\n\nThe answer is 2."), tags) == (
        "a\nb",
        "The answer is 2.",
    )
    # a chat template that opens the tag in the prompt: only the closing one is in the text
    assert split_thinking(Completion(text="a</think>ok"), tags) == ("a", "ok")
    # an opening tag never closed (cut off while thinking): all of it is thinking, no answer part
    assert split_thinking(Completion(text="<think>still going"), tags) == ("still going", "")
    assert split_thinking(Completion(text="plain answer"), tags) == (None, "plain answer")
    assert split_thinking(Completion(text="[[x]] y"), ("[[", "]]")) == ("x", "y")
    sent = Completion(text="The answer is 3.", reasoning="counted to three")
    assert split_thinking(sent, tags) == ("counted to three", "The answer is 3.")


def test_a_fraction_agrees_with_a_decimal_gold_and_a_wrong_answer_does_not() -> None:
    right, wrong = _run(
        [HALF + r"So the result is \boxed{\frac{1}{2}}.", HALF + r"\boxed{\frac{3}{4}}"],
        {"question": "What is half of 1?", "answer": "0.5"},
    )
    assert right.reject is None and right.payload["agrees_with_gold"] is True and right.score == 1.0
    assert right.payload["final_answer"] == r"\frac{1}{2}" and right.payload["label"] == "positive"
    assert (
        right.payload["reasoning"].startswith("Half of 3") and "</think>" not in right.payload["answer_text"]
    )
    assert wrong.reject is None and wrong.payload["agrees_with_gold"] is False and wrong.score == 0.0
    assert wrong.payload["label"] == "negative"


def test_a_cut_off_trace_is_kept_with_the_reason_and_no_answer() -> None:
    cut = Completion(text=r"<think>so \boxed{", key="k0", finish_reason="length", completion_tokens=16)
    (d,) = _run([cut], {"question": "q", "answer": "1"})
    assert d.reject == "cut off at max_tokens (finish_reason length)"
    assert d.payload["final_answer"] is None and d.payload["finish_reason"] == "length"


def test_without_gold_the_traces_vote_by_mathematical_equality() -> None:
    ds = _run(
        [r"\boxed{0.5}", r"\boxed{\frac{1}{2}}", "The answer is 1/2.", r"\boxed{2}", "I do not know."],
        {"question": "q"},
        gold_field=None,
    )
    shares = [d.payload["vote_share"] for d in ds]
    assert shares == [0.6, 0.6, 0.6, 0.2, 0.0]
    assert [d.payload["agrees_with_majority"] for d in ds] == [True, True, True, False, False]
    assert ds[3].payload["majority_answer"] == "0.5"
    assert ds[4].reject == "no final answer (no \\boxed{} and no stated answer)"


def test_a_programming_question_is_checked_by_its_tests_in_the_sandbox() -> None:
    seed = {"question": "Write add(a, b).", "tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0"}
    good = "<think>easy</think>\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = "<think>hmm</think>\n```python\ndef add(a, b):\n    return a - b\n```"
    ds = _run([good, bad, "<think>x</think> no code"], seed)
    assert [d.payload["kind"] for d in ds] == ["code"] * 3
    assert ds[0].reject is None and ds[0].payload["verified"] is True and ds[0].score == 1.0
    assert (
        ds[1].reject is not None
        and ds[1].reject.startswith("tests failed")
        and ds[1].payload["verified"] is False
    )
    assert ds[2].reject == "no code block in the answer"
    # the prompt asked for code, not for a boxed answer
    (req, *_) = build_requests(Seed("s", seed), prepare(ReasoningParams(k=1), Path))
    assert "Python code block" in req.messages[-1]["content"] and "boxed" not in req.messages[-1]["content"]


def test_sampling_seeds_differ_per_trace_and_params_are_checked() -> None:
    reqs = build_requests(Seed("s", {"question": "q"}), prepare(ReasoningParams(k=3), Path))
    assert len({r.sampling.seed for r in reqs}) == 3 and reqs[0].sampling.max_tokens == 16384
    with pytest.raises(ValueError, match="opening and a closing tag"):
        ReasoningParams(think_tags=("<think>", ""))


def test_a_run_curates_and_exports_both_shapes(tmp_path: Path, cli) -> None:
    seeds = tmp_path / "q.jsonl"
    seeds.write_text(
        json.dumps({"id": "a", "question": "Half of 1?", "answer": "0.5"})
        + "\n"
        + json.dumps({"id": "b", "question": "Two plus two?", "answer": "4"})
        + "\n",
        encoding="utf-8",
    )
    store = tmp_path / "s.duckdb"
    cfg = write_config(
        tmp_path,
        f"name: r\nrecipe: reasoning\nseeds: {seeds}\nstore: {store}\nteacher: scripted:x\nparams: {{k: 2}}\n",
    )

    def fn(req):
        q = req.messages[-1]["content"]
        if q.startswith("Half"):
            return "<think>one half</think>\n\n" + (
                r"\boxed{\frac{1}{2}}" if req.sample_index == 0 else r"\boxed{2}"
            )
        if req.sample_index == 1:  # cut off while thinking
            return Completion(
                text="<think>2+2 is" + " more" * 60, finish_reason="length", completion_tokens=64
            )
        return Completion(
            text="<think>2+2</think>\n\nThe answer is 4.", finish_reason="stop", completion_tokens=12
        )

    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=ScriptedTeacher("scripted:x", "x", {"fn": fn})))
    assert res.status == "done" and res.progress.records == 4
    out = tmp_path / "out"
    got = cli(
        "export", "r", "--store", str(store), "--out", str(out), "--as", "prompt_completion", cwd=tmp_path
    )
    assert got.returncode == 0, got.stderr
    rows = sorted(pq.read_table(out / "data").to_pylist(), key=lambda r: r["prompt"])
    assert [r["prompt"].split("\n")[0] for r in rows] == ["Half of 1?", "Two plus two?"]
    assert rows[0]["completion"] == "<think>\none half\n</think>\n\n\\boxed{\\frac{1}{2}}"
    out2 = tmp_path / "out2"
    got = cli(
        "export", "r", "--store", str(store), "--out", str(out2), "--as", "reasoning_columns", cwd=tmp_path
    )
    assert got.returncode == 0, got.stderr
    cols = sorted(pq.read_table(out2 / "data").to_pylist(), key=lambda r: r["prompt"])
    first = cols[0]
    assert (first["reasoning"], first["answer"], first["final_answer"]) == (
        "one half",
        "\\boxed{\\frac{1}{2}}",
        "\\frac{1}{2}",
    )
    # the report shows the thinking budget, with the trace that hit max_tokens
    page = tmp_path / "report.html"
    got = cli("report", "r", "--store", str(store), "--out", str(page), cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    html = page.read_text(encoding="utf-8")
    assert "Thinking budget (output tokens per trace)" in html
    assert re.search(r"1\s+answers stopped at max_tokens", html)


def test_evaluation_scores_the_answer_after_the_thinking_only() -> None:
    from trainers.evaluate import agree, answer_of, gold_of

    # numbers in the thinking are not the answer; the boxed one after it is
    assert answer_of("<think>7 and 9 make 16</think>\n\nSo \\boxed{\\frac{3}{8}}.") == "\\frac{3}{8}"
    assert answer_of("<think>still thinking about 12") is None  # cut off before answering
    assert answer_of("The answer is 42.") == "42"  # rationales as before
    assert gold_of("3/8") == "3/8" and gold_of("\\frac{1}{2}") == "\\frac{1}{2}" and gold_of("42") == "42"
    assert agree(answer_of("<think>x</think>\\boxed{0.375}"), gold_of("3/8"), 1e-6)
    assert not agree("bank", "knab", 1e-6) and agree("42", "42.0", 1e-6)


@pytest.mark.slow
def test_a_run_streams_from_vllms_own_server_and_the_cache_serves_it_plain(
    tmp_path: Path, vllm_server: str
) -> None:
    """vLLM's OpenAI-compatible server on the embedded model: traces streamed (server-sent events), stored with
    their finish_reason, and the same requests asked plain are cache hits (streaming is not keyed)."""
    seeds = tmp_path / "q.jsonl"
    seeds.write_text(
        "".join(json.dumps({"id": f"q{i}", "question": q, "answer": a}) + "\n"
                for i, (q, a) in enumerate([("What is 2 + 3?", "5"), ("What is half of 8?", "4")])),
        encoding="utf-8",
    )  # fmt: skip
    store = tmp_path / "s.duckdb"

    def config(stream: bool) -> Path:
        return write_config(
            tmp_path,
            f"name: r-{stream}\nrecipe: reasoning\nseeds: {seeds}\nstore: {store}\nparams: {{k: 2, max_tokens: 48}}\n"
            f"teacher: {{spec: 'openai:smol@{vllm_server}', options: {{stream: {str(stream).lower()}}}}}\n",
            name=f"cfg-{stream}.yaml",
        )

    first = asyncio.run(api.run_async(api.prepare(config(True))))
    assert first.status == "done" and first.progress.requests_sent == 4 and first.progress.records == 4
    with duckdb.connect(str(store), read_only=True) as con:
        rows = con.execute("SELECT finish_reason, completion_tokens, text FROM cache").fetchall()
    assert len(rows) == 4 and all(f in ("stop", "length") and n > 0 and t for f, n, t in rows), rows
    again = asyncio.run(api.run_async(api.prepare(config(False))))  # another run: its answers from the cache
    assert again.status == "done" and again.progress.requests_sent == 0 and again.progress.cache_hits == 4
