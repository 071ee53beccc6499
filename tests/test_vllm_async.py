"""The vllm teacher on vLLM's async engine, with the embedded SmolLM2 model: one engine for the whole module
(it starts in about a minute on 2 CPU cores; it lives on a thread of its own, so every test's event loop
can use it).

What is checked: per-request outcomes in one call (schema, logprobs, a refused request, a prompt over
max_model_len), a seeded request's text alone and among others, a two-stage recipe's stages overlapping
in the engine, a Ctrl+C with requests in the engine, the run's seeds in flight sized from the engine, and
a `factory run` killed with SIGKILL: its progress line showed the tokens, and no engine process outlives it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, write_config

from factory import api
from factory.errors import TeacherRejected
from factory.export import export_run
from factory.runner import Runner, seeds_in_flight
from factory.store import Store
from factory.teachers import build_teacher
from factory.teachers import vllm_options as vo
from factory.types import Completion, Request, Sampling

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def greedy(prompt: str, max_tokens: int = 16, **kw) -> Request:
    return Request.chat(prompt, sampling=Sampling(temperature=0.0, max_tokens=max_tokens), **kw)


def sampled(prompt: str, seed: int, max_tokens: int = 24) -> Request:
    return Request.chat(prompt, sampling=Sampling(temperature=0.9, max_tokens=max_tokens, seed=seed))


class Trace:
    """The engine's ``generate`` calls as they happen: (time, "submit" | "done", prompt text)."""

    def __init__(self, teacher):
        self.events: list[tuple[float, str, str]] = []
        engine = teacher._engine
        inner = engine.generate
        tok = teacher._tokenizer

        async def generate(prompt, params, request_id, **kw):
            text = tok.decode(prompt["prompt_token_ids"])
            self.events.append((time.monotonic(), "submit", text))
            try:
                async for out in inner(prompt, params, request_id, **kw):
                    yield out
            finally:
                self.events.append((time.monotonic(), "done", text))

        self._engine, self._inner = engine, inner
        engine.generate = generate

    def close(self) -> None:
        self._engine.generate = self._inner


@pytest.fixture(scope="module")
def teacher(embedded_dir):
    t = build_teacher(f"vllm:{embedded_dir}", {"max_model_len": 1024})
    asyncio.run(t.complete([greedy("Hello.", max_tokens=2)]))  # start the engine once, here
    yield t
    asyncio.run(t.aclose())
    assert not t._loop_thread.running


def test_outcomes_per_request_in_one_call(teacher):
    reqs = [
        greedy("Name three fruits.", max_tokens=24),
        greedy("What is the capital of France?", max_tokens=24, logprobs=2),
        greedy("Describe a person called Ada who is 36, as JSON.", max_tokens=64, json_schema=SCHEMA),
        greedy("word " * 1500),  # over max_model_len
        Request.chat("x", sampling=Sampling(max_tokens=8), json_schema={"type": "nonsense"}),  # refused
    ]
    out = asyncio.run(teacher.complete(reqs))
    for c in out[:3]:
        assert isinstance(c, Completion), c
        assert c.text.strip() and c.completion_tokens > 0 and c.prompt_tokens > 0
    lp = out[1].logprobs  # the canonical form: the generated ids, the 2 best ids and logprobs a position
    assert lp is not None and lp.has_ids and lp.token_ids is not None and lp.top_ids is not None
    assert len(lp.token_ids) == out[1].completion_tokens == len(lp.top_ids) == len(lp.top_logprobs)
    assert all(len(ids) == 2 and len(lps) == 2 for ids, lps in zip(lp.top_ids, lp.top_logprobs, strict=True))
    assert all(lps[0] >= lps[1] for lps in lp.top_logprobs)
    assert lp.token_ids == [ids[0] for ids in lp.top_ids]  # greedy: the generated token is the best one
    assert teacher._tokenizer.decode(lp.token_ids, skip_special_tokens=True).strip() == out[1].text.strip()
    doc = json.loads(out[2].text)
    assert set(doc) == {"name", "age"} and isinstance(doc["age"], int)
    assert isinstance(out[3], TeacherRejected) and out[3].kind == "too_long" and out[3].cacheable
    assert isinstance(out[4], TeacherRejected) and out[4].kind == "invalid_request"
    assert teacher.errors["too_long"] >= 1 and teacher.errors["invalid_request"] >= 1
    assert teacher.in_flight == 0
    # the engine started with the CPU's defaults, and says so
    assert (
        teacher.describe()["device"] == "cpu" and teacher.describe()["engine_options"] == vo.BY_DEVICE["cpu"]
    )


