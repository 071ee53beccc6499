"""The progress line a run shows: a local engine's tokens as they are generated, and an ETA from their rate."""

import asyncio

from conftest import write_config

from factory import api
from factory.cli import ProgressView
from factory.plan import Progress
from factory.teachers.scripted import ScriptedTeacher

WORDS = 12  # words (tokens, to the scripted teacher) of each answer


def _streaming_run(tmp_path, seeds: int, token_s: float, window: int | None = None):
    """A run of ``seeds`` one-request seeds on a scripted teacher that generates like a local engine (one word
    every ``token_s``), ``window`` seeds in flight at once (default: all); every progress report is kept."""
    (tmp_path / "s.jsonl").write_text(
        "".join(f'{{"id": "q{i}", "question": "question {i}"}}\n' for i in range(seeds)), encoding="utf-8"
    )
    cfg = write_config(
        tmp_path,
        f"name: p\nrecipe: prompt\nseeds: s.jsonl\nstore: {tmp_path / 's.duckdb'}\nteacher: scripted:x\n"
        f"params: {{template: '{{{{ question }}}}', required: [question], max_tokens: 64}}\n"
        f"runner: {{commit_interval_s: 0.05, max_seeds_in_flight: {window or seeds}}}\n",
    )
    teacher = ScriptedTeacher("scripted:x", "x", {"default": " ".join(["word"] * WORDS), "token_s": token_s})
    reports: list[Progress] = []
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher, on_progress=reports.append))
    return res, reports


def test_a_local_engine_shows_tokens_in_flight_and_an_eta_before_any_seed_is_done(tmp_path):
    res, reports = _streaming_run(tmp_path, seeds=8, token_s=0.05)
    assert res.status == "done" and res.progress.completion_tokens == 8 * WORDS
    # while every answer is still being generated: no seed done, yet the tokens show and the ETA is known
    mid = [p for p in reports if p.seeds_done == 0 and p.partial_tokens > 0]
    assert mid, [(p.seeds_done, p.partial_tokens) for p in reports]
    view = ProgressView(8, 0, "p")
    for p in mid:
        assert p.streaming and p.answered == 0 and p.in_flight == 8
        assert 0 < p.output_tokens < 8 * WORDS
        # before the first answer, each request is expected to take its max_tokens (an upper bound)
        assert p.tokens_left == 8 * 64 - p.output_tokens
        assert p.eta_s is not None and p.eta_s > 0
        line = view.info(p)
        assert line.startswith(f"0 answered · 8 in flight · {p.output_tokens} out tok · ")
        assert " tok/s · 0 cached · 0 failed attempts · ETA " in line and "ETA ?" not in line
    assert float(view.info(mid[-1]).split(" tok/s")[0].rsplit(" ", 1)[1]) > 0  # the rate over the reports
    # once the answers are in, nothing is left in flight and every token is an answer's
    last = res.progress
    assert last.partial_tokens == 0 and last.output_tokens == last.completion_tokens
    assert last.tokens_left == 0 and last.answered == 8


def test_the_eta_follows_the_answers_once_some_are_in(tmp_path):
    """With answers in, each request left is expected at the mean answer's length: the seeds not done, less
    what is generated already (a seed that is starting or finishing may be off by one)."""
    res, reports = _streaming_run(tmp_path, seeds=8, token_s=0.02, window=2)
    assert res.status == "done"
    some = [p for p in reports if 0 < p.answered < 8]
    assert some
    for p in some:
        left = (8 - p.seeds_done) * WORDS - p.partial_tokens
        assert left - 2 * WORDS <= p.tokens_left <= left
        if p.eta_s is not None:
            assert p.eta_s == p.tokens_left * p.generating_s / p.output_tokens


def test_an_api_teacher_keeps_its_seed_eta_and_request_rate():
    p = Progress(100, 40, 0, 40, 50, 0, 10, 0, 400, {}, 10.0, answered=40)
    assert not p.streaming and p.eta_s == 60 * 10.0 / 40
    assert (
        ProgressView(100, 0, "p").info(p).startswith("5.0 req/s · 50 sent · 0 cached · 10 pending · 400 out")
    )
