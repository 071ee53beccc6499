"""Soft labels: top-k logprobs asked by a recipe's `logprobs: K`, kept with the answer in the cache (and in the
journal, so a SIGKILL keeps them), served again by a cache hit, and exported as teacher_* columns.

Against the fault server, which makes up deterministic logprobs (tokens named ``token_id:N`` when asked with
``return_tokens_as_token_ids``, as vLLM's server does)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import write_config, write_seeds

from factory import api, plugins
from factory.config import run_id_for
from factory.errors import ConfigError, StoreError
from factory.export import export_run
from factory.logprobs import from_openai, pack, unpack
from factory.prepare import first_stage_requests
from factory.runner import Runner
from factory.store import CACHE_COLUMNS, Store
from factory.store.journal import journal_dir, read_segments
from factory.teachers.openai import OpenAITeacher
from factory.teachers.scripted import ScriptedTeacher
from factory.testing.fault_server import body_key, fake_logprobs, serve_in_thread, start_subprocess
from factory.types import Completion, Request, Sampling, TokenLogprobs

K = 3


@pytest.fixture(scope="module")
def server():
    with serve_in_thread(latency=0.0) as srv:
        yield srv


def _teacher(url: str, **opts) -> OpenAITeacher:
    return OpenAITeacher(f"openai:m@{url}", f"m@{url}", opts)


def _config(tmp: Path, url: str, *, name: str = "soft", params: str = f"logprobs: {K}", n_seeds: int = 6,
            recipe: str = "prompt", commit_s: float = 0.05, token_ids: bool = True) -> Path:  # fmt: skip
    seeds = tmp / "seeds.jsonl"
    if not seeds.exists():
        seeds.write_text("".join(json.dumps({"id": f"s{i}", "text": f"Say something about {i}."}) + "\n"
                                 for i in range(n_seeds)))  # fmt: skip
    opts = "{token_ids: true}" if token_ids else "{}"
    return write_config(
        tmp,
        f"name: {name}\nrecipe: {recipe}\nseeds: '{seeds}'\nstore: '{tmp / 's.duckdb'}'\n"
        f"params: {{max_tokens: 48, n: 2, {params}}}\n"
        f"teacher: {{spec: 'openai:m@{url}', options: {opts}}}\nrunner: {{commit_interval_s: {commit_s}}}\n",
        name=f"{name}.yaml",
    )


# -- the packed form -------------------------------------------------------------------------------------
def test_packed_logprobs_give_back_exactly_what_was_packed():
    with_ids = TokenLogprobs(
        token_ids=[5, 70000, 2**31 - 1],
        top_ids=[[5, 9, 1], [70000, 3], [2**31 - 1, 0, 4]],  # a position with fewer than k alternatives
        top_logprobs=[[-0.125, -2.5, -3.0], [-0.5, -1.75], [-0.0, -7.25, -float("inf")]],
        token_logprobs=[-0.125, -0.5, -0.0],
    )
    strings = TokenLogprobs(
        token_ids=None,
        top_ids=None,
        top_logprobs=[[-0.25, -1.5], [-3.0, -4.0]],
        token_logprobs=[-0.25, -3.0],
        tokens=["Hé", " 🙂"],
        top_tokens=[["Hé", "He"], [" 🙂", ""]],
    )
    for lp in (with_ids, strings, TokenLogprobs([], [], [], [])):
        blob = pack(lp)
        assert unpack(blob) == lp
    n, k = 3, 3
    assert len(pack(with_ids)) == 8 + n * (4 + 4) + n * k * (4 + 4)  # header, chosen, top-k: float32 + int32
    with pytest.raises(ValueError):
        unpack(pack(with_ids)[:-3])


# -- the openai teacher --------------------------------------------------------------------------------------
def test_openai_teacher_reads_logprobs_with_ids_from_a_vllm_style_server_and_strings_otherwise(server):
    req = Request.chat("Tell me a fact.", sampling=Sampling(max_tokens=40), logprobs=K)
    plain = Request.chat("Tell me a fact.", sampling=Sampling(max_tokens=40))
    with_ids, by_text = _teacher(server.base_url, token_ids=True), _teacher(server.base_url)
    # the field vLLM's server reads is sent only when asked for logprobs, and only with the option
    assert with_ids.payload(req)["return_tokens_as_token_ids"] is True
    assert "return_tokens_as_token_ids" not in with_ids.payload(plain) | by_text.payload(req)
    assert "logprobs" not in by_text.payload(plain)
    # the option changes what is stored for a request with logprobs, so it is in the identity (only when set)
    assert (
        with_ids.identity() == {**by_text.identity(), "token_ids": True}
        and "token_ids" not in by_text.identity()
    )

    async def both():
        try:
            return await with_ids.complete([req, plain]), await by_text.complete([req])
        finally:
            await with_ids.aclose()
            await by_text.aclose()

    (a, none), (b,) = asyncio.run(both())
    assert isinstance(a, Completion) and isinstance(b, Completion) and isinstance(none, Completion)
    assert none.logprobs is None
    lp = a.logprobs
    assert lp is not None and lp.has_ids and lp.token_ids is not None and lp.top_ids is not None
    assert len(lp.token_ids) == a.completion_tokens == len(lp.top_ids) == len(lp.top_logprobs) > 0
    assert all(len(ids) == K and len(lps) == K for ids, lps in zip(lp.top_ids, lp.top_logprobs, strict=True))
    assert all(lps == sorted(lps, reverse=True) for lps in lp.top_logprobs)  # best first
    assert lp.token_ids == [ids[0] for ids in lp.top_ids]  # the server's chosen token is its best one
    assert lp.tokens is None
    # by text: the same positions and values, no ids, the token strings kept
    sb = b.logprobs
    assert sb is not None and not sb.has_ids and sb.token_ids is None and sb.top_ids is None
    assert sb.tokens is not None and "".join(sb.tokens) == b.text
    assert len(sb.tokens) == b.completion_tokens and all(len(t) == K for t in sb.top_tokens or [])


# -- a run: first answer, cache hit, export ------------------------------------------------------------------
def _spy(monkeypatch) -> list[Completion]:
    seen: list[Completion] = []
    generate = Runner.generate

    async def spy(self, req, *, teacher="default"):
        c = await generate(self, req, teacher=teacher)
        seen.append(c)
        return c

    monkeypatch.setattr(Runner, "generate", spy)
    return seen


def test_a_cache_hit_returns_the_first_answers_logprobs_and_the_export_carries_them(tmp_path, server,
                                                                                    monkeypatch):  # fmt: skip
    seen = _spy(monkeypatch)
    first = asyncio.run(api.run_async(api.prepare(_config(tmp_path, server.base_url))))
    assert first.status == "done" and seen and not any(c.cached for c in seen)
    paid = {c.key: c for c in seen}
    assert len(paid) == 12 and all(c.logprobs is not None and c.logprobs.has_ids for c in paid.values())
    seen.clear()
    # the same requests in another run: every answer from the cache, with exactly the same logprobs
    again = asyncio.run(api.run_async(api.prepare(_config(tmp_path, server.base_url, name="again"))))
    assert again.progress.cache_hits == 12 and all(c.cached for c in seen)
    assert {c.key: c.logprobs for c in seen} == {k: c.logprobs for k, c in paid.items()}

    with Store(tmp_path / "s.duckdb") as st:
        for shape in ("messages", "prompt_completion"):
            res = export_run(st, again.run_id, tmp_path / shape, fmt="hf", shape=shape)
            assert res.soft_labels == {"with ids": 12}
            rows = pq.read_table(tmp_path / shape / "data").to_pylist()
            assert len(rows) == 12
            for row in rows:
                (key,) = row["request_keys"]
                want = paid[key]
                ids, top, lps = row["teacher_token_ids"], row["teacher_top_ids"], row["teacher_top_logprobs"]
                assert len(ids) == want.completion_tokens == len(top) == len(lps)
                assert all(len(t) == K and len(p) == K for t, p in zip(top, lps, strict=True))
                assert (ids, top, lps) == (want.logprobs.token_ids, want.logprobs.top_ids,
                                           want.logprobs.top_logprobs)  # fmt: skip
            card = (tmp_path / shape / "README.md").read_text()
            assert "12 rows carry the teacher's top-k logprobs" in card


def test_without_ids_the_export_keeps_token_strings_and_says_so(tmp_path, server, cli):
    cfg = _config(tmp_path, server.base_url, token_ids=False, n_seeds=2)
    res = asyncio.run(api.run_async(api.prepare(cfg)))
    out = cli("export", res.run_id, "--store", str(tmp_path / "s.duckdb"), "--out", str(tmp_path / "e"),
              "--format", "jsonl", "--as", "prompt_completion", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "4 of them have no token ids" in out.stdout and "token_ids: true" in out.stdout
    rows = [json.loads(line) for line in (tmp_path / "e" / "train.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["teacher_token_ids"] is None and r["teacher_top_ids"] is None
        assert "".join(r["teacher_tokens"]) == r["completion"]
        assert [len(t) for t in r["teacher_top_tokens"]] == [len(p) for p in r["teacher_top_logprobs"]]


# -- the recipes' param ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["prompt", "rationales", "program_rationales"])
def test_the_recipe_param_reaches_every_request_and_unset_leaves_requests_and_run_as_they_were(
    tmp_path, server, recipe
):
    seeds = write_seeds(tmp_path / "seeds.jsonl", 2)
    extra = "template: '{{ question }}', required: [question], " if recipe == "prompt" else ""

    def prep(params: str):
        cfg = write_config(
            tmp_path,
            f"name: p\nrecipe: {recipe}\nseeds: '{seeds}'\nstore: '{tmp_path / 's.duckdb'}'\n"
            f"params: {{{extra}max_tokens: 16{params}}}\nteacher: 'openai:m@{server.base_url}'\n",
        )
        return api.prepare(cfg)

    unset, asked = prep(""), prep(f", logprobs: {K}")
    plain = [r for _, r in first_stage_requests(unset, list(unset.seeds))]
    soft = [r for _, r in first_stage_requests(asked, list(asked.seeds))]
    assert plain and all(r.logprobs is None and "logprobs" not in r.body() for r in plain)
    assert len(soft) == len(plain) and all(r.logprobs == K and r.body()["logprobs"] == K for r in soft)
    assert [r.messages for r in soft] == [r.messages for r in plain]
    assert unset.run_id != asked.run_id
    # unset, the param is left out of what the run id hashes: runs from before it resume as they were
    version = unset.template_version + plugins.code_version(unset.recipe.process)
    dumped = unset.params.model_dump(mode="json")
    assert dumped.pop("logprobs") is None
    assert run_id_for(unset.config, unset.seeds_digest, dumped, version) == unset.run_id


def test_a_teacher_without_logprobs_is_refused_before_any_request(tmp_path, seeds_file):
    cfg = write_config(
        tmp_path,
        f"name: p\nrecipe: rationales\nseeds: '{seeds_file}'\nstore: '{tmp_path / 's.duckdb'}'\n"
        "params: {logprobs: 2}\nteacher: scripted:x\n",
    )
    t = ScriptedTeacher("scripted:x", "x", {"fn": lambda r: "The answer is 1."})
    with pytest.raises(ConfigError, match=r"params\.logprobs: the scripted teacher"):
        asyncio.run(api.run_async(api.prepare(cfg), teacher=t))
    assert t.calls == []


# -- SIGKILL: the journal keeps them ---------------------------------------------------------------------------
def test_logprobs_journaled_before_a_sigkill_are_kept_and_the_resumed_run_exports_them(tmp_path):
    with start_subprocess(latency=0.02) as srv:
        cfg = _config(tmp_path, srv.base_url, n_seeds=200, commit_s=60)  # nothing committed before the kill
        store = tmp_path / "s.duckdb"
        p = subprocess.Popen([sys.executable, "-m", "factory.cli", "run", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and p.poll() is None:
                if len(read_segments(journal_dir(store), CACHE_COLUMNS, later=1)[1]) >= 10:
                    break
                time.sleep(0.02)
            assert p.poll() is None, p.stderr.read() if p.stderr else ""
        finally:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
        _, journaled = read_segments(journal_dir(store), CACHE_COLUMNS, later=1)
        assert len(journaled) >= 10
        blob = CACHE_COLUMNS.index("logprobs")
        assert all(isinstance(r[blob], str) for r in journaled)  # base64 text in the line
        teacher = _teacher(srv.base_url, token_ids=True)
        with Store(store) as st:  # the open replays the journal
            rows = st.con.execute(
                "SELECT key, request, text, completion_tokens, logprobs FROM cache WHERE key IN "
                "(SELECT unnest(?::VARCHAR[]))",
                [[r[0] for r in journaled]],
            ).fetchall()
        assert len(rows) == len({r[0] for r in journaled})
        for _key, request, text, completion_tokens, stored in rows:
            b = orjson.loads(request)
            s = b["sampling"]
            messages = tuple({"role": m["role"], "content": m["content"]} for m in b["messages"])  # as sent
            req = Request(messages, Sampling(s["temperature"], s["top_p"], s["max_tokens"],
                          seed=s.get("seed")), b["sample"], logprobs=b["logprobs"])  # fmt: skip
            sent = body_key(orjson.dumps(teacher.payload(req)))  # what the server made its logprobs from
            want = from_openai(fake_logprobs(text, sent, K, True)["content"])
            got = unpack(stored)
            assert got == want and len(got.token_ids or []) == completion_tokens
        # the same command again finishes the run; every answer has its logprobs in the export
        done = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(cfg), "--json"],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        run_id = json.loads(done.stdout)["run_id"]
    with Store(store) as st:
        res = export_run(st, run_id, tmp_path / "out", fmt="jsonl", shape="messages")
    assert res.rows == 400 and res.soft_labels == {"with ids": 400}
    for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()[:50]:
        r = json.loads(line)
        assert len(r["teacher_token_ids"]) == len(r["teacher_top_ids"]) > 0
        assert not any(math.isnan(x) for p in r["teacher_top_logprobs"] for x in p)


def test_a_journal_line_whose_logprobs_are_not_base64_stops_the_open_and_names_the_column(tmp_path):
    store = tmp_path / "s.duckdb"
    Store(store).close()
    good = pack(TokenLogprobs([1], [[1, 2]], [[-0.5, -1.5]], [-0.5]))
    row = ["k1", "openai:m", "ok", "{}", "t", "stop", 1, 1, 1.0, None, "r"]
    jdir = journal_dir(store)
    jdir.mkdir()
    lines = [[*row, base64.b64encode(good).decode()], ["k2", *row[1:], "not base64!"]]
    (jdir / "seg-1-00000001.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    with pytest.raises(StoreError, match="logprobs is str"):
        Store(store)
    with Store(store, repair_journal=True) as st:  # `factory doctor --repair`: the good line is kept
        (blob,) = st.con.execute("SELECT logprobs FROM cache WHERE key = 'k1'").fetchone()
    assert unpack(blob) == unpack(good)
