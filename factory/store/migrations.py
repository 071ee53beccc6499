"""Schema migrations, applied in order on open and recorded in ``_migrations``.

Each migration is a named function; a released one is never edited, only followed by a new one.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb


def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE runs (
            id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL,
            recipe VARCHAR NOT NULL,
            teacher VARCHAR NOT NULL,
            config JSON NOT NULL,
            config_hash VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            factory_version VARCHAR
        )
        """
    )
    # One row per request ever answered; the key is the content hash of (teacher, request).
    con.execute(
        """
        CREATE TABLE cache (
            key VARCHAR PRIMARY KEY,
            teacher VARCHAR NOT NULL,
            status VARCHAR NOT NULL,          -- 'ok' | 'rejected'
            request VARCHAR NOT NULL,     -- JSON text of the request body
            text VARCHAR,
            finish_reason VARCHAR,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms DOUBLE,
            error VARCHAR,
            run_id VARCHAR,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )
    # No primary key or secondary index on records: ids are unique by construction (a seed's records are
    # committed once, in the same transaction as its seeds_done row), and indexes cost half the ingest rate.
    con.execute(
        """
        CREATE TABLE records (
            id VARCHAR NOT NULL,
            run_id VARCHAR NOT NULL,
            recipe VARCHAR NOT NULL,
            stage VARCHAR NOT NULL,
            seed_id VARCHAR NOT NULL,
            sample_index INTEGER NOT NULL,
            text VARCHAR,
            payload VARCHAR NOT NULL,     -- JSON text
            parent_ids VARCHAR[],
            request_keys VARCHAR[],
            teacher VARCHAR,
            template_version VARCHAR,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )
    # A seed is done when all of its records are stored; written in the same transaction as them.
    con.execute(
        """
        CREATE TABLE seeds_done (
            run_id VARCHAR NOT NULL,
            seed_id VARCHAR NOT NULL,
            records INTEGER NOT NULL,
            PRIMARY KEY (run_id, seed_id)
        )
        """
    )
    # Filters append verdicts; nothing is ever deleted. The curated set is a view over this table.
    con.execute(
        """
        CREATE TABLE verdicts (
            record_id VARCHAR NOT NULL,
            run_id VARCHAR NOT NULL,
            filter VARCHAR NOT NULL,
            filter_version VARCHAR NOT NULL,
            keep BOOLEAN NOT NULL,
            score DOUBLE,
            reason VARCHAR,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )
    # Requests that finally failed (after retries), and per-run counters, one row per run invocation.
    con.execute(
        """
        CREATE TABLE failures (
            run_id VARCHAR NOT NULL,
            key VARCHAR NOT NULL,
            seed_id VARCHAR,
            kind VARCHAR NOT NULL,
            message VARCHAR,
            attempts INTEGER,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )
    con.execute(
        """
        CREATE TABLE run_stats (
            run_id VARCHAR NOT NULL,
            invocation INTEGER NOT NULL,
            requests_sent BIGINT NOT NULL DEFAULT 0,
            attempts BIGINT NOT NULL DEFAULT 0,
            cache_hits BIGINT NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            failures JSON,
            started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            status VARCHAR,
            PRIMARY KEY (run_id, invocation)
        )
        """
    )


def m002_filter_passes(con: duckdb.DuckDBPyConnection) -> None:
    """Filter passes: each `factory filter` (or the filters at the end of `factory run`) appends a pass and
    one verdict per record and filter, tagged with the pass; the curated view reads the latest pass.
    Recipe parse verdicts have no pass. ``detail`` holds a filter's evidence as JSON."""
    con.execute("ALTER TABLE verdicts ADD COLUMN detail VARCHAR")
    con.execute("ALTER TABLE verdicts ADD COLUMN pass_id INTEGER")
    con.execute(
        """
        CREATE TABLE filter_passes (
            run_id VARCHAR NOT NULL,
            pass_id INTEGER NOT NULL,
            filters JSON NOT NULL,        -- [{filter, version, params}] in order
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (run_id, pass_id)
        )
        """
    )


def m006_failure_examples(con: duckdb.DuckDBPyConnection) -> None:
    """One example message per failure kind of each invocation (``{kind: message}``), beside the counts in
    ``failures``, so that ``factory status`` can say why attempts failed."""
    con.execute("ALTER TABLE run_stats ADD COLUMN failure_examples JSON")


MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [
    m001_initial,
    m002_filter_passes,
    m006_failure_examples,
]


def pending_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the migrations this store lacks (read-only safe)."""
    try:
        done = {r[0] for r in con.execute("SELECT name FROM _migrations").fetchall()}
    except duckdb.CatalogException:
        return [fn.__name__ for fn in MIGRATIONS]
    return [fn.__name__ for fn in MIGRATIONS if fn.__name__ not in done]


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply pending migrations, each in its own transaction. Returns the names applied."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT now())"
    ).fetchall()
    done = {r[0] for r in con.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        con.execute("BEGIN TRANSACTION").fetchall()
        try:
            fn(con)
            con.execute("INSERT INTO _migrations (name) VALUES (?)", [fn.__name__]).fetchall()
            con.execute("COMMIT").fetchall()
        except Exception:
            con.execute("ROLLBACK").fetchall()
            raise
        applied.append(fn.__name__)
    return applied
