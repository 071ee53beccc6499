"""Schema migrations, applied in order on open and recorded in ``_migrations``.

Each migration is a named function; a released one is never edited, only followed by a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import duckdb

log = logging.getLogger(__name__)


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


def m003_key_format(con: duckdb.DuckDBPyConnection) -> None:
    """``store_meta`` holds facts about the store itself; ``key_format`` is the version of the rules the
    cache keys were made by (factory.keys.KEY_FORMAT). Stores from before this migration were written by
    format 1; opening one moves it to the current format (factory.store.keyformat). ``cache_retired``
    keeps answers set aside by such a move: never served again, never deleted."""
    con.execute("CREATE TABLE store_meta (name VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.execute("INSERT INTO store_meta VALUES ('key_format', '1')")
    con.execute(
        "CREATE TABLE cache_retired AS SELECT *, CAST(NULL AS VARCHAR) AS retired_reason, "
        "CAST(NULL AS TIMESTAMPTZ) AS retired_at FROM cache WHERE false"
    )


def m004_uncached_failures(con: duckdb.DuckDBPyConnection) -> None:
    """Only rejections that the exact keyed request always gets stay cached (a local engine refusing a
    schema or a prompt over its keyed max_model_len). Earlier versions also cached an API's 4xx answers (a
    wrong key, a wrong model name, a bad URL), which a re-run then served for ever: they move to
    ``cache_retired`` (never served), so the next run asks again. Records are not touched."""
    where = "status <> 'ok' AND split_part(teacher, ':', 1) NOT IN ('vllm', 'transformers', 'embedded')"
    row = con.execute(f"SELECT count(*) FROM cache WHERE {where}").fetchone()
    n = row[0] if row else 0
    if not n:
        return
    con.execute(
        f"INSERT INTO cache_retired SELECT *, 'an API refusal, no longer cached', now() FROM cache WHERE {where}"
    )
    con.execute(f"DELETE FROM cache WHERE {where}")
    log.warning("%d cached API refusals set aside: the next run asks those requests again", n)


def m005_cache_forgotten(con: duckdb.DuckDBPyConnection) -> None:
    """`factory cache forget` deletes cache rows (request and answer text) but keeps, per forgotten key, what
    the cards and reports of the runs that used it count: teacher, status, the request's sampling (as
    ``{"sampling": ...}`` JSON), tokens, latency, error, the run that stored it and when."""
    con.execute(
        """
        CREATE TABLE cache_forgotten (
            key VARCHAR PRIMARY KEY,
            teacher VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            request VARCHAR,              -- {"sampling": ...} of the request, nothing else
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms DOUBLE,
            error VARCHAR,
            run_id VARCHAR,
            created_at TIMESTAMPTZ,
            forgotten_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )


def m006_failure_examples(con: duckdb.DuckDBPyConnection) -> None:
    """One example message per failure kind of each invocation (``{kind: message}``), beside the counts in
    ``failures``, so that ``factory status`` can say why attempts failed."""
    con.execute("ALTER TABLE run_stats ADD COLUMN failure_examples JSON")


