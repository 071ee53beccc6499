"""Refusals of one request: which are cached (and served again until --retry-failed asks anew), which are
retried, and what an answer without content is. Real servers on 127.0.0.1 (the fault server, small
http.server answers), the real CLI in a subprocess, real DuckDB stores."""

from __future__ import annotations

import asyncio

import duckdb
import orjson
from conftest import write_config
from teacher_faults import (
    answering,
    ask,
    completion,
    heal_config,
    run_cli,
    seeds_in,
)

from factory import api
from factory.errors import TeacherRejected, TeacherUnavailable
from factory.store import CACHE_COLUMNS, Store
from factory.teachers.scripted import ScriptedTeacher
from factory.testing.fault_server import FaultConfig, serve_in_thread


def test_old_cached_api_refusals_are_set_aside_and_asked_again(tmp_path):
    """A store from before m004 holds an API's 401 as a cached rejection; opening it sets that aside, so the
    next run sends that request again (and only that one)."""
    store = tmp_path / "s.duckdb"
    with serve_in_thread(FaultConfig()) as srv:
        cfg = heal_config(tmp_path, f"openai:fault-server@{srv.base_url}")
        assert run_cli("run", str(cfg)).returncode == 0
        with duckdb.connect(str(store)) as con:  # make it what an older version left behind
            key, seed = con.execute(
                "SELECT c.key, r.seed_id FROM cache c JOIN records r ON list_contains(r.request_keys, c.key) "
                "ORDER BY c.key LIMIT 1"
            ).fetchone()
            con.execute(
                "UPDATE cache SET status = 'rejected', text = NULL, error = 'HTTP 401: bad key' WHERE key = ?",
                [key],
            )
            con.execute("DELETE FROM records WHERE seed_id = ?", [seed])
            con.execute("DELETE FROM seeds_done WHERE seed_id = ?", [seed])
            con.execute(  # a local engine's too_long stays cached: the keyed request always gets it
                "INSERT INTO cache SELECT * REPLACE ('local-too-long' AS key, 'vllm:/models/x' AS teacher) "
                "FROM cache WHERE key = ?",
                [key],
            )
            con.execute("DELETE FROM _migrations WHERE name = 'm004_uncached_failures'")
        before = srv.stats()["requests"]
        res = run_cli("run", str(cfg))
        assert res.returncode == 0, res.stderr
        assert "1 cached API refusals set aside" in res.stderr  # the user is told what changed
        assert srv.stats()["requests"] - before == 1
    with Store(store, read_only=True) as st:
        retired = st.con.execute("SELECT key, retired_reason FROM cache_retired").fetchall()
        status = st.con.execute("SELECT status FROM cache WHERE key = ?", [key]).fetchone()
        local = st.con.execute("SELECT status FROM cache WHERE key = 'local-too-long'").fetchone()
    assert retired == [(key, "an API refusal, no longer cached")] and status == ("ok",)
    assert local == ("rejected",)


def test_retry_failed_asks_a_cached_rejection_again(tmp_path):
    seeds = seeds_in(tmp_path, 4)
    cfg = write_config(
        tmp_path,
        f"name: r\nrecipe: rationales\nseeds: {seeds}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: scripted:x\nparams: {k: 1}\nrunner: {commit_interval_s: 0.05}\n",
    )
    first_q = orjson.loads(seeds.read_text().splitlines()[0])["question"]

    def run(fn, **kw):
        t = ScriptedTeacher("scripted:x", "x", {"fn": fn})
        return asyncio.run(api.run_async(api.prepare(cfg), teacher=t, **kw)), t

    too_long = lambda r: None if first_q in r.messages[-1]["content"] else "x. The answer is 1."  # noqa: E731
    res, _ = run(too_long)
    assert res.status == "incomplete"
    res, t = run(lambda r: "x. The answer is 1.")  # the rejection is cached: a plain re-run does not ask
    assert res.status == "incomplete" and len(t.calls) == 0 and res.progress.cache_hits == 1
    res, t = run(lambda r: "x. The answer is 2.", retry_failed=True)
    assert res.status == "done" and len(t.calls) == 1
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        assert st.con.execute("SELECT DISTINCT status FROM cache").fetchall() == [("ok",)]
    res, t = run(lambda r: "never")
    assert res.status == "done" and len(t.calls) == 0


