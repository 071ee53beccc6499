"""Failures that heal: what a wrong key, model or URL does to a run, and that a re-run after the fix sends
what it must. Real servers on 127.0.0.1 (the fault server with a required key or a strict model name,
small http.server answers), the real CLI in a subprocess, real DuckDB stores."""

from __future__ import annotations

import asyncio
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import orjson
import pytest
from conftest import SEEDS, write_config

from factory import api
from factory.errors import ConfigError, TeacherMisconfigured, TeacherRejected, TeacherUnavailable
from factory.store import CACHE_COLUMNS, Store
from factory.teachers import build_teacher
from factory.teachers.api_errors import scrub, server_message
from factory.teachers.http import Pool
from factory.teachers.scripted import ScriptedTeacher
from factory.testing.fault_server import FaultConfig, serve_in_thread
from factory.types import Request, Sampling

ROOT = Path(__file__).resolve().parents[1]
GOOD_KEY = "sk-good-0123456789abcdefghijklmnop"
WRONG_KEY = "sk-wrong-0123456789abcdefghijklmnop"


def _seeds(tmp: Path, n: int = 6) -> Path:
    p = tmp / "seeds.jsonl"
    p.write_text("\n".join(SEEDS.read_text(encoding="utf-8").splitlines()[:n]) + "\n", encoding="utf-8")
    return p


def _config(tmp: Path, spec: str, extra_teacher: str = "", n_seeds: int = 6) -> Path:
    return write_config(
        tmp,
        f"name: heal\nrecipe: rationales\nseeds: {_seeds(tmp, n_seeds)}\nstore: {tmp / 's.duckdb'}\n"
        f"teacher: {{spec: '{spec}', max_in_flight: 4, max_retries: 1, options: {{backoff_base_s: 0.01}}{extra_teacher}}}\n"
        "params: {k: 2, max_tokens: 32}\nrunner: {commit_interval_s: 0.05}\n",
    )


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


def _store_bytes(store: Path) -> bytes:
    parts = [store, store.with_name(store.name + ".wal")]
    journal = store.with_name(store.name + ".journal")
    parts += sorted(journal.glob("*")) if journal.is_dir() else []
    return b"".join(p.read_bytes() for p in parts if p.is_file())


def _cache_rows(store: Path) -> list[tuple[str, str]]:
    with Store(store, read_only=True) as st:
        return st.con.execute("SELECT status, teacher FROM cache ORDER BY key").fetchall()


def test_a_wrong_key_stops_at_once_caches_nothing_and_the_fixed_key_heals(tmp_path):
    with serve_in_thread(FaultConfig(api_key=GOOD_KEY)) as srv:
        cfg = _config(tmp_path, f"openai:fault-server@{srv.base_url}", ", api_key_env: HEAL_KEY")
        bad = _cli("run", str(cfg), env={"HEAL_KEY": WRONG_KEY})
        sent_bad = srv.stats()["requests"]
        assert bad.returncode == 5, bad.stderr
        host = srv.base_url.split("//")[1].split("/")[0]
        assert f"401 from {host}" in bad.stderr and "$HEAL_KEY" in bad.stderr
        assert "Incorrect API key provided" in bad.stderr and "Traceback" not in bad.stderr
        assert sent_bad <= 4 + 1  # the requests already in flight when the first 401 came back, not 12
        store = tmp_path / "s.duckdb"
        assert _cache_rows(store) == []
        # the server echoed the Authorization header: neither the key nor the header value is kept
        assert WRONG_KEY.encode() not in _store_bytes(store)
        assert WRONG_KEY not in bad.stderr + bad.stdout

        good = _cli("run", str(cfg), env={"HEAL_KEY": GOOD_KEY})
        assert good.returncode == 0, good.stderr
        assert srv.stats()["requests"] - sent_bad == 6 * 2  # every request asked again, none served stale
        assert [s for s, _ in _cache_rows(store)] == ["ok"] * 12


def test_no_key_for_a_server_that_wants_one_names_api_key_env(tmp_path):
    with serve_in_thread(FaultConfig(api_key=GOOD_KEY)) as srv:
        cfg = _config(tmp_path, f"openai:fault-server@{srv.base_url}")
        res = _cli("run", str(cfg))
    assert res.returncode == 5 and "teacher.api_key_env" in res.stderr, res.stderr


