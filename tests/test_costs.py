"""What requests cost: the price table and its overrides, each answer's cost stored with it (against the
fault server, which reports usage and prompt-cache hits), budget.max_usd, the dry run in dollars, and the
cost shown by status, the report, the dataset card and the progress line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import ROOT, write_config, write_seeds

from factory.config import TeacherConfig
from factory.pricing import FREE, lookup, price_for, table_date, usd
from factory.store import Store
from factory.testing.fault_server import FaultConfig, serve_in_thread

SEEDS = [json.loads(x) for x in (ROOT / "data" / "seeds" / "arithmetic.jsonl").read_text().splitlines()[:8]]


def REPLY(messages, body):
    asked = messages[-1]["content"]
    gold = next((s["answer"] for s in SEEDS if s["question"] in asked), "0")
    return f"Work it out step by step. The answer is {gold}."


CACHED = 8  # prompt tokens the fault server reports as read from its prompt cache


def _config(tmp: Path, url: str, *, name: str = "money", model: str = "gpt-4o-mini-2024-07-18", n: int = 6,
            budget: str = "", teacher_extra: str = "") -> Path:  # fmt: skip
    seeds = write_seeds(tmp / f"seeds-{n}.jsonl", n)
    return write_config(
        tmp,
        f"name: {name}\nrecipe: rationales\nseeds: {seeds}\nstore: {tmp / 's.duckdb'}\n"
        f"teacher: {{spec: 'openai:{model}@{url}', max_in_flight: 2, max_retries: 1, "
        f"options: {{backoff_base_s: 0.01}}{teacher_extra}}}\n"
        f"params: {{k: 2, max_tokens: 32}}\nrunner: {{commit_interval_s: 0.05}}\n{budget}",
        name=f"{name}.yaml",
    )


# -- the price table --------------------------------------------------------------------------------------
def test_prices_are_matched_exactly_then_by_snapshot_and_alias_never_by_loose_prefix():
    mini = lookup("gpt-4o-mini")
    assert (mini.input, mini.cached_input, mini.output, mini.batch_discount) == (0.15, 0.075, 0.6, 0.5)
    assert "openai.com/api/pricing" in mini.source and mini.read == table_date()
    assert lookup("gpt-4o-mini-2024-07-18") == mini  # a dated snapshot is its model
    assert lookup(" OpenAI/GPT-4o-mini ") == mini  # case, spaces and a provider route prefix
    assert lookup("claude-sonnet-4-20250514").input == 3.0
    assert lookup("chatgpt-4o-latest").output == lookup("gpt-4o").output == 10.0  # an alias
    assert lookup("gpt-4o-minix") is None and lookup("gpt-4o-mini-fast") is None  # no loose prefix
    assert lookup("gpt-4o").input != mini.input
    assert lookup("my-finetune") is None


def test_price_of_a_teacher_config_local_free_override_and_unknown():
    assert price_for(TeacherConfig(spec="embedded")) == FREE
    assert price_for(TeacherConfig(spec="vllm:/models/q")) == FREE
    assert price_for(TeacherConfig(spec="openai:gpt-4.1-nano@http://127.0.0.1:9/v1")).input == 0.1
    assert price_for(TeacherConfig(spec="openai:my-model@http://127.0.0.1:9/v1")) is None
    own = price_for(TeacherConfig.model_validate({"spec": "vllm:/m", "price": {"input": 1, "output": 2}}))
    assert (own.input, own.cached_input, own.output, own.source) == (
        1,
        None,
        2,
        "teacher.price in the config",
    )
    assert own.cost(1_000_000, 0, cached_tokens=500_000) == 1.0  # cached tokens at the input price by default


def test_cost_of_one_answer_cached_tokens_and_batch_discount():
    p = lookup("gpt-4o")  # 2.50 in, 1.25 cached, 10.00 out per million; batch half price
    assert p.cost(1000, 100) == pytest.approx((1000 * 2.5 + 100 * 10.0) / 1e6)
    assert p.cost(1000, 100, 400) == pytest.approx((600 * 2.5 + 400 * 1.25 + 100 * 10.0) / 1e6)
    assert p.cost(1000, 100, 400, batch=True) == pytest.approx(p.cost(1000, 100, 400) / 2)
    assert p.cost(10, 0, cached_tokens=99) == pytest.approx(10 * 1.25 / 1e6)  # never more cached than sent
    assert p.worst_case(1000, 256) == pytest.approx((1000 * 2.5 + 256 * 10.0) / 1e6)
    assert usd(0.00421) == "$0.0042" and usd(12.5) == "$12.50" and usd(None) == "unknown"


# -- a paid run against the fault server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def paid(tmp_path_factory):
    """One run paid for at gpt-4o-mini's list price (the server reports usage and 8 cached prompt tokens),
    then a second run of the same requests under another name, served wholly from the cache."""
    from factory.cli import main

    tmp = tmp_path_factory.mktemp("paid")
    with serve_in_thread(FaultConfig(cached_tokens=CACHED, reply=REPLY)) as srv:
        first = _config(tmp, srv.base_url)
        again = _config(tmp, srv.base_url, name="again")
        assert main(["run", str(first)]) == 0
        assert main(["run", str(again)]) == 0
        sent = srv.stats()["requests"]
        url = srv.base_url
    with Store(tmp / "s.duckdb", read_only=True) as st:
        ids = {r["name"]: r["id"] for r in st.runs()}
    return tmp, ids, sent, url


def test_each_answer_stores_its_cost_and_prompt_cache_hits(paid):
    tmp, ids, sent, _ = paid
    with Store(tmp / "s.duckdb", read_only=True) as st:
        rows = st.con.execute(
            "SELECT prompt_tokens, completion_tokens, cached_prompt_tokens, cost_usd, run_id FROM cache"
        ).fetchall()
    assert len(rows) == sent == 12  # the second run sent nothing
    for prompt, out, cached, cost, run in rows:
        assert cached == CACHED and run == ids["money"]
        # the list price of gpt-4o-mini: 0.15 in, 0.075 cached in, 0.60 out per million tokens
        assert cost == pytest.approx(((prompt - CACHED) * 0.15 + CACHED * 0.075 + out * 0.6) / 1e6)
        assert cost > 0


def test_status_shows_cost_per_curated_record_and_what_the_cache_saved(paid, cli):
    tmp, _, _, _ = paid
    with Store(tmp / "s.duckdb", read_only=True) as st:
        total = st.con.execute("SELECT sum(cost_usd) FROM cache").fetchone()[0]
    got = cli("status", "money", "--store", str(tmp / "s.duckdb"), "--json", cwd=tmp)
    s = json.loads(got.stdout)
    assert s["cost"]["paid_usd"] == pytest.approx(total, rel=1e-6)
    curated = s["funnel"]["curated"]
    assert curated > 0 and s["cost"]["per_curated_usd"] == pytest.approx(total / curated, rel=1e-5)
    assert s["cost"]["saved_usd"] == 0 and table_date() in s["cost"]["estimate"]
    again = json.loads(cli("status", "again", "--store", str(tmp / "s.duckdb"), "--json", cwd=tmp).stdout)
    assert again["cost"]["paid_usd"] == 0 and again["cost"]["saved_usd"] == pytest.approx(total, rel=1e-6)
    text = cli("status", "again", "--store", str(tmp / "s.duckdb"), cwd=tmp).stdout
    assert f"$0 spent (estimate from list prices read {table_date()})" in text
    assert f"{usd(total)} saved: answers other runs had paid for, served from the cache" in text


def test_report_and_card_show_the_cost_as_an_estimate(paid):
    from factory.export import export_run
    from factory.report import write_report

    tmp, ids, _, _ = paid
    with Store(tmp / "s.duckdb", read_only=True) as st:
        total = st.con.execute("SELECT sum(cost_usd) FROM cache").fetchone()[0]
        write_report(st, ids["again"], tmp / "again.html", map_points=0)
        export_run(st, ids["money"], tmp / "out")
    html = (tmp / "again.html").read_text(encoding="utf-8")
    assert f"<b>{usd(total)}</b><span>saved by the cache</span>" in html
    assert "estimate from list prices read" in html and "gpt-4o-mini" in html
    card = (tmp / "out" / "README.md").read_text(encoding="utf-8")
    (cell,) = [x for x in card.splitlines() if x.startswith("| cost (estimate) |")]
    assert usd(total) in cell and "per curated record" in cell and table_date() in cell


def test_batch_answers_cost_the_batch_price(tmp_path, cli):
    fast = "mode: batch, batch: {collect_s: 0.2, poll_interval_s: 0.05, poll_max_interval_s: 0.2}"
    with serve_in_thread(FaultConfig(reply=REPLY)) as srv:
        cfg = _config(tmp_path, srv.base_url, n=3, teacher_extra=f", {fast}")
        got = cli("run", str(cfg), cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        rows = st.con.execute("SELECT prompt_tokens, completion_tokens, cost_usd FROM cache").fetchall()
    assert len(rows) == 6
    for prompt, out, cost in rows:  # gpt-4o-mini through the Batch API: half the list price
        assert cost == pytest.approx((prompt * 0.15 + out * 0.6) / 2 / 1e6)


# -- budget.max_usd ------------------------------------------------------------------------------------------
def test_max_usd_stops_the_run_before_spending_more(tmp_path, cli):
    limit = 0.003
    with serve_in_thread(FaultConfig(reply=REPLY)) as srv:
        cfg = _config(tmp_path, srv.base_url, model="gpt-4o", budget=f"budget: {{max_usd: {limit}}}\n")
        got = cli("run", str(cfg), cwd=tmp_path)
        sent = srv.stats()["requests"]
    assert got.returncode == 4, got.stderr
    assert f"max_usd={limit:g} would be exceeded" in got.stderr and " spent" in got.stderr
    assert "Traceback" not in got.stderr
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        (n, spent), = st.con.execute("SELECT count(*), sum(cost_usd) FROM cache").fetchall()  # fmt: skip
    assert 0 < n == sent < 12 and 0 < spent <= limit  # requests in flight were counted at their most
    assert usd(spent) in got.stderr  # what was spent, as the run counted it


def test_max_usd_with_a_model_of_no_known_price_is_refused(tmp_path, cli):
    cfg = _config(tmp_path, "http://127.0.0.1:9/v1", model="my-model", budget="budget: {max_usd: 5}\n")
    got = cli("run", str(cfg), cwd=tmp_path)
    assert got.returncode == 2
    assert "'my-model'" in got.stderr and "teacher.price" in got.stderr and "Traceback" not in got.stderr
    assert not (tmp_path / "s.duckdb").exists()
    priced = _config(tmp_path, "http://127.0.0.1:9/v1", model="my-model", budget="budget: {max_usd: 5}\n",
                     teacher_extra=", price: {input: 1.0, output: 4.0}")  # fmt: skip
    got = cli("run", str(priced), "--dry-run", "--json", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    rep = json.loads(got.stdout)
    assert rep["cost_usd_max"] == pytest.approx(
        (rep["prompt_tokens_est"] * 1.0 + 12 * 32 * 4.0) / 1e6, rel=1e-6
    )
    assert "teacher.price in the config" in rep["cost_basis"]


# -- the dry run ---------------------------------------------------------------------------------------------
def test_dry_run_in_dollars_estimate_then_median_of_earlier_answers(paid, cli):
    from factory import api
    from factory.prepare import first_stage_requests
    from factory.token_count import estimate

    tmp, _, _, url = paid  # the paid run's teacher (its server is gone: nothing is sent)
    cfg = _config(tmp, url, name="bigger", n=8)  # the first 6 questions' requests are cached
    got = cli("run", str(cfg), "--dry-run", "--json", cwd=tmp)
    assert got.returncode == 0, got.stderr
    rep = json.loads(got.stdout)
    prep = api.prepare(cfg)
    reqs = [r for _, r in first_stage_requests(prep, prep.seeds)]
    assert rep["requests"] == 16 and rep["cached"] == 12
    assert rep["prompt_tokens_est"] == sum(estimate(r.messages) for r in reqs)
    assert "characters / 4" in rep["prompt_tokens_how"] and "median error 27%" in rep["prompt_tokens_how"]
    with Store(tmp / "s.duckdb", read_only=True) as st:
        median = st.con.execute("SELECT median(completion_tokens) FROM cache").fetchone()[0]
    assert rep["output_tokens_median"] == median and rep["output_tokens_expected"] == 4 * min(
        32, round(median)
    )
    mini = lookup("gpt-4o-mini")
    new = reqs[12:]  # the two new questions' requests (k = 2 each)
    assert rep["cost_usd_max"] == pytest.approx(
        sum(mini.worst_case(estimate(r.messages), 32) for r in new), rel=1e-5
    )
    assert rep["cost_usd_expected"] == pytest.approx(
        sum(mini.cost(estimate(r.messages), min(32, round(median))) for r in new), rel=1e-5
    )
    text = cli("run", str(cfg), "--dry-run", cwd=tmp).stdout
    assert f"at most {usd(rep['cost_usd_max'])}" in text and "median output of earlier answers" in text


def test_dry_run_counts_prompt_tokens_with_a_local_tokenizer(tmp_path, cli, embedded_dir):
    from factory import api
    from factory.prepare import first_stage_requests
    from factory.token_count import counter, load_tokenizer

    cfg = _config(tmp_path, "http://127.0.0.1:9/v1", teacher_extra=f", tokenizer: '{embedded_dir}'")
    rep = json.loads(cli("run", str(cfg), "--dry-run", "--json", cwd=tmp_path).stdout)
    prep = api.prepare(cfg)
    count = counter(load_tokenizer(embedded_dir))
    exact = sum(count(r.messages) for _, r in first_stage_requests(prep, prep.seeds))
    assert rep["prompt_tokens_est"] == exact and rep["prompt_tokens_how"].startswith(
        "counted with the tokenizer"
    )
    bad = _config(tmp_path, "http://127.0.0.1:9/v1", name="bad", teacher_extra=f", tokenizer: '{tmp_path}'")
    got = cli("run", str(bad), "--dry-run", cwd=tmp_path)
    assert got.returncode == 2 and "teacher.tokenizer" in got.stderr and "Traceback" not in got.stderr


def test_the_estimate_bound_in_the_code_is_the_measured_one():
    from factory.token_count import ESTIMATE_ERROR

    measured = json.loads((ROOT / "benchmarks" / "results" / "prompt_tokens.json").read_text())
    got = measured["figures"]["all"]["chars_over_4"]
    assert {k: got[k] for k in ("max", "median")} == ESTIMATE_ERROR
    # what budget.max_usd reserves for a prompt in flight never undercounted a prompt of ours
    assert measured["figures"]["all"]["body_bytes_over_3"]["undercounts"] == 0


# -- pacing and the progress line ----------------------------------------------------------------------------
def test_progress_line_shows_dollars_and_the_pacing_wait(capsys):
    from factory.cli import ProgressView
    from factory.plan import Progress
    from factory.teachers import build_teacher

    t = build_teacher("openai:gpt-4o-mini@http://127.0.0.1:9/v1", {"max_tokens_per_minute": 600})
    now = time.monotonic()
    assert t.pacing() is None
    for _ in range(4):
        t.pacer.take(now, 100)  # four starts of 100 tokens at 600 a minute: the last waits 30 s
    assert t.pacing() == "waiting 30 s: tokens per minute"
    p = Progress(seeds_total=10, seeds_done=2, seeds_failed=0, records=4, requests_sent=4, cache_hits=1,
                 in_flight=2, prompt_tokens=400, completion_tokens=80, failures={}, elapsed_s=3.0,
                 cost_usd=0.0123, saved_usd=0.002, pacing=t.pacing())  # fmt: skip
    view = ProgressView(10, 0, "money")
    with view:
        view.update(p)
    err = capsys.readouterr().err
    assert "≈$0.0123 spent, $0.0020 saved by the cache" in err and "waiting 30 s: tokens per minute" in err


def test_a_run_held_by_the_token_limit_says_why(tmp_path):
    import asyncio
    import re

    from factory import api

    runners, seen = [], []

    def progress(p):
        if p.pacing and not seen:
            seen.append(p.pacing)
            runners[0].stop("interrupted")

    with serve_in_thread(
        FaultConfig(reply=REPLY)
    ) as srv:  # each request reserves ~500 tokens of 2,000 a minute
        cfg = _config(tmp_path, srv.base_url, teacher_extra=", max_tokens_per_minute: 2000")
        result = asyncio.run(api.run_async(api.prepare(cfg), on_progress=progress, on_runner=runners.append))
    assert result.status == "interrupted" and seen
    assert re.fullmatch(r"waiting \d+ s: tokens per minute", seen[0]), seen


def test_status_of_a_run_in_progress_says_what_holds_it(tmp_path, cli):
    import re
    import signal
    import subprocess
    import sys

    from factory.live import live_path

    store = tmp_path / "s.duckdb"
    with serve_in_thread(FaultConfig(reply=REPLY)) as srv:
        cfg = _config(tmp_path, srv.base_url, teacher_extra=", max_tokens_per_minute: 2000")
        p = subprocess.Popen([sys.executable, "-m", "factory.cli", "run", str(cfg)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            deadline, doc = time.monotonic() + 90, {}
            while time.monotonic() < deadline and not doc.get("pacing"):
                time.sleep(0.5)
                got = cli("status", "money", "--store", str(store), "--json", cwd=tmp_path)
                doc = json.loads(got.stdout) if got.returncode == 0 else {}
            text = cli("status", "--store", str(store), cwd=tmp_path).stdout
        finally:
            p.send_signal(signal.SIGINT)  # Ctrl+C: nothing more is sent
            time.sleep(0.5)
            p.send_signal(signal.SIGINT)  # again: the request the pacing holds is not waited for
            _, err = p.communicate(timeout=60)
    assert re.fullmatch(r"waiting \d+ s: tokens per minute", doc.get("pacing") or ""), (doc, err)
    assert doc["status"].startswith("running") and doc["requests_sent"] >= 1 and doc["cost_usd"] > 0
    assert "pacing: waiting" in text and "≈$0.0" in text and "so far (an estimate" in text
    assert p.returncode != 0 and not live_path(store).exists()  # gone with the run


def test_cluster_workers_split_the_token_limit(tmp_path):
    pytest.importorskip("ray")
    from factory.cluster import ShardWorker
    from factory.config import load_config

    cfg = _config(tmp_path, "http://127.0.0.1:9/v1", teacher_extra=", max_tokens_per_minute: 9000")
    c = load_config(cfg)
    w = ShardWorker(c.model_dump(mode="json"), str(tmp_path), "digest", 1, {}, 3)
    assert w.teachers["default"].pacer.tokens_per_minute == 3000


def test_cluster_shards_share_the_dollar_budget():
    from factory.cluster import _Spending

    spend = _Spending(None, 100, 1.0)
    first = spend.share(idle=2)
    assert first == (None, 50, 0.5)
    second = spend.share(idle=1)  # what is neither spent nor held by the first shard
    assert second == (None, 50, 0.5) and spend.share(idle=1) is None
    spend.returned(first, {"requests_sent": 3, "completion_tokens": 40, "cost_usd": 0.2})
    spend.returned(second, None)  # a shard lost for good may have spent all of its share
    assert spend.spent == [0, 90, pytest.approx(0.7)]
    assert spend.share(idle=1) == (None, 10, pytest.approx(0.3))