def test_a_seeded_request_gets_its_text_whatever_else_is_in_flight(teacher):
    probe = sampled("Write one sentence about the sea.", seed=11)
    alone = asyncio.run(teacher.complete([probe]))[0]
    others = [sampled(f"Tell me about the number {i}.", seed=i, max_tokens=8 + 6 * i) for i in range(6)]

    async def mixed():
        first = asyncio.ensure_future(teacher.complete(others[:3]))
        await asyncio.sleep(0.3)  # the probe joins a batch already decoding
        got = await asyncio.gather(teacher.complete([probe]), teacher.complete(others[3:]))
        return got[0][0], await first

    in_company, firsts = asyncio.run(mixed())
    assert isinstance(alone, Completion) and isinstance(in_company, Completion)
    assert in_company.text == alone.text and alone.completion_tokens > 0
    assert all(isinstance(c, Completion) for c in firsts)


def _commonsense(tmp_path: Path, seeds: int, extra: str = "") -> Path:
    lines = (ROOT / "data/seeds/commonsense_events.jsonl").read_text().splitlines()[:seeds]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    return write_config(
        tmp_path,
        f"name: cs\nrecipe: commonsense\nseeds: events.jsonl\nstore: s.duckdb\n"
        "params: {relations: [xNeed], samples: 1, new_events: 1, max_tokens: 24}\n"
        f"curation: {{recipe_filters: false}}\n{extra}",
    )


def test_two_stage_recipe_stages_overlap_in_the_engine(teacher, tmp_path):
    cfg = _commonsense(tmp_path, seeds=4)
    trace = Trace(teacher)
    try:
        res = asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher))
    finally:
        trace.close()
    assert res.status == "done", res.error
    events = [(t, what) for t, what, text in trace.events if "new event" in text.lower()]
    tails = [(t, what) for t, what, text in trace.events if "new event" not in text.lower()]
    assert len([1 for _, w in events if w == "submit"]) == 4
    last_event_done = max(t for t, w in events if w == "done")
    first_tail_sent = min(t for t, w in tails if w == "submit")
    # continuous batching: a seed's second stage reaches the engine while other seeds' first stage runs
    assert first_tail_sent < last_event_done


def test_soft_labels_of_the_engine_come_back_from_the_cache_and_the_export(teacher, tmp_path, monkeypatch):
    cfg = _commonsense(tmp_path, seeds=2)
    cfg.write_text(cfg.read_text().replace("max_tokens: 24}", "max_tokens: 16, logprobs: 2}"))
    seen: list[Completion] = []
    generate = Runner.generate

    async def spy(self, req, *, teacher="default"):
        c = await generate(self, req, teacher=teacher)
        if req.logprobs:
            seen.append(c)
        return c

    monkeypatch.setattr(Runner, "generate", spy)
    first = asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher))
    assert first.status == "done", first.error
    paid = {c.key: c.logprobs for c in seen if not c.cached}
    assert paid and all(lp is not None and lp.has_ids for lp in paid.values())
    seen.clear()
    cfg.write_text(cfg.read_text().replace("name: cs", "name: cs2"))
    again = asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher))
    assert again.status == "done" and seen and all(c.cached for c in seen)
    assert {c.key: c.logprobs for c in seen} == paid  # float32 stored, exactly what the engine gave
    with Store(tmp_path / "s.duckdb") as st:
        res = export_run(st, again.run_id, tmp_path / "out", fmt="jsonl", shape="records", stage="tails",
                         include_rejected=True)  # fmt: skip
        tokens = dict(st.con.execute("SELECT key, completion_tokens FROM cache").fetchall())
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert rows and res.soft_labels == {"with ids": len(rows)}
    for r in rows:
        assert len(r["teacher_token_ids"]) == tokens[r["request_keys"][0]] == len(r["teacher_top_ids"])
        assert all(len(ids) == 2 and len(lps) == 2 for ids, lps in zip(r["teacher_top_ids"],
                                                                       r["teacher_top_logprobs"], strict=True))  # fmt: skip