def m007_batches(con: duckdb.DuckDBPyConnection) -> None:
    """Provider batches (``teacher.mode: batch``): one row per batch file, written before each step whose
    effect could otherwise be lost (see factory.batch_queue), and the request keys each file holds with
    the request's JSON (so an answer can be cached whichever run asks for it)."""
    con.execute(
        """
        CREATE TABLE batches (
            id VARCHAR PRIMARY KEY,           -- ours, sent as metadata.factory_batch
            teacher VARCHAR NOT NULL,
            run_id VARCHAR,
            state VARCHAR NOT NULL,           -- uploading | creating | submitted | settled | dropped
            provider_status VARCHAR,          -- validating | in_progress | finalizing | completed | ...
            batch_id VARCHAR,
            input_file_id VARCHAR,
            output_file_id VARCHAR,
            error_file_id VARCHAR,
            requests INTEGER NOT NULL,
            bytes BIGINT NOT NULL,
            total INTEGER,
            completed INTEGER,
            failed INTEGER,
            answered INTEGER,
            retried INTEGER,
            provider_created_at BIGINT,
            in_progress_at BIGINT,
            ended_at BIGINT,
            expires_at BIGINT,
            error VARCHAR,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )
    con.execute("CREATE TABLE batch_requests (batch VARCHAR NOT NULL, key VARCHAR NOT NULL, request VARCHAR)")


def m009_cache_logprobs(con: duckdb.DuckDBPyConnection) -> None:
    """Soft labels: an answer asked with top-k logprobs keeps them beside its text, packed in one BLOB
    (token ids and logprobs as int32/float32 arrays; factory.logprobs says the layout). NULL for answers
    asked without them. ``cache_retired`` gets the column too, so a retired answer keeps its logprobs, in the
    same place as in ``cache`` (before its own two columns: a move copies ``cache.*`` by position)."""
    con.execute("ALTER TABLE cache ADD COLUMN logprobs BLOB")
    con.execute(
        "CREATE TABLE _cache_retired AS SELECT * EXCLUDE (retired_reason, retired_at), "
        "CAST(NULL AS BLOB) AS logprobs, retired_reason, retired_at FROM cache_retired"
    )
    con.execute("DROP TABLE cache_retired")
    con.execute("ALTER TABLE _cache_retired RENAME TO cache_retired")


def m010_cache_reasoning(con: duckdb.DuckDBPyConnection) -> None:
    """A reasoning model's thinking, stored with its answer (``Completion.reasoning``): the server's
    ``reasoning_content`` or what stood between think tags. NULL for answers without (and all older ones).
    ``cache_retired`` keeps the columns of ``cache`` in its order, then its own two (what
    ``SELECT *, reason, now() FROM cache`` fills), so it is rebuilt with the new column before them."""
    con.execute("ALTER TABLE cache ADD COLUMN reasoning VARCHAR")
    cached = [r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'cache' "
                                         "ORDER BY column_index").fetchall()]  # fmt: skip
    kept = ", ".join(f'"{c}"' if c != "reasoning" else "CAST(NULL AS VARCHAR) AS reasoning" for c in cached)
    con.execute(
        f"CREATE TABLE _cache_retired AS SELECT {kept}, retired_reason, retired_at FROM cache_retired"
    )  # names from the catalog, not values
    con.execute("DROP TABLE cache_retired")
    con.execute("ALTER TABLE _cache_retired RENAME TO cache_retired")


def m008_request_costs(con: duckdb.DuckDBPyConnection) -> None:
    """What each answer cost: ``cache.cost_usd`` (at the teacher's price when it was answered; NULL when no
    price was known, and for answers stored before) and ``cache.cached_prompt_tokens`` (the provider's
    prompt-cache hits, billed less); per invocation, ``run_stats.cost_usd`` (paid), ``saved_usd`` (the cost
    of the answers served from the cache instead) and ``unpriced`` (answers of a teacher with no price).
    ``cache_retired`` gets the two columns too, at the same place as in ``cache`` (before its own two
    columns: a move copies ``cache.*`` by position)."""
    con.execute("ALTER TABLE cache ADD COLUMN cached_prompt_tokens INTEGER")
    con.execute("ALTER TABLE cache ADD COLUMN cost_usd DOUBLE")
    con.execute(
        "CREATE TABLE _cache_retired AS SELECT * EXCLUDE (retired_reason, retired_at), "
        "CAST(NULL AS INTEGER) AS cached_prompt_tokens, CAST(NULL AS DOUBLE) AS cost_usd, retired_reason, "
        "retired_at FROM cache_retired"
    )
    con.execute("DROP TABLE cache_retired")
    con.execute("ALTER TABLE _cache_retired RENAME TO cache_retired")
    con.execute("ALTER TABLE cache_forgotten ADD COLUMN cost_usd DOUBLE")  # a run's cost outlives its text
    con.execute("ALTER TABLE run_stats ADD COLUMN cost_usd DOUBLE")
    con.execute("ALTER TABLE run_stats ADD COLUMN saved_usd DOUBLE")
    con.execute("ALTER TABLE run_stats ADD COLUMN unpriced INTEGER")


def m011_no_key_indexes(con: duckdb.DuckDBPyConnection) -> None:
    """``cache`` and ``seeds_done`` lose their primary keys. DuckDB holds a key index whole in memory to
    insert into it (about 70 bytes a cached answer, as much a finished seed), so a run's memory grew with
    the store; a look-up of a batch of keys scans the table whether or not the index is there
    (benchmarks/bench_key_index.py). Keys stay unique by the writer instead: the runner sends each key
    once and commits it before forgetting it, and every other writer inserts only keys not stored yet
    (factory.store.writes). Both tables are rebuilt with their columns in the same order, defaults and
    NOT NULLs, and their rows (DuckDB cannot drop a primary key in place)."""
    con.execute(
        """
        CREATE TABLE _cache (
            key VARCHAR NOT NULL,
            teacher VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            request VARCHAR NOT NULL,
            text VARCHAR,
            finish_reason VARCHAR,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms DOUBLE,
            error VARCHAR,
            run_id VARCHAR,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            logprobs BLOB,
            reasoning VARCHAR,
            cached_prompt_tokens INTEGER,
            cost_usd DOUBLE
        )
        """
    )
    columns = (
        "key, teacher, status, request, text, finish_reason, prompt_tokens, completion_tokens, latency_ms, "
        "error, run_id, created_at, logprobs, reasoning, cached_prompt_tokens, cost_usd"
    )
    con.execute(f"INSERT INTO _cache ({columns}) SELECT {columns} FROM cache")  # names, not values
    con.execute("DROP TABLE cache")
    con.execute("ALTER TABLE _cache RENAME TO cache")
    con.execute(
        "CREATE TABLE _seeds_done (run_id VARCHAR NOT NULL, seed_id VARCHAR NOT NULL, records INTEGER NOT NULL)"
    )
    con.execute("INSERT INTO _seeds_done SELECT run_id, seed_id, records FROM seeds_done")
    con.execute("DROP TABLE seeds_done")
    con.execute("ALTER TABLE _seeds_done RENAME TO seeds_done")


MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [
    m001_initial,
    m002_filter_passes,
    m003_key_format,
    m004_uncached_failures,
    m005_cache_forgotten,
    m006_failure_examples,
    m007_batches,
    m009_cache_logprobs,
    m010_cache_reasoning,
    m008_request_costs,
    m011_no_key_indexes,
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