def test_an_answer_journaled_by_retry_failed_replaces_the_rejection_after_a_crash(tmp_path):
    """--retry-failed journals the new answer before it commits it; if the process dies in between, the
    next open replays it in place of the cached rejection instead of dropping it as a duplicate key."""
    cfg = write_config(
        tmp_path,
        f"name: r\nrecipe: rationales\nseeds: {seeds_in(tmp_path, 2)}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: scripted:x\nparams: {k: 1}\nrunner: {commit_interval_s: 0.05}\n",
    )
    t = ScriptedTeacher("scripted:x", "x", {"default": None})
    assert asyncio.run(api.run_async(api.prepare(cfg), teacher=t)).status == "incomplete"
    store = tmp_path / "s.duckdb"
    with Store(store) as st:
        (row,) = st.con.execute("SELECT * EXCLUDE (created_at) FROM cache ORDER BY key LIMIT 1").fetchall()
        cols = [d[0] for d in st.con.description]
        answered = dict(zip(cols, row, strict=True)) | {
            "status": "ok",
            "text": "paid. The answer is 1.",
            "error": None,
        }
        journal = st.journal()  # what a killed --retry-failed run leaves behind
        journal.append(tuple(answered[c] for c in CACHE_COLUMNS))
        journal.close()
    with Store(store) as st:
        got = st.con.execute("SELECT status, text FROM cache WHERE key = ?", [answered["key"]]).fetchall()
    assert got == [("ok", "paid. The answer is 1.")]


def test_retry_failed_through_the_cli(tmp_path):
    """A local engine's rejection is cached: a plain re-run serves it (and says how to ask again), the
    flag sends it again."""
    cfg = write_config(
        tmp_path,
        f"name: r\nrecipe: rationales\nseeds: {seeds_in(tmp_path, 2)}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: {spec: 'scripted:x', options: {default: null}}\nparams: {k: 1}\n",
    )
    first = run_cli("run", str(cfg), "--json")
    assert first.returncode == 1 and "add --retry-failed" in first.stderr, first.stderr
    plain = run_cli("run", str(cfg), "--json")
    retried = run_cli("run", str(cfg), "--json", "--retry-failed")
    assert orjson.loads(plain.stdout)["requests_sent"] == 0, plain.stdout
    assert orjson.loads(retried.stdout)["requests_sent"] == 2, retried.stdout
    assert retried.returncode == 1 and "--retry-failed" not in retried.stderr


def test_other_400s_stay_refusals_of_one_request():
    body = orjson.dumps({"error": {"message": "This model's maximum context length is 4096 tokens"}})
    with answering(400, body) as url:
        out, t = ask(url)
    assert type(out) is TeacherRejected and not out.cacheable and t.attempts == 1


def test_a_200_without_content_is_never_an_empty_success():
    with answering(200, completion(None, "length")) as url:
        out, t = ask(url)
    assert isinstance(out, TeacherRejected) and not out.cacheable and "max_tokens" in str(out)
    assert t.attempts == 1  # spent on reasoning: asking again the same way cannot help
    with answering(200, completion(None)) as url:
        out, t = ask(url)
    assert isinstance(out, TeacherUnavailable) and out.kind == "empty_content" and t.attempts == 3


def test_a_200_whose_message_has_no_content_key_is_retried_and_named():
    body = orjson.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant"}, "finish_reason": "stop"}]}
    )
    with answering(200, body) as url:
        out, t = ask(url)
    assert isinstance(out, TeacherUnavailable) and out.kind == "empty_content" and t.attempts == 3
    assert "no content" in str(out)


def test_an_html_error_page_is_named_not_dumped():
    page = b"<html><head><title>502 Bad Gateway</title></head><body>" + b"x" * 5000 + b"</body></html>"
    with answering(404, page, "text/html") as url:
        out, _ = ask(url)
    assert "an HTML page (502 Bad Gateway)" in str(out) and len(str(out)) < 600