def test_a_wrong_model_name_stops_at_once_naming_what_the_server_serves(tmp_path):
    with serve_in_thread(FaultConfig(model="smol", strict_model=True)) as srv:
        cfg = _config(tmp_path, f"openai:smoll@{srv.base_url}")
        res = _cli("run", str(cfg))
        sent = srv.stats()["requests"]
    assert res.returncode == 5, res.stderr
    assert "The model `smoll` does not exist" in res.stderr and "the server serves: smol" in res.stderr
    assert sent <= 5 and _cache_rows(tmp_path / "s.duckdb") == []


@pytest.mark.slow
def test_a_wrong_model_name_on_vllms_own_server(tmp_path, vllm_server):
    cfg = _config(tmp_path, f"openai:smoll@{vllm_server}")
    res = _cli("run", str(cfg))
    assert res.returncode == 5, res.stderr
    assert "smoll" in res.stderr and "the server serves: smol" in res.stderr
    assert _cache_rows(tmp_path / "s.duckdb") == []


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("openai:m@http://127.0.0.1:9/v1/chat/completions", "ends in /chat/completions"),
        ("openai:m@http://alice:hunter2secret@127.0.0.1:9/v1", "carries credentials"),
        ("openai:m@http://127.0.0.1:99999/v1", "port from 1 to 65535"),
        ("openai:m@http://127.0.0.1:0/v1", "port from 1 to 65535"),
        ("openai:m@http://[::1/v1", "malformed"),
        ("openai:m@http://alice:hunter2secret@127.0.0.1:x/v1", "malformed"),
        ("openai:m@http://127.0.0.1:9/v1?api-version=1", "no ?query"),
        ("openai:m@http://127.0.0.1:9/v1\\r\\nX-Injected: 1", "control character"),
    ],
)
def test_bad_teacher_urls_are_one_message_before_the_store_is_touched(tmp_path, spec, needle):
    cfg = _config(tmp_path, spec)
    if "\\r" in spec:  # a YAML double-quoted scalar turns the escapes into a real CR LF
        cfg.write_text(cfg.read_text().replace(f"'{spec}'", f'"{spec}"'))
    res = _cli("run", str(cfg))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "hunter2secret" not in res.stderr and not (tmp_path / "s.duckdb").exists()


@pytest.mark.parametrize("bad", ["\n", "\r\nX-Injected: 1", "\x1b", " "])
def test_a_key_with_a_line_break_is_refused_before_any_request(tmp_path, bad):
    with serve_in_thread(FaultConfig()) as srv:
        cfg = _config(tmp_path, f"openai:fault-server@{srv.base_url}", ", api_key_env: HEAL_KEY")
        res = _cli("run", str(cfg), env={"HEAL_KEY": GOOD_KEY + bad})
        assert srv.stats()["requests"] == 0
    assert res.returncode == 2 and "$HEAL_KEY" in res.stderr, res.stderr
    assert GOOD_KEY not in res.stderr and not (tmp_path / "s.duckdb").exists()


def test_the_same_400_for_every_request_stops_the_run(tmp_path):
    with serve_in_thread(FaultConfig(reject_rate=1.0)) as srv:
        cfg = _config(tmp_path, f"openai:fault-server@{srv.base_url}", n_seeds=20)
        res = _cli("run", str(cfg))
        sent = srv.stats()["requests"]
    assert res.returncode == 5 and "the set-up is wrong" in res.stderr, res.stderr
    assert sent <= 10 + 4
    assert _cache_rows(tmp_path / "s.duckdb") == []


def test_old_cached_api_refusals_are_set_aside_and_asked_again(tmp_path):
    """A store from before m004 holds an API's 401 as a cached rejection; opening it sets that aside, so the
    next run sends that request again (and only that one)."""
    store = tmp_path / "s.duckdb"
    with serve_in_thread(FaultConfig()) as srv:
        cfg = _config(tmp_path, f"openai:fault-server@{srv.base_url}")
        assert _cli("run", str(cfg)).returncode == 0
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
        res = _cli("run", str(cfg))
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
    seeds = _seeds(tmp_path, 4)
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


