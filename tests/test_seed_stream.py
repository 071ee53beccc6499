"""Seed files stream: a checking pass keeps the count and the digest, the run reads windows of rows again.
Run identities are those of the earlier whole-file reader; a bad row or a repeated id deep in a file is
the same clear error before any store exists; resume looks finished seeds up a window at a time."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_config

from factory import api, runner, seeds
from factory.errors import ConfigError
from factory.keyfilter import KeyFilter
from factory.keys import request_key
from factory.seeds import SeedFile, check_seeds, load_seeds, seed_windows, seeds_digest
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher

# run ids (and seed digests) that the whole-file reader gave these files: a streamed file is the same run
GOLDEN = {
    "s.jsonl": ("golden-e23c90ad5d", "5bc8653b32f29acbb2aba840f6d434c1"),
    "s.csv": ("golden-3cbbc8a992", "c3f566443f8747f02df2a6ae12fd7c82"),
    "s.parquet": ("golden-9924cd2b30", "1b979588ef3c97aeb07673b2befd57ae"),
    "s.json": ("golden-921bdc9960", "cb73340363ef4df6623380f793a1457a"),
}


def _golden_files(d):
    # BOM, CRLF, a blank line, rows with and without ids, a numeric id, non-ASCII, nesting, no final newline
    (d / "s.jsonl").write_bytes(
        b'\xef\xbb\xbf{"id": "a", "text": "caf\xc3\xa9 \xe2\x80\x94 one", "n": 1.5}\r\n'
        b"\n"
        b'{"text": "no id here", "tags": ["x", "y"], "meta": {"b": 2, "a": 1}}\n'
        b'{"id": 7, "text": "numeric id"}\n'
        b'{"text": "last line without newline", "z": null}'
    )
    (d / "s.csv").write_bytes(b'id,text\r\n1,"a, quoted\nfield"\r\n,no id\r\n3,plain\r\n')
    pq.write_table(
        pa.table({"id": ["p1", None, "p3"], "text": ["one", "two", "three"], "k": [1, 2, 3]}), d / "s.parquet"
    )
    (d / "s.json").write_bytes(b'[{"id": "j1", "text": "one"}, {"text": "two"}]')


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_a_streamed_seed_file_is_the_same_run_as_before(tmp_path, name):
    _golden_files(tmp_path)
    cfg = write_config(
        tmp_path, f"name: golden\nrecipe: prompt\nseeds: {name}\nteacher: 'openai:m@http://127.0.0.1:9/v1'\n"
    )
    prep = api.prepare(cfg)
    assert isinstance(prep.seeds, SeedFile)
    assert (prep.run_id, prep.seeds.digest) == GOLDEN[name]
    assert seeds_digest(load_seeds(tmp_path / name)) == GOLDEN[name][1]


def _jsonl(path, n, bad_at=None, bad=b'{"topic": "no text"}'):
    with path.open("wb") as f:
        for i in range(1, n + 1):
            f.write(bad + b"\n" if i == bad_at else b'{"id": "s%d", "text": "t%d"}\n' % (i, i))
    return path


def test_windows_hold_every_row_once_in_file_order_and_len_is_known_up_front(tmp_path):
    path = _jsonl(tmp_path / "s.jsonl", 1000)
    sf = check_seeds(path, ["text"])
    assert len(sf) == 1000
    windows = list(seed_windows(sf, 300))
    assert [len(w) for w in windows] == [300, 300, 300, 100]
    assert [s.id for w in windows for s in w] == [f"s{i}" for i in range(1, 1001)]
    assert seeds_digest(s for w in windows for s in w) == sf.digest


@pytest.mark.parametrize("block", [1, 16, 1 << 20])
def test_the_run_reads_the_rows_the_check_read(tmp_path, block, monkeypatch):
    """The run's reading (whole lines a block at a time, no checks made again) gives the rows, ids and
    order of the checking read: a byte-order mark, CRLF and other line breaks, blank lines, rows with and
    without an id, a last line without its newline."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": 7, "text": "a"}\r\n{"text": "caf\xc3\xa9"}\n\n  \n{"text": "c"}\x0c{"text": "d"}\r'
        + b"".join(b'{"text": "t%d"}\n' % i for i in range(40))
        + b'{"id": "last", "text": "'
        + b"x" * 100
        + b'"}'
    )
    sf = check_seeds(path, ["text"])
    checked = [seed for _, seed, _ in seeds._seeds(path, ["text"])]
    whole_lines = seeds._jsonl_again
    monkeypatch.setattr(seeds, "_jsonl_again", lambda p: whole_lines(p, block))
    assert [s for w in sf.windows(7) for s in w] == checked
    assert len(checked) == 45 and checked[0].id == "7" and checked[-1].id == "last"
    assert seeds_digest(checked) == sf.digest


def test_a_row_that_no_longer_reads_is_a_changed_file_not_a_traceback(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"text": "a"}\n[1, 2]\n')
    with pytest.raises(ConfigError, match="changed since it was checked"):
        list(seeds._seeds_again(path))


