import subprocess
import sys

import duckdb
import orjson
import pytest

from factory.errors import StoreError, StoreInUse
from factory.store import CACHE_COLUMNS, Batch, Store
from factory.store.journal import journal_dir
from factory.store.migrations import MIGRATIONS


def _row(key, text="t"):
    return (key, "t", "ok", "{}", text, "stop", 1, 2, 3.0, None, "r", None, None, 0, 0.0125)


def test_migrations_run_once_and_tables_exist(tmp_path):
    p = tmp_path / "s.duckdb"
    Store(p).close()
    with Store(p) as st:
        names = {r[0] for r in st.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        applied = st.con.execute("SELECT name FROM _migrations").fetchall()
    assert {"runs", "cache", "records", "verdicts", "seeds_done", "failures", "run_stats"} <= names
    assert "cache_forgotten" in names
    assert applied[:3] == [("m001_initial",), ("m002_filter_passes",), ("m003_key_format",)]
    assert applied == [(fn.__name__,) for fn in MIGRATIONS] and ("m005_cache_forgotten",) in applied


def test_commit_is_idempotent(tmp_path):
    with Store(tmp_path / "s.duckdb") as st:
        st.commit(Batch(cache=[_row("a"), _row("b"), _row("a")]))
        st.commit(Batch(cache=[_row("a", "changed")]))
        assert st.count_cache() == 2
        assert st.lookup(["a", "zz"])["a"]["text"] == "t"


def test_journal_is_replayed_on_open(tmp_path):
    p = tmp_path / "s.duckdb"
    with Store(p) as st:
        j = st.journal()
        j.append(_row("k1")[:12])  # as a journal wrote it before answers had their reasoning column
        j.append((*_row("k2")[:12], "a reasoning trace", 0, 0.0125))
        j.flush()
        # simulate a crash: the segment is never committed, and a torn last line
    seg = next(journal_dir(p).glob("seg-*.jsonl"))
    with open(seg, "ab") as f:  # a row as an older journal wrote it (an object), then a torn line
        f.write(orjson.dumps(dict(zip(CACHE_COLUMNS, _row("k3"), strict=True))) + b"\n")
        f.write(
            orjson.dumps(list(_row("k4")[:11])) + b"\n"
        )  # a row from before the logprobs and cost columns
        f.write(b'["torn", "t"')
    with Store(p) as st:
        assert st.count_cache() == 4
        found = st.lookup(["k1", "k2", "k3", "k4", "torn"])
        assert set(found) == {"k1", "k2", "k3", "k4"}
        assert found["k2"]["reasoning"] == "a reasoning trace" and found["k1"]["reasoning"] is None
        assert found["k2"]["cost_usd"] == found["k3"]["cost_usd"] == 0.0125
        assert found["k1"]["cost_usd"] is None and found["k4"]["cost_usd"] is None
    assert not list(journal_dir(p).glob("seg-*.jsonl"))


def test_second_process_gets_store_in_use(tmp_path):
    p = tmp_path / "s.duckdb"
    with Store(p):
        code = (
            "import sys\nfrom factory.store import Store\nfrom factory.errors import StoreInUse\n"
            f"try:\n    Store({str(p)!r})\nexcept StoreInUse as e:\n    print('IN USE', e); sys.exit(7)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 7, out.stderr
    assert "in use" in out.stdout


def test_read_only_missing_store_is_clear(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        Store(tmp_path / "nope.duckdb", read_only=True)


def test_not_a_duckdb_file(tmp_path):
    p = tmp_path / "bad.duckdb"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store(p)
    assert isinstance(StoreInUse("x"), StoreError)
    _ = duckdb


def test_a_runs_duckdb_memory_is_a_page_cache_that_the_run_does_not_grow(tmp_path):
    """A run caps DuckDB's memory (else its page cache fills whatever the limit allows): the page cache plus
    room for the small tables' key indexes. cache and seeds_done have no key index (DuckDB held one whole
    in memory to insert into it, about 70 bytes a row), so 250,000 answers and finished seeds leave the
    limit where it was; off, DuckDB's default again."""
    from factory.store import tables

    def limit(st):
        return st.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]

    def near(setting, n):  # DuckDB shows the limit in MiB with one decimal
        value, unit = setting.split()
        return unit == "MiB" and abs(float(value) - n / 2**20) <= 0.1

    def art(st):
        return st._scalar(
            "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'ART_INDEX'"
        )

    with Store(tmp_path / "s.duckdb") as st:
        default = limit(st)
        st.commit(Batch(cache=[_row(f"k{i}") for i in range(1000)]))
        st.bounded(True)
        assert near(limit(st), tables.RUN_PAGE_CACHE + tables.INDEX_HEADROOM)
        for b in range(1, 6):
            ids = range(b * 50_000 - 49_000, b * 50_000 + 1000)
            st.commit(Batch(cache=[_row(f"k{i}") for i in ids], seeds_done=[("r", f"s{i}", 1) for i in ids]))
        assert st._scalar("SELECT count(*) FROM cache") == 251_000
        assert art(st) < 2**20  # only the small tables' keys
        assert near(limit(st), tables.RUN_PAGE_CACHE + tables.INDEX_HEADROOM)
        st.bounded(False)
        assert limit(st) == default
    # never over the machine's share
    box = tables.os.sysconf("SC_PHYS_PAGES") * tables.os.sysconf("SC_PAGE_SIZE")
    assert tables.run_memory_limit(10**13) == int(box * tables.RUN_MEMORY_SHARE)
