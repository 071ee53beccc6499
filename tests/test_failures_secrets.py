"""Key and URL hygiene: a bad teacher URL or key is one message before any request or store, and a key a
server echoes back is scrubbed from messages, the store and the CLI's output. Real servers on 127.0.0.1
(the fault server, small http.server answers), the real CLI in a subprocess, real DuckDB stores."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from conftest import write_config
from teacher_faults import (
    GOOD_KEY,
    answering,
    heal_config,
    run_cli,
    seeds_in,
    store_bytes,
)

from factory import api
from factory.errors import ConfigError
from factory.store import Store
from factory.teachers import build_teacher
from factory.teachers.api_errors import scrub, server_message
from factory.teachers.http import Pool
from factory.testing.fault_server import FaultConfig, serve_in_thread


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
    cfg = heal_config(tmp_path, spec)
    if "\\r" in spec:  # a YAML double-quoted scalar turns the escapes into a real CR LF
        cfg.write_text(cfg.read_text().replace(f"'{spec}'", f'"{spec}"'))
    res = run_cli("run", str(cfg))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert "hunter2secret" not in res.stderr and not (tmp_path / "s.duckdb").exists()


@pytest.mark.parametrize("bad", ["\n", "\r\nX-Injected: 1", "\x1b", " "])
def test_a_key_with_a_line_break_is_refused_before_any_request(tmp_path, bad):
    with serve_in_thread(FaultConfig()) as srv:
        cfg = heal_config(tmp_path, f"openai:fault-server@{srv.base_url}", ", api_key_env: HEAL_KEY")
        res = run_cli("run", str(cfg), env={"HEAL_KEY": GOOD_KEY + bad})
        assert srv.stats()["requests"] == 0
    assert res.returncode == 2 and "$HEAL_KEY" in res.stderr, res.stderr
    assert GOOD_KEY not in res.stderr and not (tmp_path / "s.duckdb").exists()


def test_url_credentials_are_refused_by_the_library_too():
    with pytest.raises(ConfigError, match="api_key_env") as exc:
        build_teacher("openai:m@https://u:p4ssw0rd@example.invalid/v1")
    assert "p4ssw0rd" not in str(exc.value)


def test_url_credentials_are_refused_before_a_cluster_run_stores_its_config(tmp_path):
    """The driver of a cluster run stores the config before its workers build teachers: the URL is checked
    first (and no cluster is started for it)."""
    cfg = write_config(
        tmp_path,
        f"name: c\nrecipe: rationales\nseeds: {seeds_in(tmp_path, 2)}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: 'openai:m@http://alice:hunter2secret@127.0.0.1:9/v1'\nexecutor: {kind: ray}\n",
    )
    with pytest.raises(ConfigError, match="api_key_env") as exc:
        asyncio.run(api.run_async(api.prepare(cfg)))
    assert "hunter2secret" not in str(exc.value) and not (tmp_path / "s.duckdb").exists()


def test_an_ipv6_literal_keeps_its_brackets_in_the_host_header():
    assert b"Host: [::1]:8000\r\n" in Pool("http://[::1]:8000/v1", headers={}, timeout_s=1)._fixed


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


def test_a_key_cut_by_the_length_limit_leaves_no_prefix_behind():
    key = "sk-proj-" + "A1b2C3d4" * 6
    for lead in range(250, 305, 7):  # wherever the 300-character cut falls in the key
        body = orjson.dumps({"error": {"message": "x" * lead + f" {key} y"}})
        assert key[:10] not in server_message(body, secret=key)
        assert key[:10] not in server_message(body)  # key-shaped even when it is not ours
    page = f"<html><title>denied for Bearer {key}</title></html>".encode()
    assert key[:10] not in server_message(page)


def test_a_400_echoing_the_authorization_header_is_stored_scrubbed(tmp_path):
    """Refusals are kept in the failures table and shown by status: the key the server echoed is not."""
    body = orjson.dumps(
        {
            "error": {
                "message": f"bad request; headers: {{'Authorization': 'Bearer {GOOD_KEY}'}} key={GOOD_KEY}"
            }
        }
    )
    with answering(400, body) as url:
        cfg = heal_config(tmp_path, f"openai:m@{url}", ", api_key_env: HEAL_KEY", n_seeds=3)
        res = run_cli("run", str(cfg), env={"HEAL_KEY": GOOD_KEY})
    assert res.returncode == 1, res.stderr  # refused requests: the run is incomplete, a re-run asks again
    store = tmp_path / "s.duckdb"
    status = run_cli("status", "--store", str(store), "heal")
    with Store(store, read_only=True) as st:
        errors = [e for (e,) in st.con.execute("SELECT message FROM failures").fetchall()]
        assert st.con.execute("SELECT count(*) FROM cache").fetchone()[0] == 0
    assert errors and all("bad request" in e and "***" in e for e in errors)
    everything = store_bytes(store) + (res.stdout + res.stderr + status.stdout + status.stderr).encode()
    assert GOOD_KEY.encode() not in everything and GOOD_KEY[:12].encode() not in everything