@contextmanager
def _answering(
    status: int, body: bytes, content_type: str = "application/json", models: list[str] | None = None
) -> Iterator[str]:
    """An http.server on 127.0.0.1 that gives every request the same answer (``GET /models`` lists
    ``models`` when given); yields its base URL."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hits.append(1)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if models is None:
                return self.do_POST()
            listing = orjson.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in models]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(listing)))
            self.end_headers()
            self.wfile.write(listing)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _ask(url: str, **options):
    async def go():
        t = build_teacher(f"openai:m@{url}", {"max_retries": 2, "backoff_base_s": 0.001, **options})
        try:
            req = Request(messages=({"role": "user", "content": "hi"},), sampling=Sampling(max_tokens=8))
            return (await t.complete([req]))[0], t
        finally:
            await t.aclose()

    return asyncio.run(go())


def _completion(content, finish_reason="stop") -> bytes:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": finish_reason,
    }
    return orjson.dumps({"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 8}})


def test_a_200_without_content_is_never_an_empty_success():
    with _answering(200, _completion(None, "length")) as url:
        out, t = _ask(url)
    assert isinstance(out, TeacherRejected) and not out.cacheable and "max_tokens" in str(out)
    assert t.attempts == 1  # spent on reasoning: asking again the same way cannot help
    with _answering(200, _completion(None)) as url:
        out, t = _ask(url)
    assert isinstance(out, TeacherUnavailable) and out.kind == "empty_content" and t.attempts == 3


def test_an_html_error_page_is_named_not_dumped():
    page = b"<html><head><title>502 Bad Gateway</title></head><body>" + b"x" * 5000 + b"</body></html>"
    with _answering(404, page, "text/html") as url:
        out, _ = _ask(url)
    assert "an HTML page (502 Bad Gateway)" in str(out) and len(str(out)) < 600


def test_scrub_removes_keys_and_echoed_headers():
    text = (
        'bad key sk-abcdefghijklmnopqrstuvwxyz012345; got {"authorization": "Bearer tok-123"} '
        "Authorization: Basic dXNlcjpwYXNz and MYSECRET"
    )
    out = scrub(text, "MYSECRET")
    for secret in ("sk-abcdefghijklmnopqrstuvwxyz012345", "tok-123", "dXNlcjpwYXNz", "MYSECRET"):
        assert secret not in out
    assert "bad key" in out
    assert server_message(b'{"error": {"message": "  The model  `x`\\n does not exist."}}') == (
        "The model `x` does not exist."
    )


def test_url_credentials_are_refused_by_the_library_too():
    with pytest.raises(ConfigError, match="api_key_env") as exc:
        build_teacher("openai:m@https://u:p4ssw0rd@example.invalid/v1")
    assert "p4ssw0rd" not in str(exc.value)


def test_url_credentials_are_refused_before_a_cluster_run_stores_its_config(tmp_path):
    """The driver of a cluster run stores the config before its workers build teachers: the URL is checked
    first (and no cluster is started for it)."""
    cfg = write_config(
        tmp_path,
        f"name: c\nrecipe: rationales\nseeds: {_seeds(tmp_path, 2)}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: 'openai:m@http://alice:hunter2secret@127.0.0.1:9/v1'\nexecutor: {kind: ray}\n",
    )
    with pytest.raises(ConfigError, match="api_key_env") as exc:
        asyncio.run(api.run_async(api.prepare(cfg)))
    assert "hunter2secret" not in str(exc.value) and not (tmp_path / "s.duckdb").exists()


def test_a_429_for_an_account_out_of_quota_stops_at_once():
    body = orjson.dumps(
        {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": None}}
    )
    with _answering(429, body) as url:
        out, t = _ask(url)
    assert isinstance(out, TeacherMisconfigured) and t.attempts == 1, out
    assert "You exceeded your current quota" in str(out) and "billing" in str(out)


def test_a_key_cut_by_the_length_limit_leaves_no_prefix_behind():
    key = "sk-proj-" + "A1b2C3d4" * 6
    for lead in range(250, 305, 7):  # wherever the 300-character cut falls in the key
        body = orjson.dumps({"error": {"message": "x" * lead + f" {key} y"}})
        assert key[:10] not in server_message(body, secret=key)
        assert key[:10] not in server_message(body)  # key-shaped even when it is not ours
    page = f"<html><title>denied for Bearer {key}</title></html>".encode()
    assert key[:10] not in server_message(page)


def test_an_ipv6_literal_keeps_its_brackets_in_the_host_header():
    assert b"Host: [::1]:8000\r\n" in Pool("http://[::1]:8000/v1", headers={}, timeout_s=1)._fixed


def test_a_400_echoing_the_authorization_header_is_stored_scrubbed(tmp_path):
    """Refusals are kept in the failures table and shown by status: the key the server echoed is not."""
    body = orjson.dumps(
        {
            "error": {
                "message": f"bad request; headers: {{'Authorization': 'Bearer {GOOD_KEY}'}} key={GOOD_KEY}"
            }
        }
    )
    with _answering(400, body) as url:
        cfg = _config(tmp_path, f"openai:m@{url}", ", api_key_env: HEAL_KEY", n_seeds=3)
        res = _cli("run", str(cfg), env={"HEAL_KEY": GOOD_KEY})
    assert res.returncode == 1, res.stderr  # refused requests: the run is incomplete, a re-run asks again
    store = tmp_path / "s.duckdb"
    status = _cli("status", "--store", str(store), "heal")
    with Store(store, read_only=True) as st:
        errors = [e for (e,) in st.con.execute("SELECT message FROM failures").fetchall()]
        assert st.con.execute("SELECT count(*) FROM cache").fetchone()[0] == 0
    assert errors and all("bad request" in e and "***" in e for e in errors)
    everything = _store_bytes(store) + (res.stdout + res.stderr + status.stdout + status.stderr).encode()
    assert GOOD_KEY.encode() not in everything and GOOD_KEY[:12].encode() not in everything


@pytest.mark.parametrize(
    ("status", "message", "needle"),
    [
        (400, "Invalid model name passed in model=m", "the server serves: gpt-a, gpt-b"),  # LiteLLM's wording
        (405, "Method Not Allowed", "check the base URL"),
    ],
)
def test_a_400_for_a_missing_model_and_a_405_stop_at_once(status, message, needle):
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    with _answering(status, body, models=["gpt-a", "gpt-b"]) as url:
        out, t = _ask(url)
    assert isinstance(out, TeacherMisconfigured) and t.attempts == 1, out
    assert message in str(out) and needle in str(out)


def test_other_400s_stay_refusals_of_one_request():
    body = orjson.dumps({"error": {"message": "This model's maximum context length is 4096 tokens"}})
    with _answering(400, body) as url:
        out, t = _ask(url)
    assert type(out) is TeacherRejected and not out.cacheable and t.attempts == 1


def test_an_answer_journaled_by_retry_failed_replaces_the_rejection_after_a_crash(tmp_path):
    """--retry-failed journals the new answer before it commits it; if the process dies in between, the
    next open replays it in place of the cached rejection instead of dropping it as a duplicate key."""
    cfg = write_config(
        tmp_path,
        f"name: r\nrecipe: rationales\nseeds: {_seeds(tmp_path, 2)}\nstore: {tmp_path / 's.duckdb'}\n"
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
        f"name: r\nrecipe: rationales\nseeds: {_seeds(tmp_path, 2)}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: {spec: 'scripted:x', options: {default: null}}\nparams: {k: 1}\n",
    )
    first = _cli("run", str(cfg), "--json")
    assert first.returncode == 1 and "add --retry-failed" in first.stderr, first.stderr
    plain = _cli("run", str(cfg), "--json")
    retried = _cli("run", str(cfg), "--json", "--retry-failed")
    assert orjson.loads(plain.stdout)["requests_sent"] == 0, plain.stdout
    assert orjson.loads(retried.stdout)["requests_sent"] == 2, retried.stdout
    assert retried.returncode == 1 and "--retry-failed" not in retried.stderr


def test_a_200_whose_message_has_no_content_key_is_retried_and_named():
    body = orjson.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant"}, "finish_reason": "stop"}]}
    )
    with _answering(200, body) as url:
        out, t = _ask(url)
    assert isinstance(out, TeacherUnavailable) and out.kind == "empty_content" and t.attempts == 3
    assert "no content" in str(out)


def test_a_key_revoked_mid_run_stops_it_keeping_every_answer_paid_for(tmp_path, monkeypatch):
    """Answers that arrived before the first 401 are committed; nothing of the 401s is; the re-run with a
    valid key sends only what is missing."""
    monkeypatch.setenv("HEAL_KEY", GOOD_KEY)
    answered = []
    config = FaultConfig(api_key=GOOD_KEY)

    def reply(messages, body):
        answered.append(1)
        if len(answered) == 6:
            config.api_key = "sk-rotated-0123456789abcdefghijkl"  # the key is revoked from now on
        return "Some reasoning. The answer is 4."

    config.reply = reply
    with serve_in_thread(config) as srv:
        cfg = _config(tmp_path, f"openai:fault-server@{srv.base_url}", ", api_key_env: HEAL_KEY", n_seeds=12)
        res = api.run(cfg)
        assert res.status == "failed" and res.exit_code == 5 and "401 from" in (res.error or "")
        rows = _cache_rows(tmp_path / "s.duckdb")
        assert {s for s, _ in rows} == {"ok"} and len(rows) == len(answered) >= 6
        sent = srv.stats()["requests"]
        config.api_key = GOOD_KEY
        again = api.run(cfg)
        assert again.status == "done", again.error
        assert srv.stats()["requests"] - sent == 12 * 2 - len(rows)  # nothing answered is paid twice
