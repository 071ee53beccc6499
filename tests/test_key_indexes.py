"""cache and seeds_done without key indexes (m011): stores of the earlier schema are moved in one
transaction with every row, column order, default and NOT NULL kept, and keys stay unique by what the
writer inserts."""

import duckdb
import pytest

from factory.store import Batch, Store
from factory.store import migrations as mig

OLD = mig.MIGRATIONS[: mig.MIGRATIONS.index(mig.m011_no_key_indexes)]


def _row(key, text="t", status="ok"):
    return (key, "openai:m", status, "{}", text, "stop", 1, 2, 3.0, None, "r", None, None, 0, 0.0125)


def _old_store(path, monkeypatch):
    """A store as the code before m011 wrote it: its migrations, answers, finished seeds, a retired answer."""
    with monkeypatch.context() as m:
        m.setattr(mig, "MIGRATIONS", OLD)
        with Store(path) as st:
            st.commit(Batch(cache=[_row(f"k{i}", f"answer {i}") for i in range(300)]))
            st.commit(
                Batch(
                    cache=[_row("bad", None, "rejected")], seeds_done=[("r", f"s{i}", 1) for i in range(50)]
                )
            )
            st.con.execute(
                "INSERT INTO cache_retired SELECT *, 'old', now() FROM cache WHERE key = 'k0'"
            ).fetchall()
            assert _keys(st.con) == {"cache": "PRIMARY KEY", "seeds_done": "PRIMARY KEY"}


def _keys(con):
    return dict(
        con.execute(
            "SELECT table_name, constraint_type FROM duckdb_constraints() "
            "WHERE table_name IN ('cache', 'seeds_done') AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')"
        ).fetchall()
    )


def _dump(con):
    cols = con.execute(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_name IN ('cache', 'seeds_done', 'cache_retired') ORDER BY table_name, ordinal_position"
    ).fetchall()
    cache = con.execute("SELECT * FROM cache ORDER BY key").fetchall()
    seeds = con.execute("SELECT * FROM seeds_done ORDER BY seed_id").fetchall()
    return cols, cache, seeds


def test_an_earlier_store_loses_its_key_indexes_and_keeps_every_row(tmp_path, monkeypatch):
    path = tmp_path / "s.duckdb"
    _old_store(path, monkeypatch)
    con = duckdb.connect(str(path))
    before = _dump(con)
    con.close()
    with Store(path) as st:
        assert "m011_no_key_indexes" in {
            r[0] for r in st.con.execute("SELECT name FROM _migrations").fetchall()
        }
        assert _keys(st.con) == {}
        assert _dump(st.con) == before  # rows, column order, types, NOT NULLs and defaults
        assert st.lookup(["k7", "nope"])["k7"]["text"] == "answer 7"
        assert st.done_among("r", ["s3", "s99"]) == {"s3"}
        with pytest.raises(duckdb.ConstraintException):  # NOT NULL kept
            st.con.execute("INSERT INTO cache (key, teacher, status) VALUES ('x', NULL, 'ok')").fetchall()
        # a move to cache_retired copies cache.* by position, as earlier migrations and `cache forget` do
        st.con.execute(
            "INSERT INTO cache_retired SELECT *, 'moved', now() FROM cache WHERE key = 'k1'"
        ).fetchall()
        # stored keys and seeds are not stored twice; new ones go in
        st.commit(
            Batch(
                cache=[_row("k5", "other"), _row("new"), _row("new")],
                seeds_done=[("r", "s1", 1), ("r", "s50", 1)],
            )
        )
        assert st._scalar("SELECT count(*) FROM cache WHERE key IN ('k5', 'new')") == 2
        assert st.lookup(["k5"])["k5"]["text"] == "answer 5"
        assert st.count_done("r") == 51
        assert st._scalar("SELECT count(*) FROM cache WHERE created_at IS NULL") == 0  # the default


def test_the_migration_is_one_transaction(tmp_path, monkeypatch):
    """A failure after the tables were rebuilt leaves the earlier store as it was."""
    path = tmp_path / "s.duckdb"
    _old_store(path, monkeypatch)
    con = duckdb.connect(str(path))
    before = _dump(con)
    con.close()

    def broken(con):
        mig.m011_no_key_indexes(con)
        raise RuntimeError("disk gone")

    broken.__name__ = "m011_no_key_indexes"
    monkeypatch.setattr(mig, "MIGRATIONS", [*OLD, broken])
    with pytest.raises(RuntimeError, match="disk gone"):
        Store(path)
    con = duckdb.connect(str(path))
    assert _dump(con) == before
    assert _keys(con) == {"cache": "PRIMARY KEY", "seeds_done": "PRIMARY KEY"}
    assert "m011_no_key_indexes" not in {r[0] for r in con.execute("SELECT name FROM _migrations").fetchall()}
    con.close()


def test_a_commit_stores_each_key_and_seed_once_unless_the_runner_vouches(tmp_path):
    """The default commit (journal replay, shards, the batch queue) skips what is stored and repeats in the
    batch; the runner's commits (``known_new``) insert plainly and are not checked."""
    with Store(tmp_path / "s.duckdb") as st:
        st.commit(Batch(cache=[_row("a"), _row("a", "twice")], seeds_done=[("r", "s", 1), ("r", "s", 1)]))
        st.commit(Batch(cache=[_row("a", "again"), _row("b")], seeds_done=[("r", "s", 2), ("q", "s", 1)]))
        assert st.con.execute("SELECT key, count(*) FROM cache GROUP BY key ORDER BY key").fetchall() == [
            ("a", 1),
            ("b", 1),
        ]
        assert st.con.execute(
            "SELECT run_id, seed_id, records FROM seeds_done ORDER BY run_id"
        ).fetchall() == [
            ("q", "s", 1),
            ("r", "s", 1),
        ]
        st.commit(Batch(cache=[_row("c")], seeds_done=[("r", "t", 1)]), known_new=True)
        assert st.lookup(["c"])["c"]["status"] == "ok" and st.count_done("r") == 2