@pytest.mark.parametrize(
    ("suffix", "content", "expect"),
    [
        (".jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n{"text": "caf\xe9"}\n', "line 4 (byte 55)"),
        (".jsonl", b'\xef\xbb\xbf{"text": "a"}\n{"text": "\xff"}\n', "invalid UTF-8 at line 2 (byte 27)"),
        (".csv", b"id,text\n1,a\n2,b\n3,caf\xe9\n", "invalid UTF-8 at line 4 (byte 21)"),
        (".jsonl", b'{"text": "a"}\n\n{"text": "b"}\n{"text": }\n', "line 4: not valid JSON"),
        (".jsonl", b'{"text": "a"}\r\n{"text": "b"}\x0b{"text": }\n', "line 3: not valid JSON"),
        (".csv", b"id,text\n1,a\n2,b,c\n", "line 3: more values than the 2 header columns"),
    ],
)
def test_errors_name_the_same_line_and_byte_as_a_whole_file_read(tmp_path, suffix, content, expect):
    path = tmp_path / f"s{suffix}"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        check_seeds(path, ["text"])


def test_a_bad_row_deep_in_the_file_stops_the_run_before_the_store_exists(tmp_path, cli):
    _jsonl(tmp_path / "s.jsonl", 30_000, bad_at=25_000)
    write_config(
        tmp_path, "name: deep\nrecipe: prompt\nseeds: s.jsonl\nstore: s.duckdb\nteacher: scripted:x\n"
    )
    out = cli("run", "cfg.yaml", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "s.jsonl, row 25000: missing required field(s) 'text'" in out.stderr
    assert not (tmp_path / "s.duckdb").exists()


def test_a_repeated_id_past_the_ids_kept_in_memory_is_found_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(seeds, "IDS_IN_MEMORY", 50)
    path = tmp_path / "s.jsonl"
    rows = [f"s{i}" for i in range(1, 401)]
    rows[299] = "s120"  # row 300 repeats row 120: the first repeat, in row order
    rows[349] = "s7"  # row 350 repeats row 7, later
    path.write_text("".join(f'{{"id": "{r}", "text": "t"}}\n' for r in rows))
    with pytest.raises(ConfigError, match=r"row 300: id 's120' repeats row 120; seed ids must be unique"):
        check_seeds(path)
    monkeypatch.setattr(seeds, "IDS_IN_MEMORY", 100_000)  # the same answer from the dict
    with pytest.raises(ConfigError, match=r"row 300: id 's120' repeats row 120; seed ids must be unique"):
        check_seeds(path)


def _cfg(tmp_path, extra=""):
    return write_config(
        tmp_path,
        f"name: w\nrecipe: prompt\nseeds: s.jsonl\nstore: s.duckdb\nteacher: scripted:x\n"
        f"runner: {{commit_interval_s: 0.02, max_seeds_in_flight: 4}}\n{extra}",
    )


def _teacher():
    return ScriptedTeacher("scripted:x", "x", {"fn": lambda r: "answer to " + r.messages[-1]["content"]})


def test_a_seed_file_changed_after_its_check_fails_the_run_without_a_request(tmp_path):
    path = _jsonl(tmp_path / "s.jsonl", 20)
    prep = api.prepare(_cfg(tmp_path))
    with path.open("ab") as f:
        f.write(b'{"id": "late", "text": "added"}\n')
    t = _teacher()
    res = asyncio.run(api.run_async(prep, teacher=t))
    assert res.status == "failed" and "changed since it was checked" in (res.error or "")
    assert t.calls == []


def test_resume_looks_finished_seeds_up_a_window_at_a_time_and_pays_nothing_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "SEED_WINDOW", 5)
    _jsonl(tmp_path / "s.jsonl", 40)
    first = _teacher()
    res = asyncio.run(
        api.run_async(api.prepare(_cfg(tmp_path, "budget: {max_requests: 17}\n")), teacher=first)
    )
    assert res.status == "budget" and len(first.calls) == 17
    again = _teacher()
    res2 = asyncio.run(api.run_async(api.prepare(_cfg(tmp_path)), teacher=again))
    assert res2.status == "done" and res2.progress.seeds_resumed == 17 and res2.progress.seeds_total == 40
    assert len(again.calls) == 40 - 17 and res2.progress.cache_hits == 0
    sent = {r.messages[-1]["content"] for r in first.calls + again.calls}
    assert sent == {f"t{i}" for i in range(1, 41)}
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        assert st.count_done(res.run_id) == 40
        assert st.done_among(res.run_id, ["s1", "s40", "nope"]) == {"s1", "s40"}


def test_a_prompt_asked_again_after_its_answer_was_committed_is_served_from_the_store(tmp_path, monkeypatch):
    """The teacher had nothing cached, so the runner looks up only keys this run committed (the filter)."""
    monkeypatch.setattr(runner, "SEED_WINDOW", 4)
    with (tmp_path / "s.jsonl").open("w") as f:
        for i in range(24):
            f.write(f'{{"id": "s{i}", "text": "prompt {i % 4}"}}\n')  # four prompts, each 6 times
    cfg = write_config(
        tmp_path,
        "name: w\nrecipe: prompt\nseeds: s.jsonl\nstore: s.duckdb\nteacher: scripted:x\n"
        "runner: {commit_interval_s: 0.01, max_seeds_in_flight: 1}\n",
    )

    class Slow(ScriptedTeacher):
        async def complete(self, requests):
            await asyncio.sleep(0.25)  # commits happen while the next prompts are out
            return await super().complete(requests)

    t = Slow("scripted:x", "x", {"fn": lambda r: "answer"})
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=t))
    assert res.status == "done" and res.progress.records == 24
    # each prompt paid once; the repeats that came after the first answer's commit were looked up
    assert len(t.calls) == 4 and res.progress.cache_hits > 0


def test_the_key_filter_never_forgets_a_key_and_rarely_claims_one():
    kf = KeyFilter(bits=16)  # a small filter: 8 KiB
    ident = {"backend": "t"}
    added = [request_key(ident, {"i": i}) for i in range(2000)]
    assert not any(k in kf for k in added)  # empty: nothing is claimed
    kf.update(added)
    assert all(k in kf for k in added)
    others = [request_key(ident, {"j": j}) for j in range(2000)]
    assert sum(k in kf for k in others) < 20  # ~0.2 % expected at this fill
