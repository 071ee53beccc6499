"""Failures that heal: a wrong key, model or account, or a set-up every request is refused for, stops a run at
once and caches nothing, and a re-run after the fix sends what it must. Real servers on 127.0.0.1 (the fault
server with a required key or a strict model name, small http.server answers), the real CLI in a
subprocess, real DuckDB stores."""

from __future__ import annotations

import orjson
import pytest
from teacher_faults import (
    GOOD_KEY,
    WRONG_KEY,
    answering,
    ask,
    cache_rows,
    heal_config,
    run_cli,
    store_bytes,
)

from factory import api
from factory.errors import TeacherMisconfigured
from factory.testing.fault_server import FaultConfig, serve_in_thread


def test_a_wrong_key_stops_at_once_caches_nothing_and_the_fixed_key_heals(tmp_path):
    with serve_in_thread(FaultConfig(api_key=GOOD_KEY)) as srv:
        cfg = heal_config(tmp_path, f"openai:fault-server@{srv.base_url}", ", api_key_env: HEAL_KEY")
        bad = run_cli("run", str(cfg), env={"HEAL_KEY": WRONG_KEY})
        sent_bad = srv.stats()["requests"]
        assert bad.returncode == 5, bad.stderr
        host = srv.base_url.split("//")[1].split("/")[0]
        assert f"401 from {host}" in bad.stderr and "$HEAL_KEY" in bad.stderr
        assert "Incorrect API key provided" in bad.stderr and "Traceback" not in bad.stderr
        assert sent_bad <= 4 + 1  # the requests already in flight when the first 401 came back, not 12
        store = tmp_path / "s.duckdb"
        assert cache_rows(store) == []
        # the server echoed the Authorization header: neither the key nor the header value is kept
        assert WRONG_KEY.encode() not in store_bytes(store)
        assert WRONG_KEY not in bad.stderr + bad.stdout

        good = run_cli("run", str(cfg), env={"HEAL_KEY": GOOD_KEY})
        assert good.returncode == 0, good.stderr
        assert srv.stats()["requests"] - sent_bad == 6 * 2  # every request asked again, none served stale
        assert [s for s, _ in cache_rows(store)] == ["ok"] * 12


def test_no_key_for_a_server_that_wants_one_names_api_key_env(tmp_path):
    with serve_in_thread(FaultConfig(api_key=GOOD_KEY)) as srv:
        cfg = heal_config(tmp_path, f"openai:fault-server@{srv.base_url}")
        res = run_cli("run", str(cfg))
    assert res.returncode == 5 and "teacher.api_key_env" in res.stderr, res.stderr


def test_a_wrong_model_name_stops_at_once_naming_what_the_server_serves(tmp_path):
    with serve_in_thread(FaultConfig(model="smol", strict_model=True)) as srv:
        cfg = heal_config(tmp_path, f"openai:smoll@{srv.base_url}")
        res = run_cli("run", str(cfg))
        sent = srv.stats()["requests"]
    assert res.returncode == 5, res.stderr
    assert "The model `smoll` does not exist" in res.stderr and "the server serves: smol" in res.stderr
    assert sent <= 5 and cache_rows(tmp_path / "s.duckdb") == []


@pytest.mark.slow
def test_a_wrong_model_name_on_vllms_own_server(tmp_path, vllm_server):
    cfg = heal_config(tmp_path, f"openai:smoll@{vllm_server}")
    res = run_cli("run", str(cfg))
    assert res.returncode == 5, res.stderr
    assert "smoll" in res.stderr and "the server serves: smol" in res.stderr
    assert cache_rows(tmp_path / "s.duckdb") == []


def test_the_same_400_for_every_request_stops_the_run(tmp_path):
    with serve_in_thread(FaultConfig(reject_rate=1.0)) as srv:
        cfg = heal_config(tmp_path, f"openai:fault-server@{srv.base_url}", n_seeds=20)
        res = run_cli("run", str(cfg))
        sent = srv.stats()["requests"]
    assert res.returncode == 5 and "the set-up is wrong" in res.stderr, res.stderr
    assert sent <= 10 + 4
    assert cache_rows(tmp_path / "s.duckdb") == []


def test_a_429_for_an_account_out_of_quota_stops_at_once():
    body = orjson.dumps(
        {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": None}}
    )
    with answering(429, body) as url:
        out, t = ask(url)
    assert isinstance(out, TeacherMisconfigured) and t.attempts == 1, out
    assert "You exceeded your current quota" in str(out) and "billing" in str(out)


@pytest.mark.parametrize(
    ("status", "message", "needle"),
    [
        (400, "Invalid model name passed in model=m", "the server serves: gpt-a, gpt-b"),  # LiteLLM's wording
        (405, "Method Not Allowed", "check the base URL"),
    ],
)
def test_a_400_for_a_missing_model_and_a_405_stop_at_once(status, message, needle):
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    with answering(status, body, models=["gpt-a", "gpt-b"]) as url:
        out, t = ask(url)
    assert isinstance(out, TeacherMisconfigured) and t.attempts == 1, out
    assert message in str(out) and needle in str(out)


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
        cfg = heal_config(
            tmp_path, f"openai:fault-server@{srv.base_url}", ", api_key_env: HEAL_KEY", n_seeds=12
        )
        res = api.run(cfg)
        assert res.status == "failed" and res.exit_code == 5 and "401 from" in (res.error or "")
        rows = cache_rows(tmp_path / "s.duckdb")
        assert {s for s, _ in rows} == {"ok"} and len(rows) == len(answered) >= 6
        sent = srv.stats()["requests"]
        config.api_key = GOOD_KEY
        again = api.run(cfg)
        assert again.status == "done", again.error
        assert srv.stats()["requests"] - sent == 12 * 2 - len(rows)  # nothing answered is paid twice