def test_ctrl_c_aborts_the_requests_in_the_engine(teacher, tmp_path):
    cfg = _commonsense(tmp_path, seeds=8, extra="runner: {drain_s: 0}\n")
    cfg.write_text(cfg.read_text().replace("max_tokens: 24", "max_tokens: 256"))

    def interrupt() -> None:
        deadline = time.monotonic() + 300
        while teacher.in_flight < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.monotonic()
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher, handle_signals=True))
    assert res.status == "interrupted" and res.progress.seeds_done < 8
    assert res.progress.abandoned >= 4
    # the engine dropped them (no sequence left decoding), and serves the next request at once
    deadline = time.monotonic() + 30
    while teacher._engine.get_num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert teacher._engine.get_num_unfinished_requests() == 0 and teacher.in_flight == 0
    after = asyncio.run(teacher.complete([greedy("Say hi.", max_tokens=4)]))[0]
    assert isinstance(after, Completion)
    assert time.monotonic() - t0 < 240


def test_seeds_in_flight_come_from_the_engine(teacher, tmp_path):
    cap = teacher.suggested_in_flight()
    seqs = teacher._max_num_seqs
    assert seqs and teacher._kv_tokens > 0
    assert 2 <= cap <= 2 * seqs
    assert seeds_in_flight(None, teacher, 64) is None  # the run asks the engine
    assert seeds_in_flight(5, teacher, 64) == 5  # unless the config says


def test_a_killed_run_shows_its_tokens_and_leaves_no_engine_process(embedded_dir, tmp_path):
    """`factory run` on the vllm teacher, in a process of its own: its progress line shows the output tokens
    while they are generated; killed with SIGKILL then, its engine's processes do not outlive it."""
    psutil = pytest.importorskip("psutil")
    (tmp_path / "s.jsonl").write_text(
        "".join(
            f'{{"id": "q{i}", "question": "Write a long story about the number {i}."}}\n' for i in range(8)
        )
    )
    cfg = write_config(
        tmp_path,
        f"name: k\nrecipe: prompt\nseeds: s.jsonl\nstore: s.duckdb\n"
        f"teacher: {{spec: 'vllm:{embedded_dir}', options: {{max_model_len: 1024}}}}\n"
        "params: {template: '{{ question }}', required: [question], max_tokens: 512}\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "factory.cli", "run", str(cfg)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = ""
        for line in proc.stderr:  # plain lines: the first as soon as the first output tokens come
            seen += line
            m = re.search(r"(\d+) answered · (\d+) in flight · (\d+) out tok · [\d.]+ tok/s", line)
            if m and int(m[3]) > 0:
                break
        else:
            pytest.fail(f"no progress line with output tokens:\n{seen[-3000:]}")
        engine = [
            p for p in psutil.Process(proc.pid).children(recursive=True)
            if not any("reaper" in c or "resource_tracker" in c for c in p.cmdline())
        ]  # fmt: skip
        assert engine and any("EngineCore" in " ".join(p.cmdline()) + p.name() for p in engine), engine
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(engine, timeout=30)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
