"""Reasoning teachers against the fault server on 127.0.0.1: reasoning kept apart from the answer (server
field or think tags), streamed and plain answers alike, broken and stalled streams retried, time-outs that
scale, and length-cut answers kept with their finish_reason for the `truncated` filter."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import tomllib
from conftest import ROOT, write_seeds
from safetensors.numpy import save_file

from factory import api
from factory.errors import ConfigError
from factory.store import Store
from factory.store.migrations import MIGRATIONS
from factory.teachers import build_teacher
from factory.teachers.openai import STREAM_MIN_TOKENS, OpenAITeacher
from factory.teachers.reasoning import split
from factory.testing.fault_server import FaultConfig, serve_in_thread
from factory.testing.fault_stream import trace
from factory.types import Completion, Request, Sampling

THINK = ("<think>", "</think>")


def _teacher(url: str, **opts) -> OpenAITeacher:
    opts.setdefault("backoff_base_s", 0.01)
    return OpenAITeacher(f"openai:m@{url}", f"m@{url}", opts)


async def _ask(t: OpenAITeacher, reqs: list[Request]) -> list:
    try:
        return await t.complete(reqs)
    finally:
        await t.aclose()


def _reqs(n: int, max_tokens: int = 256) -> list[Request]:
    return [Request.chat(f"question {i}", sampling=Sampling(seed=i, max_tokens=max_tokens)) for i in range(n)]


@pytest.mark.parametrize(
    ("text", "finish", "answer", "reasoning"),
    [
        ("<think>\nweigh it\n</think>\n\nThe answer is 4.", "stop", "The answer is 4.", "weigh it"),
        ("  <think>a</think>b", "stop", "b", "a"),
        ("weigh it</think>\n\n4", "stop", "4", "weigh it"),  # the opening tag was in the prompt
        ("<think>\nstill weighing", "length", "", "still weighing"),  # cut inside the trace
        ("<think></think>4", "stop", "4", None),  # an empty trace is no reasoning
        ("The answer is 4.", "stop", "The answer is 4.", None),
        ("say <think> and </think> later", "stop", "say <think> and </think> later", None),
    ],
)
def test_think_tags_split_the_answer_from_its_reasoning(text, finish, answer, reasoning):
    assert split(text, THINK) == (answer, reasoning)
    assert split(text, None) == (text, None)


@pytest.mark.parametrize("mode", ["reasoning_content", "reasoning", "think"])
def test_reasoning_is_captured_and_streamed_equals_plain(mode):
    reqs = _reqs(3) + _reqs(2, max_tokens=20)  # the last two are cut inside the trace
    with serve_in_thread(FaultConfig(reasoning=mode, stream_chunk_chars=7)) as srv:
        plain = asyncio.run(_ask(_teacher(srv.base_url, stream=False), reqs))
        streamed = asyncio.run(_ask(_teacher(srv.base_url, stream=True), reqs))
    assert all(isinstance(c, Completion) for c in plain + streamed), plain + streamed
    for p, s in zip(plain, streamed, strict=True):
        assert (p.text, p.reasoning, p.finish_reason, p.prompt_tokens, p.completion_tokens) == (
            s.text, s.reasoning, s.finish_reason, s.prompt_tokens, s.completion_tokens,
        )  # fmt: skip
    for c in plain[:3]:
        assert c.finish_reason == "stop" and c.text.startswith("Step 1:") and "</think>" not in c.text
        assert c.reasoning and c.reasoning.startswith("Let me think about request")
        assert c.completion_tokens > len(c.text) // 4  # the trace is paid for too
    for c in plain[3:]:  # cut inside the trace: all reasoning, no answer, and it says why
        assert c.finish_reason == "length" and c.text == "" and c.reasoning
        assert "<think>" not in c.reasoning


def test_auto_streams_large_max_tokens_and_a_long_stream_never_times_out_while_it_flows():
    bodies: list[dict] = []

    def reply(messages, body):
        bodies.append(body)
        return "The answer is 4."

    # 16 chunks 40 ms apart: 0.6 s in all, four times the idle time-out, never silent for 0.15 s
    cfg = FaultConfig(
        reply=reply, reasoning="think", reasoning_tokens=40, stream_chunk_chars=16, stream_delay=0.04
    )
    with serve_in_thread(cfg) as srv:
        t = _teacher(srv.base_url, idle_timeout_s=0.15, max_retries=0)
        big = Request.chat("long one", sampling=Sampling(max_tokens=STREAM_MIN_TOKENS))
        t0 = time.perf_counter()
        long_out, short_out = asyncio.run(_ask(t, [big, *_reqs(1)]))
        took = time.perf_counter() - t0
    assert isinstance(long_out, Completion) and long_out.text == "The answer is 4.", long_out
    assert isinstance(short_out, Completion) and short_out.text == "The answer is 4.", short_out
    assert took > 0.5 and not t.errors
    streamed = {b["max_tokens"]: bool(b.get("stream")) for b in bodies}
    assert streamed == {STREAM_MIN_TOKENS: True, 256: False}
    assert next(b for b in bodies if b.get("stream"))["stream_options"] == {"include_usage": True}
    assert long_out.prompt_tokens > 0 and long_out.completion_tokens > 40  # from the usage chunk


@pytest.mark.parametrize("stream", [True, False])
def test_a_broken_or_stalled_answer_is_retried_and_its_partial_text_never_taken(stream):
    cfg = FaultConfig(
        reasoning="reasoning_content", fault_rate=1.0, fault_kinds=("disconnect", "stall"), fault_repeats=1,
        hang_seconds=30,
    )  # fmt: skip
    seen: list = []
    with serve_in_thread(cfg) as srv:
        t = _teacher(
            srv.base_url, stream=stream, idle_timeout_s=0.3, request_timeout_s=0.3, timeout_per_1k_tokens_s=0
        )
        t.on_answer = lambda req, out: seen.append(out)  # what a runner journals
        t0 = time.perf_counter()
        out = asyncio.run(_ask(t, _reqs(6)))
        took = time.perf_counter() - t0
        dropped = srv.stats()["dropped"]
    assert set(dropped) == {"disconnect", "stall"}  # both kinds were sent, halfway through the answer
    assert took < 10  # a stall ends by the client's time-out, not the server's 30 s
    assert all(isinstance(c, Completion) and c.text.startswith("Step 1:") for c in out), out
    assert all(c.reasoning == trace(_key_of(c), 48) for c in out)
    assert t.errors["timeout"] == dropped["stall"] and t.errors["connection"] == dropped["disconnect"]
    # only whole answers reach the journal's hook, each once
    assert sorted(id(c) for c in seen) == sorted(id(c) for c in out)


def _key_of(c: Completion) -> str:
    return c.reasoning.split("request ")[1][:8] if c.reasoning else ""


def test_time_outs_scale_with_max_tokens_and_options_are_checked():
    t = build_teacher("openai:m@http://127.0.0.1:9/v1", {})
    assert t.timeout_for(Request.chat("x", sampling=Sampling(max_tokens=256))) == pytest.approx(120 + 7.68)
    assert t.timeout_for(Request.chat("x", sampling=Sampling(max_tokens=32768))) == pytest.approx(
        120 + 983.04
    )
    tuned = build_teacher(
        "openai:m@http://127.0.0.1:9/v1", {"request_timeout_s": 10, "timeout_per_1k_tokens_s": 5}
    )
    assert tuned.timeout_for(Request.chat("x", sampling=Sampling(max_tokens=4000))) == pytest.approx(30)
    for bad, field in (({"think_tags": ["<think>"]}, "think_tags"), ({"stream": "yes"}, "stream"),
                       ({"idle_timeout_s": 0}, "idle_timeout_s"), ({"timeout_per_1k_tokens_s": -1}, "per_1k")):  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            build_teacher("openai:m@http://127.0.0.1:9/v1", bad)


def test_streaming_and_time_outs_are_not_keyed_and_other_think_tags_are(tmp_path):
    url = "http://127.0.0.1:9/v1"
    base = build_teacher(f"openai:m@{url}").identity()
    assert base == build_teacher(f"openai:m@{url}", {"stream": True, "idle_timeout_s": 5,
                                                     "timeout_per_1k_tokens_s": 1}).identity()  # fmt: skip
    assert base == build_teacher(f"openai:m@{url}", {"think_tags": ["<think>", "</think>"]}).identity()
    assert build_teacher(f"openai:m@{url}", {"think_tags": ["<reason>", "</reason>"]}).identity() != base
    assert build_teacher(f"openai:m@{url}", {"think_tags": None}).identity()["think_tags"] is None
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32}))
    save_file({"w": np.ones(4, np.float32)}, str(folder / "model.safetensors"))
    for backend in ("vllm", "transformers"):
        local = build_teacher(f"{backend}:{folder}").identity()
        assert "think_tags" not in local["options"]
        other = build_teacher(f"{backend}:{folder}", {"think_tags": ["<r>", "</r>"]}).identity()
        assert other["options"]["think_tags"] == ["<r>", "</r>"]


def test_an_older_store_gets_the_reasoning_column_and_keeps_its_answers(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT now())")
    for fn in MIGRATIONS:
        if fn.__name__ in ("m010_cache_reasoning", "m011_no_key_indexes"):  # m011 copies m010's column
            continue
        fn(con)
        con.execute("INSERT INTO _migrations (name) VALUES (?)", [fn.__name__])
    con.execute(
        "INSERT INTO cache (key, teacher, status, request, text) VALUES ('k', 't', 'ok', '{}', 'old')"
    )
    con.execute("INSERT INTO cache_retired SELECT *, 'set aside', now() FROM cache")
    con.close()
    with Store(path) as st:
        assert st.lookup(["k"])["k"]["text"] == "old" and st.lookup(["k"])["k"]["reasoning"] is None
        cols = [
            r[0]
            for r in st._rows(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = 'cache_retired' ORDER BY column_index"
            )
        ]
        assert cols[-3:] == ["reasoning", "retired_reason", "retired_at"]  # cache's columns, then its own
        assert st._rows("SELECT key, text, retired_reason FROM cache_retired") == [("k", "old", "set aside")]
        st._rows("INSERT INTO cache_retired SELECT *, 'again', now() FROM cache")  # what m004 writes fits
        assert st._scalar("SELECT count(*) FROM _migrations WHERE name = 'm010_cache_reasoning'") == 1
        assert st._scalar("SELECT count(*) FROM _migrations WHERE name = 'm011_no_key_indexes'") == 1


def test_truncated_is_registered_like_the_other_built_in_filters():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (
        meta["project"]["entry-points"]["distill_factory.filters"]["truncated"] == "filters.truncated:FILTER"
    )


def _reply(messages, body):
    """Short answers for even-length questions, long ones (cut at max_tokens 80) for odd ones."""
    return "The answer is 4." if len(messages[-1]["content"]) % 2 == 0 else "We add them all up. " * 12


def _config(tmp: Path, name: str, url: str, stream: bool) -> Path:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\nrecipe: prompt\nseeds: seeds.jsonl\nstore: s.duckdb\n"
        "params: {template: '{{ question }}', required: [question], max_tokens: 80}\n"
        f"teacher: {{spec: 'openai:m@{url}', max_retries: 3, options: {{backoff_base_s: 0.01, stream: {str(stream).lower()}, "
        "idle_timeout_s: 0.5}}\nrunner: {commit_interval_s: 0.05}\n"
        "filters: ['filters.truncated:FILTER']\n"
    )
    return cfg


def test_a_run_stores_reasoning_serves_it_from_the_cache_and_drops_cut_answers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_seeds(tmp_path / "seeds.jsonl", 8)
    cfg = FaultConfig(
        reply=_reply, reasoning="reasoning_content", fault_rate=0.5, fault_kinds=("disconnect",)
    )
    with serve_in_thread(cfg) as srv:
        first = asyncio.run(api.run_async(api.prepare(_config(tmp_path, "streamed", srv.base_url, True))))
        stats = srv.stats()
        # the same requests sent plain: every answer is a cache hit, reasoning included
        second = asyncio.run(api.run_async(api.prepare(_config(tmp_path, "plain", srv.base_url, False))))
        assert srv.stats()["requests"] == stats["requests"]
    assert first.status == second.status == "done"
    assert (
        stats["dropped"].get("disconnect", 0) >= 1 and stats["requests"] == 8 + stats["dropped"]["disconnect"]
    )
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        rows = st._dicts("SELECT key, request, text, reasoning, finish_reason FROM cache ORDER BY key")
        records = st._dicts("SELECT run_id, payload, request_keys FROM records ORDER BY run_id, seed_id")
        verdicts = st._dicts(
            "SELECT v.record_id, v.keep, v.reason, r.payload FROM verdicts v JOIN records r ON r.id = v.record_id "
            "WHERE v.filter = 'truncated' AND r.run_id = ?",
            [str(first.run_id)],
        )
    assert len(rows) == 8  # one answer per request; a broken stream left nothing behind
    for row in rows:
        question = json.loads(row["request"])["messages"][-1]["content"]
        full = _reply([{"content": question}], {})
        assert row["reasoning"] == trace(row["reasoning"].split("request ")[1][:8], 48)
        if row["finish_reason"] == "stop":
            assert row["text"] == full
        else:  # cut at 80 tokens = 320 characters, the trace's 192 first
            assert row["finish_reason"] == "length" and row["text"] == full[: 320 - len(row["reasoning"])]
    assert {r["finish_reason"] for r in rows} == {"stop", "length"}
    by_key = {r["key"]: r for r in rows}
    for rec in records:  # both runs' records carry the stored reasoning (the second from cache hits)
        (key,) = rec["request_keys"]
        assert json.loads(rec["payload"])["reasoning"] == by_key[key]["reasoning"]
    assert len(verdicts) == 8
    for v in verdicts:
        cut = json.loads(v["payload"])["finish_reason"] == "length"
        assert v["keep"] is (not cut)
        assert (v["reason"] or "").startswith("an answer cut off (finish_reason 'length')") is cut


def test_an_error_status_to_a_streamed_request_is_read_as_json_and_retried():
    cfg = FaultConfig(
        reasoning="think", fault_rate=1.0, fault_kinds=("500", "429"), fault_repeats=1, retry_after=0.01
    )
    with serve_in_thread(cfg) as srv:
        t = _teacher(srv.base_url, stream=True, learn_rate_limit=False)
        out = asyncio.run(_ask(t, _reqs(6)))
    assert all(isinstance(c, Completion) and c.reasoning for c in out), out
    assert set(t.errors) <= {"http_500", "http_429"} and sum(t.errors.values()) == 6
    assert "injected fault" in " ".join(t.examples.values())  # the JSON error body, not an event stream
