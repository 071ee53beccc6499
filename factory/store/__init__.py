"""The store: one DuckDB file that owns runs, the request cache, records and the verdict ledger.

Only this package writes SQL. Values always travel as parameters or Arrow tables, never in f-strings.
One process opens a store for writing; a second one gets :class:`StoreInUse`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from factory.errors import ConfigError, StoreError, StoreInUse
from factory.outputs import ensure_folder
from factory.store import doctor, keyformat
from factory.store.cache_admin import ANSWERS
from factory.store.journal import COUNTERS, BadLine, Journal, journal_dir, latest_stats, scan_segments
from factory.store.migrations import migrate, pending_migrations

log = logging.getLogger(__name__)

CACHE_COLUMNS = (
    "key", "teacher", "status", "request", "text", "finish_reason",
    "prompt_tokens", "completion_tokens", "latency_ms", "error", "run_id",
)  # fmt: skip
RECORD_COLUMNS = (
    "id", "run_id", "recipe", "stage", "seed_id", "sample_index", "text", "payload",
    "parent_ids", "request_keys", "teacher", "template_version",
)  # fmt: skip

_CACHE_SCHEMA = pa.schema(
    [
        ("key", pa.string()), ("teacher", pa.string()), ("status", pa.string()), ("request", pa.string()),
        ("text", pa.string()), ("finish_reason", pa.string()), ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()), ("latency_ms", pa.float64()), ("error", pa.string()),
        ("run_id", pa.string()),
    ]
)  # fmt: skip
_RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()), ("run_id", pa.string()), ("recipe", pa.string()), ("stage", pa.string()),
        ("seed_id", pa.string()), ("sample_index", pa.int32()), ("text", pa.string()), ("payload", pa.string()),
        ("parent_ids", pa.list_(pa.string())), ("request_keys", pa.list_(pa.string())),
        ("teacher", pa.string()), ("template_version", pa.string()),
    ]
)  # fmt: skip


INGEST_CHECKPOINT = "256MB"  # write-ahead log between checkpoints while ingesting
RUN_MEMORY = "256MB"  # DuckDB's memory during a run (page cache included)
RUN_CHECKPOINT = "32MB"  # write-ahead log between checkpoints during a run

CacheRow = tuple[Any, ...]  # values in CACHE_COLUMNS order
RecordRow = tuple[Any, ...]  # values in RECORD_COLUMNS order


@dataclass(slots=True)
class Batch:
    """Rows to commit in one transaction, as tuples in column order: the cheapest shape to build one at a
    time and to turn into Arrow columns at once."""

    cache: list[CacheRow] = field(default_factory=list)
    records: list[RecordRow] = field(default_factory=list)
    seeds_done: list[tuple[str, str, int]] = field(default_factory=list)
    failures: list[tuple[str, str, str | None, str, str, int]] = field(default_factory=list)
    verdicts: list[tuple[str, str, str, str, bool, float | None, str | None]] = field(default_factory=list)
    stats: dict[str, Any] | None = None  # absolute counters of the current invocation
    replace: list[str] = field(default_factory=list)  # keys whose cached rejection the new row replaces

    def __len__(self) -> int:
        return (
            len(self.cache)
            + len(self.records)
            + len(self.seeds_done)
            + len(self.failures)
            + len(self.verdicts)
        )


def _arrow(cur: duckdb.DuckDBPyConnection) -> pa.Table:
    """The current result as an Arrow table (DuckDB 2 renamed fetch_arrow_table to to_arrow_table)."""
    fetch = getattr(cur, "to_arrow_table", None) or cur.fetch_arrow_table  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "extra copy" notice; results here are small
        return fetch()


def _x(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> list[Any]:
    """Execute and consume the result (DuckDB 2 refuses new work while a result is unfinished)."""
    return con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()


def _warm_arrow() -> None:
    """pyarrow imports pandas on its first conversion of Python lists (~0.5 s here); pay it on open,
    not in the middle of the first commit."""
    pa.array(["warm"])


def _table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    columns = zip(*rows, strict=True)
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


def _insert_frame(
    con: duckdb.DuckDBPyConnection, name: str, frame: pa.Table, insert: str, select: str | None = None
) -> None:
    """``insert`` fed from the Arrow ``frame`` registered as ``name``: by ``select`` when given (one that
    skips rows already stored), else every row of it."""
    con.register(name, frame)
    _x(con, insert + (select or f"SELECT * FROM {name}"))
    con.unregister(name)


def diagnose(path: Path) -> doctor.Diagnosis:
    """What `factory doctor` reports: the file, its migrations, every table, the journal. Changes nothing."""
    return doctor.diagnose(path, _CACHE_SCHEMA)


def _merged(committed: dict[str, Any], journaled: dict[str, Any]) -> dict[str, Any]:
    """One invocation's counters: each the larger of the committed and the journaled value."""
    out: dict[str, Any] = {k: max(int(committed.get(k) or 0), int(journaled.get(k) or 0)) for k in COUNTERS}
    failures = {k: int(n) for k, n in orjson.loads(committed.get("failures") or "{}").items()}
    for k, n in (journaled.get("failures") or {}).items():
        failures[k] = max(failures.get(k, 0), int(n))
    out["failures"] = failures
    out["failure_examples"] = {
        **orjson.loads(committed.get("failure_examples") or "{}"),
        **(journaled.get("failure_examples") or {}),
    }
    return out


class Store:
    def __init__(
        self, path: str | os.PathLike[str], *, read_only: bool = False, repair_journal: bool = False
    ):
        self.path = Path(path)
        self.read_only = read_only
        doctor.note_opened(self.path)
        if self.path.is_dir():
            raise ConfigError(
                f"the store path {self.path} is a folder; give a file, e.g. {self.path / 'factory.duckdb'}"
            )
        if read_only and not self.path.exists():
            raise StoreError(
                f"no store at {self.path}: run `factory run CONFIG.yaml` first, or pass --store PATH"
            )
        if not read_only:
            ensure_folder(self.path.parent, f"the store path {self.path}: folder")
            if (err := doctor.unwritable(self.path)) is not None:
                raise err
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            msg = str(exc)
            if "lock" in msg.lower():
                raise StoreInUse(
                    f"the store {self.path} is in use by another process ({msg.strip()}). "
                    "Wait for that run to finish or stop it, then run again."
                ) from exc
            if doctor.is_damage(exc):
                raise doctor.damaged(self.path, exc) from None
            raise StoreError(f"cannot open the store {self.path}: {msg}") from exc
        except duckdb.Error as exc:
            if doctor.is_damage(exc):
                raise doctor.damaged(self.path, exc) from None
            raise StoreError(f"cannot open the store {self.path}: {exc}. Is it a DuckDB file?") from exc
        try:
            self._prepare(read_only, repair_journal)
        except duckdb.Error as exc:
            self.con.close()
            if doctor.is_damage(exc):
                raise doctor.damaged(self.path, exc) from None
            raise StoreError(f"cannot open the store {self.path}: {doctor.first_line(exc)}") from exc
        except BaseException:
            self.con.close()
            raise

    def _prepare(self, read_only: bool, repair_journal: bool) -> None:
        _warm_arrow()
        _x(self.con, "SET enable_progress_bar = false")  # long reads would draw a bar on stderr
        if read_only and pending_migrations(self.con):
            # A store written by an older version: bring it up to date once (briefly opening it for writing),
            # then read it as asked.
            self.con.close()
            Store(self.path).close()
            self.con = duckdb.connect(str(self.path), read_only=True)
            _x(self.con, "SET enable_progress_bar = false")
        if not read_only:
            # Fewer, larger checkpoints while ingesting; the WAL is replayed on open after a crash.
            _x(self.con, "SET checkpoint_threshold = ?", [INGEST_CHECKPOINT])
            # One DuckDB thread for a writer: batched inserts cost about a third less CPU per row than with
            # a thread per core, and the other cores are left to the network and the engines.
            _x(self.con, "SET threads = 1")
            try:
                applied = migrate(self.con)
            except duckdb.Error as exc:
                if doctor.is_damage(exc):
                    raise
                raise StoreError(f"cannot migrate the store {self.path}: {exc}") from exc
            if applied:
                log.info("store %s: applied migrations %s", self.path, ", ".join(applied))
            self.replay_journal(set_aside=repair_journal)
            try:  # after the replay: journaled answers of an older version are judged too
                keyformat.upgrade(self.con, self.path)
            except duckdb.Error as exc:
                self.con.close()
                raise StoreError(
                    f"cannot update the request key format of the store {self.path}: {exc}"
                ) from exc
            except StoreError:
                self.con.close()
                raise

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def journal(self) -> Journal:
        return Journal(journal_dir(self.path))

    def replay_journal(self, *, set_aside: bool = False) -> int:
        """Commit answers a crashed process journaled but never committed, and its journaled counters.
        Returns rows recovered.

        A line that is not a cache row stops the open with a StoreError (nothing changed) that points to
        `factory doctor --repair`; with ``set_aside`` such lines are appended to ``STORE.journal.rejected``
        first and the others are committed."""
        bad: list[BadLine] = []
        check = doctor.row_check(_CACHE_SCHEMA, doctor.required_columns(self.con, "cache"))
        paths, rows, stats = scan_segments(journal_dir(self.path), CACHE_COLUMNS, check=check, bad=bad)
        if bad and not set_aside:
            raise doctor.journal_problem(self.path, bad, len(rows))
        if bad:
            doctor.set_aside(bad, doctor.rejected_path(self.path))
            log.warning(
                "set %d unreadable journal lines aside in %s", len(bad), doctor.rejected_path(self.path)
            )
        if not paths:
            return 0
        n_before = self.count_cache()
        # an answer journaled by --retry-failed takes the place of the cached rejection it was asked for
        answered = [row[0] for row in rows if row[2] == "ok"]
        self.commit(Batch(cache=rows, replace=answered), known_new=False)
        self._merge_stats(latest_stats(stats))
        for p in paths:
            p.unlink(missing_ok=True)
        recovered = self.count_cache() - n_before
        if recovered:
            log.warning("recovered %d answers from the journal of an interrupted run", recovered)
        return recovered

    def _merge_stats(self, journaled: dict[tuple[str, int], dict[str, Any]]) -> None:
        """Journaled counters into ``run_stats``: each the larger of the committed and journaled value."""
        for (run_id, invocation), s in journaled.items():
            found = self._dicts(
                "SELECT requests_sent, attempts, cache_hits, prompt_tokens, completion_tokens, failures, "
                "failure_examples FROM run_stats WHERE run_id = ? AND invocation = ?",
                [run_id, invocation],
            )
            if not found:
                continue
            merged = _merged(found[0], s)
            _x(
                self.con,
                "UPDATE run_stats SET requests_sent = ?, attempts = ?, cache_hits = ?, prompt_tokens = ?, "
                "completion_tokens = ?, failures = ?, failure_examples = ?, "
                "status = CASE WHEN status = 'running' THEN 'killed' ELSE status END "
                "WHERE run_id = ? AND invocation = ?",
                [*(merged[k] for k in COUNTERS), orjson.dumps(merged["failures"]).decode(),
                 orjson.dumps(merged["failure_examples"]).decode(), run_id, invocation],
            )  # fmt: skip

    # -- writes ------------------------------------------------------------------------------------
    def commit(self, batch: Batch, *, known_new: bool = True) -> None:
        """Write a batch in one transaction. Idempotent: rows already present are left alone.

        With ``known_new`` (the runner's batches: each key is sent once and each seed finishes once) cache
        and seed rows go in with plain inserts, which cost about half of an insert that checks for
        conflicts; should a row exist after all, the transaction is rolled back and written again with
        the checks. Journal replay and shard ingestion pass ``known_new=False``: then records and
        verdicts already present are skipped too."""
        try:
            self._write(batch, checked=not known_new)
        except duckdb.ConstraintException:
            self._write(batch, checked=True)

    def _write(self, batch: Batch, *, checked: bool) -> None:
        con = self.con
        try:
            _x(con, "BEGIN TRANSACTION")
            if batch.replace:
                _x(
                    con,
                    "DELETE FROM cache WHERE status <> 'ok' AND key IN (SELECT unnest(?::VARCHAR[]))",
                    [batch.replace],
                )
            if batch.cache:
                _insert_frame(
                    con, "_batch_cache", _table(batch.cache, _CACHE_SCHEMA),
                    "INSERT INTO cache (key, teacher, status, request, text, finish_reason, prompt_tokens, "
                    "completion_tokens, latency_ms, error, run_id) ",
                    "SELECT DISTINCT ON (key) * FROM _batch_cache ON CONFLICT DO NOTHING" if checked else None,
                )  # fmt: skip
            if batch.records:
                _insert_frame(
                    con, "_batch_records", _table(batch.records, _RECORD_SCHEMA),
                    "INSERT INTO records (id, run_id, recipe, stage, seed_id, sample_index, text, payload, "
                    "parent_ids, request_keys, teacher, template_version) ",
                    "SELECT DISTINCT ON (id) * FROM _batch_records b "
                    "WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.id = b.id)" if checked else None,
                )  # fmt: skip
            if batch.seeds_done:
                run_ids, seed_ids, counts = zip(*batch.seeds_done, strict=True)
                t = pa.table({"run_id": list(run_ids), "seed_id": list(seed_ids),
                              "records": pa.array(counts, pa.int32())})  # fmt: skip
                _insert_frame(
                    con, "_batch_done", t, "INSERT INTO seeds_done ",
                    "SELECT DISTINCT ON (run_id, seed_id) * FROM _batch_done ON CONFLICT DO NOTHING"
                    if checked else None,
                )  # fmt: skip
            if batch.failures:
                con.executemany(
                    "INSERT INTO failures (run_id, key, seed_id, kind, message, attempts) VALUES (?, ?, ?, ?, ?, ?)",
                    batch.failures,
                )
            if batch.verdicts:
                cols = list(zip(*batch.verdicts, strict=True))
                t = pa.table(
                    {"record_id": list(cols[0]), "run_id": list(cols[1]), "filter": list(cols[2]),
                     "filter_version": list(cols[3]), "keep": pa.array(cols[4], pa.bool_()),
                     "score": pa.array(cols[5], pa.float64()), "reason": pa.array(cols[6], pa.string())}
                )  # fmt: skip
                _insert_frame(
                    con, "_batch_verdicts", t,
                    "INSERT INTO verdicts (record_id, run_id, filter, filter_version, keep, score, reason) ",
                    "SELECT DISTINCT ON (record_id, filter, filter_version) * FROM _batch_verdicts b "
                    "WHERE NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.record_id = b.record_id "
                    "AND v.filter = b.filter AND v.filter_version = b.filter_version)" if checked else None,
                )  # fmt: skip
            if batch.stats is not None:
                s = batch.stats
                _x(con,
                    "UPDATE run_stats SET requests_sent = ?, attempts = ?, cache_hits = ?, prompt_tokens = ?, "
                    "completion_tokens = ?, failures = ?, failure_examples = ?, status = ?, updated_at = now() "
                    "WHERE run_id = ? AND invocation = ?",
                    [
                        s["requests_sent"], s["attempts"], s["cache_hits"], s["prompt_tokens"],
                        s["completion_tokens"], orjson.dumps(s["failures"]).decode(),
                        orjson.dumps(s.get("failure_examples") or {}).decode(), s["status"],
                        s["run_id"], s["invocation"],
                    ],
                )  # fmt: skip
            _x(con, "COMMIT")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                _x(con, "ROLLBACK")
            if not checked and isinstance(exc, duckdb.ConstraintException):
                raise  # commit() writes the batch again with the checks
            if doctor.is_damage(exc):
                raise doctor.damaged(
                    self.path, exc, note="this batch was not written (its answers stay in the journal)"
                ) from exc
            raise StoreError(
                f"cannot write to the store {self.path}: {exc}. If the disk is full, free space and re-run "
                "the same command: answers not yet committed are kept in the journal."
            ) from exc

    def start_run(
        self,
        *,
        run_id: str,
        name: str,
        recipe: str,
        teacher: str,
        config: dict[str, Any],
        config_hash: str,
        version: str,
    ) -> int:
        """Create the run (or find it again on resume) and open a new invocation. Returns its number."""
        _x(self.con, "BEGIN TRANSACTION")
        _x(
            self.con,
            "INSERT INTO runs (id, name, recipe, teacher, config, config_hash, status, factory_version) "
            "VALUES (?, ?, ?, ?, ?, ?, 'running', ?) "
            # The config of the latest invocation is kept: what does not change the run's output (license,
            # source datasets, budgets, export settings) may be edited between invocations.
            "ON CONFLICT (id) DO UPDATE SET status = 'running', updated_at = now(), "
            "factory_version = excluded.factory_version, config = excluded.config",
            [run_id, name, recipe, teacher, orjson.dumps(config).decode(), config_hash, version],
        )
        invocation = self._new_invocation(run_id, "running")
        _x(self.con, "COMMIT")
        return invocation

    def _new_invocation(self, run_id: str, status: str) -> int:
        rows = _x(
            self.con, "SELECT coalesce(max(invocation), 0) + 1 FROM run_stats WHERE run_id = ?", [run_id]
        )
        invocation = int(rows[0][0]) if rows else 1
        _x(
            self.con,
            "INSERT INTO run_stats (run_id, invocation, failures, status) VALUES (?, ?, '{}', ?)",
            [run_id, invocation, status],
        )
        return invocation

    def open_invocation(self, run_id: str, status: str) -> int:
        """A new invocation of an existing run for work besides generation (a filter that calls a teacher),
        so its requests and tokens count in the run's totals."""
        _x(self.con, "BEGIN TRANSACTION")
        invocation = self._new_invocation(run_id, status)
        _x(self.con, "COMMIT")
        return invocation

    def finish_run(self, run_id: str, status: str) -> None:
        _x(self.con, "UPDATE runs SET status = ?, updated_at = now() WHERE id = ?", [status, run_id])

    # -- reads -------------------------------------------------------------------------------------
    def _rows(self, sql: str, params: list[Any] | None = None) -> list[Any]:
        return _x(self.con, sql, params if params is not None else [])

    def _scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        rows = self._rows(sql, params)
        return rows[0][0] if rows else None

    def _dicts(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, params if params is not None else [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def count_cache(self, teacher: str | None = None) -> int:
        if teacher is None:
            return int(self._scalar("SELECT count(*) FROM cache"))
        return int(self._scalar("SELECT count(*) FROM cache WHERE teacher = ?", [teacher]))

    def lookup(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Cached answers for these keys (missing keys are absent from the result)."""
        if not keys:
            return {}
        self.con.register("_lookup", pa.table({"key": pa.array(keys, pa.string())}))
        try:
            rows = self._dicts(
                "SELECT c.key, c.status, c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, "
                "c.latency_ms, c.error FROM cache c SEMI JOIN _lookup l ON c.key = l.key"
            )
        finally:
            self.con.unregister("_lookup")
        return {r["key"]: r for r in rows}

    def done_seeds(self, run_id: str) -> set[str]:
        """Every finished seed of a run (a set as large as the run: a run asks count_done and done_among)."""
        return {r[0] for r in self._rows("SELECT seed_id FROM seeds_done WHERE run_id = ?", [run_id])}

    def count_done(self, run_id: str) -> int:
        return int(self._scalar("SELECT count(*) FROM seeds_done WHERE run_id = ?", [run_id]))

    def done_among(self, run_id: str, seed_ids: list[str]) -> set[str]:
        """Which of these seeds of the run are finished: one query for a window of seeds."""
        if not seed_ids:
            return set()
        self.con.register("_seed_ids", pa.table({"seed_id": pa.array(seed_ids, pa.string())}))
        try:
            rows = self._rows(
                "SELECT d.seed_id FROM seeds_done d SEMI JOIN _seed_ids s ON d.seed_id = s.seed_id "
                "WHERE d.run_id = ?",
                [run_id],
            )
        finally:
            self.con.unregister("_seed_ids")
        return {r[0] for r in rows}

    def runs(self) -> list[dict[str, Any]]:
        return self._dicts(
            "SELECT id, name, recipe, teacher, status, created_at, updated_at FROM runs ORDER BY updated_at DESC"
        )

    def resolve_run(self, run: str | None) -> str:
        """A run id from an exact id, an exact name (its latest run), a prefix of exactly one run's id or
        name, or None (the latest run); see :mod:`factory.store.runs`."""
        from factory.store.runs import resolve_run

        return resolve_run(self, run).id

    def run_summary(self, run_id: str) -> dict[str, Any]:
        found = self._dicts(
            "SELECT id, name, recipe, teacher, status, config_hash, created_at, updated_at FROM runs WHERE id = ?",
            [run_id],
        )
        if not found:
            raise StoreError(f"no run {run_id!r} in {self.path}")
        out = found[0]
        counts, failures, examples = self._run_counters(run_id)
        out.update(counts)
        out["failures_by_kind"] = failures
        out["failure_reasons"] = self._failure_reasons(run_id, failures, examples)
        out["final_failures"] = int(self._scalar("SELECT count(*) FROM failures WHERE run_id = ?", [run_id]))
        out["records_total"] = int(self._scalar("SELECT count(*) FROM records WHERE run_id = ?", [run_id]))
        out["seeds_done"] = int(self._scalar("SELECT count(*) FROM seeds_done WHERE run_id = ?", [run_id]))
        by_stage = self._rows(
            "SELECT stage, count(*) FROM records WHERE run_id = ? GROUP BY stage ORDER BY stage", [run_id]
        )
        out["records_by_stage"] = {st: int(n) for st, n in by_stage}
        for k in ("created_at", "updated_at"):
            out[k] = out[k].isoformat() if out[k] is not None else None
        return out

    def _run_counters(self, run_id: str) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
        """The run's counters summed over its invocations, each invocation's counters the larger of what
        was committed and what its journal holds (a run in progress, or one killed and not yet resumed)."""
        rows = self._dicts(
            "SELECT invocation, requests_sent, attempts, cache_hits, prompt_tokens, completion_tokens, failures, "
            "failure_examples FROM run_stats WHERE run_id = ? ORDER BY invocation",
            [run_id],
        )
        journaled = latest_stats(scan_segments(journal_dir(self.path), None)[2]) if self.read_only else {}
        counts = {"invocations": len(rows), **dict.fromkeys(COUNTERS, 0)}
        failures: dict[str, int] = {}
        examples: dict[str, str] = {}
        for r in rows:
            m = _merged(r, journaled.get((run_id, int(r["invocation"])), {}))
            for k in COUNTERS:
                counts[k] += m[k]
            for kind, n in m["failures"].items():
                failures[kind] = failures.get(kind, 0) + n
            examples.update(m["failure_examples"])
        return counts, failures, examples

    def _failure_reasons(
        self, run_id: str, failures: dict[str, int], examples: dict[str, str], top: int = 5
    ) -> list[dict[str, Any]]:
        """The top failure kinds, most failed attempts first: attempts, seeds that finally failed with it,
        and one example message (the latest attempt's, else a failed seed's)."""
        final = {
            str(k): (int(n), str(m or ""))
            for k, n, m in self._rows(
                "SELECT kind, count(*), arg_max(message, created_at) FROM failures WHERE run_id = ? GROUP BY kind",
                [run_id],
            )
        }
        kinds = {k: n for k, n in failures.items() if not k.startswith("final_") and n}
        for k in final:
            kinds.setdefault(k, 0)
        reasons: list[dict[str, Any]] = [
            {"kind": k, "attempts": n, "seeds": final.get(k, (0, ""))[0],
             "example": examples.get(k) or final.get(k, (0, ""))[1]}
            for k, n in kinds.items()
        ]  # fmt: skip
        reasons.sort(key=lambda r: (-int(r["attempts"]), -int(r["seeds"]), str(r["kind"])))
        return reasons[:top]

    def run_config(self, run_id: str) -> dict[str, Any]:
        blob = self._scalar("SELECT config FROM runs WHERE id = ?", [run_id])
        if blob is None:
            raise StoreError(f"no run {run_id!r} in {self.path}")
        config: dict[str, Any] = orjson.loads(blob)
        return config

    def factory_version(self, run_id: str) -> str | None:
        """The factory version that last started the run (stored with it)."""
        v = self._scalar("SELECT factory_version FROM runs WHERE id = ?", [run_id])
        return None if v is None else str(v)

    # Rejecting verdicts that count: the recipe's own (no pass) and those of the run's latest filter pass.
    _LIVE = (
        "run_id = ? AND NOT keep AND (pass_id IS NULL OR pass_id = "
        "(SELECT max(pass_id) FROM filter_passes WHERE run_id = verdicts.run_id))"
    )

    def curated_table(self, run_id: str, *, include_rejected: bool = False) -> pa.Table:
        """The curated view: records with no rejecting verdict. With include_rejected, all records plus
        the reasons they were dropped (NULL when kept)."""
        where = "" if include_rejected else "AND v.reasons IS NULL"
        cur = self.con.execute(
            "WITH v AS (SELECT record_id, string_agg(filter || ': ' || coalesce(reason, ''), '; ') AS reasons "
            f"           FROM verdicts WHERE {self._LIVE} GROUP BY record_id) "
            "SELECT r.id, r.recipe, r.stage, r.seed_id, r.sample_index, r.text, r.payload, r.parent_ids, "
            "r.request_keys, r.teacher, r.template_version, v.reasons AS dropped_by "
            "FROM records r LEFT JOIN v ON v.record_id = r.id "
            f"WHERE r.run_id = ? {where} ORDER BY r.seed_id, r.stage, r.sample_index, r.id",
            [run_id, run_id],
        )
        return _arrow(cur)

    def limit_memory(self, limit: str | None) -> None:
        """Cap DuckDB's memory (its page cache included) for the work that follows, e.g. '256MB'; None
        restores the default."""
        if limit is None:
            _x(self.con, "RESET memory_limit")
        else:
            _x(self.con, "SET memory_limit = ?", [limit])

    def bounded(self, on: bool) -> None:
        """For a run (``on``), memory that does not grow with it: DuckDB's page cache capped at RUN_MEMORY,
        and rows checkpointed to the file every RUN_CHECKPOINT of write-ahead log (until then DuckDB keeps
        them in memory too). Off: the defaults again."""
        if on:
            _x(self.con, "SET memory_limit = ?", [RUN_MEMORY])
            _x(self.con, "SET checkpoint_threshold = ?", [RUN_CHECKPOINT])
        else:
            _x(self.con, "RESET memory_limit")
            _x(self.con, "SET checkpoint_threshold = ?", [INGEST_CHECKPOINT])

    def curated_reader(
        self,
        run_id: str,
        *,
        stage: str | None = None,
        include_rejected: bool = False,
        batch_rows: int = 20_000,
    ) -> Iterator[pa.RecordBatch]:
        """``curated_table`` as Arrow batches in the same order (optionally one stage's records), read a
        range of seeds at a time: sorting a whole run at once would hold it all in memory, so an export of
        any size reads about ``batch_rows`` records per query. Uses its own cursor."""
        cur = self.con.cursor()
        scope = "run_id = ?" + (" AND stage = ?" if stage is not None else "")
        sp: list[Any] = [run_id] + ([stage] if stage is not None else [])
        n_seeds, n_records = cur.execute(
            f"SELECT count(DISTINCT seed_id), count(*) FROM records WHERE {scope}", sp
        ).fetchone() or (0, 0)
        if not n_records:
            return
        per_query = max(1, int(batch_rows * n_seeds / n_records))
        # The first seed id of each range, in order; a range ends where the next begins.
        starts = [
            r[0]
            for r in cur.execute(
                "SELECT seed_id FROM (SELECT seed_id, row_number() OVER (ORDER BY seed_id) AS i FROM "
                f"(SELECT DISTINCT seed_id FROM records WHERE {scope})) WHERE (i - 1) % ? = 0 ORDER BY seed_id",
                [*sp, per_query],
            ).fetchall()
        ]
        keep = "" if include_rejected else "AND v.reasons IS NULL"
        for i, lo in enumerate(starts):
            hi = starts[i + 1] if i + 1 < len(starts) else None
            rng = "seed_id >= ?" + (" AND seed_id < ?" if hi is not None else "")
            rp: list[Any] = [lo] + ([hi] if hi is not None else [])
            sql = (
                f"WITH r AS (SELECT * FROM records WHERE {scope} AND {rng}), "
                "v AS (SELECT record_id, string_agg(filter || ': ' || coalesce(reason, ''), '; ') AS reasons "
                f"     FROM verdicts WHERE {self._LIVE} AND record_id IN (SELECT id FROM r) GROUP BY record_id) "
                "SELECT r.id, r.stage, r.seed_id, r.sample_index, r.text, r.payload, r.request_keys, r.teacher, "
                "r.template_version, v.reasons AS dropped_by "
                f"FROM r LEFT JOIN v ON v.record_id = r.id WHERE true {keep} "
                "ORDER BY r.seed_id, r.stage, r.sample_index, r.id"
            )
            yield from cur.sql(sql, params=[*sp, *rp, run_id]).to_arrow_reader(batch_rows)

    def verdict_counts(self, run_id: str) -> list[tuple[str, str, int]]:
        rows = self._rows(
            f"SELECT filter, coalesce(reason, ''), count(*) FROM verdicts WHERE {self._LIVE} "
            "GROUP BY ALL ORDER BY 3 DESC",
            [run_id],
        )
        return [(str(f), str(r), int(n)) for f, r, n in rows]

    # -- filter passes -----------------------------------------------------------------------------
    def parse_rejected(self, run_id: str) -> set[str]:
        rows = self._rows(
            "SELECT DISTINCT record_id FROM verdicts WHERE run_id = ? AND NOT keep AND pass_id IS NULL",
            [run_id],
        )
        return {r[0] for r in rows}

    def stored_scores(self, run_id: str, filter_slug: str, version: str) -> dict[str, tuple[Any, Any]]:
        """The latest (score, detail JSON) per record for one filter version."""
        rows = self._rows(
            "SELECT record_id, score, detail FROM verdicts "
            "WHERE run_id = ? AND filter = ? AND filter_version = ? AND pass_id IS NOT NULL "
            "QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY pass_id DESC) = 1",
            [run_id, filter_slug, version],
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def write_pass(self, run_id: str, filters: list[dict[str, Any]], verdicts: list[tuple[Any, ...]]) -> int:
        """Append a filter pass and its verdicts (record_id, filter, filter_version, keep, score, reason,
        detail) in one transaction. Returns the pass id."""
        con = self.con
        try:
            _x(con, "BEGIN TRANSACTION")
            pass_id = int(
                _x(con, "SELECT coalesce(max(pass_id), 0) + 1 FROM filter_passes WHERE run_id = ?", [run_id])[
                    0
                ][0]
            )
            _x(con, "INSERT INTO filter_passes (run_id, pass_id, filters) VALUES (?, ?, ?)",
               [run_id, pass_id, orjson.dumps(filters).decode()])  # fmt: skip
            if verdicts:
                cols = list(zip(*verdicts, strict=True))
                n = len(verdicts)
                t = pa.table(
                    {"record_id": pa.array(cols[0], pa.string()), "run_id": pa.array([run_id] * n, pa.string()),
                     "filter": pa.array(cols[1], pa.string()), "filter_version": pa.array(cols[2], pa.string()),
                     "keep": pa.array(cols[3], pa.bool_()), "score": pa.array(cols[4], pa.float64()),
                     "reason": pa.array(cols[5], pa.string()), "detail": pa.array(cols[6], pa.string()),
                     "pass_id": pa.array([pass_id] * n, pa.int32())}
                )  # fmt: skip
                _insert_frame(
                    con, "_batch_pass", t,
                    "INSERT INTO verdicts (record_id, run_id, filter, filter_version, keep, score, reason, detail, "
                    "pass_id) ",
                )  # fmt: skip
            _x(con, "COMMIT")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                _x(con, "ROLLBACK")
            raise StoreError(f"cannot write the filter verdicts to {self.path}: {exc}") from exc
        return pass_id

    def pass_is_current(self, run_id: str, filters: list[dict[str, Any]]) -> bool:
        """True when the latest pass applied exactly these filters and no record was added since."""
        rows = self._rows(
            "SELECT filters, created_at >= (SELECT max(created_at) FROM records WHERE run_id = ?) "
            "FROM filter_passes WHERE run_id = ? ORDER BY pass_id DESC LIMIT 1",
            [run_id, run_id],
        )
        return bool(rows) and orjson.loads(rows[0][0]) == filters and bool(rows[0][1])

    def funnel(self, run_id: str) -> dict[str, Any]:
        """generated → parsed → each filter of the latest pass (in, kept, dropped, top reasons) → curated."""
        generated = int(self._scalar("SELECT count(*) FROM records WHERE run_id = ?", [run_id]))
        parsed = generated - len(self.parse_rejected(run_id))
        steps: list[dict[str, Any]] = []
        latest = self._rows(
            "SELECT pass_id, filters FROM filter_passes WHERE run_id = ? ORDER BY pass_id DESC LIMIT 1",
            [run_id],
        )
        if latest:
            pass_id, blob = latest[0]
            counts = {
                f: (int(n), int(k))
                for f, n, k in self._rows(
                    "SELECT filter, count(*), count(*) FILTER (WHERE keep) FROM verdicts "
                    "WHERE run_id = ? AND pass_id = ? GROUP BY filter",
                    [run_id, pass_id],
                )
            }
            reasons: dict[str, list[dict[str, Any]]] = {}
            for f, r, n in self._rows(
                "SELECT filter, reason, n FROM (SELECT filter, coalesce(reason, '') AS reason, count(*) AS n "
                "FROM verdicts WHERE run_id = ? AND pass_id = ? AND NOT keep GROUP BY 1, 2) "
                "QUALIFY row_number() OVER (PARTITION BY filter ORDER BY n DESC, reason) <= 3 ORDER BY 1, 3 DESC",
                [run_id, pass_id],
            ):
                reasons.setdefault(f, []).append({"reason": r, "records": int(n)})
            for spec in orjson.loads(blob):
                n_in, kept = counts.get(spec["filter"], (0, 0))
                steps.append({"filter": spec["filter"], "version": spec["version"], "in": n_in, "kept": kept,
                              "dropped": n_in - kept, "top_reasons": reasons.get(spec["filter"], [])})  # fmt: skip
        curated = int(
            self._scalar(
                "SELECT count(*) FROM records r WHERE r.run_id = ? AND r.id NOT IN "
                f"(SELECT record_id FROM verdicts WHERE {self._LIVE})",
                [run_id, run_id],
            )
        )
        return {"generated": generated, "parsed": parsed, "filters": steps, "curated": curated,
                "pass": latest[0][0] if latest else None}  # fmt: skip

    def latest_pass(self, run_id: str) -> dict[str, Any] | None:
        """The run's latest filter pass: its number, the filters applied ({filter, version, params}, in
        order) and when; None before any pass."""
        rows = self._rows(
            "SELECT pass_id, filters, created_at FROM filter_passes WHERE run_id = ? ORDER BY pass_id DESC LIMIT 1",
            [run_id],
        )
        if not rows:
            return None
        pass_id, blob, created = rows[0]
        return {"pass": int(pass_id), "filters": orjson.loads(blob),
                "created_at": created.isoformat() if created is not None else None}  # fmt: skip

    def pass_verdicts(self, run_id: str, filter_slug: str) -> list[dict[str, Any]]:
        """One filter's verdicts in the run's latest pass (record_id, keep, score, reason, detail JSON),
        by record id."""
        return self._dicts(
            "SELECT record_id, keep, score, reason, detail FROM verdicts WHERE run_id = ? AND filter = ? "
            "AND pass_id = (SELECT max(pass_id) FROM filter_passes WHERE run_id = ?) ORDER BY record_id",
            [run_id, filter_slug, run_id],
        )

    def earlier_texts(self, run_id: str) -> list[tuple[str, str]]:
        """(record id in its run, text) of the records of runs created before this one."""
        rows = self._rows(
            "SELECT r.run_id || '/' || r.id, r.text FROM records r JOIN runs o ON o.id = r.run_id "
            "WHERE o.created_at < (SELECT created_at FROM runs WHERE id = ?) ORDER BY o.created_at, r.id",
            [run_id],
        )
        return [(w, t or "") for w, t in rows]

    def why(self, record_id: str) -> dict[str, Any]:
        """A record and every verdict that bears on it now (its recipe's, and the latest pass's)."""
        found = self._dicts(
            "SELECT id, run_id, recipe, stage, seed_id, sample_index, text FROM records WHERE id = ? "
            "OR starts_with(id, ?) LIMIT 2",
            [record_id, record_id],
        )
        if len(found) != 1:
            what = "no record" if not found else "more than one record"
            raise StoreError(
                f"{what} with id {record_id!r} in {self.path}; ids are in exports and `factory status`"
            )
        rec = found[0]
        rec["verdicts"] = self._dicts(
            "SELECT filter, filter_version, keep, score, reason, detail, pass_id FROM verdicts "
            "WHERE record_id = ? AND (pass_id IS NULL OR pass_id = "
            "(SELECT max(pass_id) FROM filter_passes WHERE run_id = ?)) ORDER BY pass_id NULLS FIRST",
            [rec["id"], rec["run_id"]],
        )
        rec["curated"] = not any(not v["keep"] for v in rec["verdicts"])
        return rec

    def records_table(self, run_id: str) -> pa.Table:
        """The run's records joined with the answers that produced them, as Arrow, in a stable order."""
        cur = self.con.execute(
            "SELECT r.id, r.run_id, r.recipe, r.stage, r.seed_id, r.sample_index, r.text, r.payload, "
            "r.parent_ids, r.request_keys, r.teacher, r.template_version "
            "FROM records r WHERE r.run_id = ? ORDER BY r.seed_id, r.stage, r.sample_index, r.id",
            [run_id],
        )
        return _arrow(cur)

    def template_versions(self, run_id: str) -> list[tuple[str, str | None, int]]:
        """(stage, template version, records) of the run's records, by stage then version."""
        rows = self._rows(
            "SELECT stage, template_version, count(*) FROM records WHERE run_id = ? "
            "GROUP BY ALL ORDER BY 1, 2 NULLS FIRST",
            [run_id],
        )
        return [(str(st), None if v is None else str(v), int(n)) for st, v, n in rows]

    def request_sampling(self, run_id: str) -> list[dict[str, Any]]:
        """The answers behind the run, by teacher and the sampling they were asked with: the requests its
        records name plus those first stored for it (a judge's), each counted once, whether paid for in
        this run or served from the cache. Per group: requests, seeded requests, tokens."""
        return self._dicts(
            "WITH k AS (SELECT DISTINCT unnest(request_keys) AS key FROM records WHERE run_id = ? "
            f"           UNION SELECT key FROM {ANSWERS} a WHERE run_id = ?), "
            "c AS (SELECT c.teacher, c.request::JSON->'sampling' AS s, c.prompt_tokens, c.completion_tokens "
            f"      FROM {ANSWERS} c SEMI JOIN k ON c.key = k.key) "
            "SELECT teacher, s->>'temperature' AS temperature, s->>'top_p' AS top_p, "
            "s->>'max_tokens' AS max_tokens, count(*) AS requests, "
            "count(*) FILTER (WHERE s->>'seed' IS NOT NULL) AS seeded, "
            "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
            "coalesce(sum(completion_tokens), 0) AS completion_tokens "
            "FROM c GROUP BY ALL ORDER BY teacher, requests DESC, temperature, top_p, max_tokens",
            [run_id, run_id],
        )

    # -- report reads ------------------------------------------------------------------------------
    # Records rejected now (by their recipe's check or the latest pass), once each.
    _DROPPED = f"SELECT DISTINCT record_id FROM verdicts WHERE {_LIVE}"

    def label_counts(self, run_id: str, field: str) -> list[tuple[str, int, int]]:
        """(value, records, curated records) of one payload field, over the run's records that have it;
        most records first."""
        rows = self._rows(
            f"WITH d AS ({self._DROPPED}) "
            "SELECT r.v, count(*), count(*) FILTER (WHERE d.record_id IS NULL) FROM "
            "(SELECT id, json_extract_string(payload, ?) AS v FROM records WHERE run_id = ?) r "
            "LEFT JOIN d ON d.record_id = r.id WHERE r.v IS NOT NULL GROUP BY r.v ORDER BY 2 DESC, 1",
            [run_id, f'$."{field}"', run_id],
        )
        return [(str(v), int(n), int(k)) for v, n, k in rows]

    def text_lengths(self, run_id: str) -> pa.Table:
        """Per record: ``chars`` (length of its text) and ``curated``."""
        cur = self.con.execute(
            f"WITH d AS ({self._DROPPED}) SELECT coalesce(length(r.text), 0) AS chars, "
            "d.record_id IS NULL AS curated FROM records r LEFT JOIN d ON d.record_id = r.id WHERE r.run_id = ?",
            [run_id, run_id],
        )
        return _arrow(cur)

    def pass_scores(self, run_id: str, filter_slug: str) -> pa.Table:
        """``score`` and ``keep`` of one filter's verdicts in the run's latest pass."""
        cur = self.con.execute(
            "SELECT score, keep FROM verdicts WHERE run_id = ? AND filter = ? "
            "AND pass_id = (SELECT max(pass_id) FROM filter_passes WHERE run_id = ?)",
            [run_id, filter_slug, run_id],
        )
        return _arrow(cur)

    def teacher_usage(self, run_id: str) -> list[dict[str, Any]]:
        """Per teacher name, over the answers behind the run (as in ``request_sampling``): requests, ok and
        rejected answers, tokens, and latency percentiles (ms) of the answers that recorded one."""
        return self._dicts(
            "WITH k AS (SELECT DISTINCT unnest(request_keys) AS key FROM records WHERE run_id = ? "
            f"           UNION SELECT key FROM {ANSWERS} a WHERE run_id = ?), "
            f"c AS (SELECT c.* FROM {ANSWERS} c SEMI JOIN k ON c.key = k.key) "
            "SELECT teacher, count(*) AS requests, count(*) FILTER (WHERE status = 'ok') AS ok, "
            "count(*) FILTER (WHERE status <> 'ok') AS rejected, "
            "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
            "coalesce(sum(completion_tokens), 0) AS completion_tokens, "
            "count(latency_ms) FILTER (WHERE latency_ms > 0) AS timed, "
            "quantile_cont(latency_ms, 0.5) FILTER (WHERE latency_ms > 0) AS p50_ms, "
            "quantile_cont(latency_ms, 0.9) FILTER (WHERE latency_ms > 0) AS p90_ms, "
            "quantile_cont(latency_ms, 0.99) FILTER (WHERE latency_ms > 0) AS p99_ms, "
            "max(latency_ms) AS max_ms FROM c GROUP BY teacher ORDER BY teacher",
            [run_id, run_id],
        )

    def rejections(self, run_id: str, limit: int = 10) -> list[tuple[str, str, int]]:
        """(teacher, error, answers) of the deterministic rejections behind the run, most first."""
        rows = self._rows(
            "WITH k AS (SELECT DISTINCT unnest(request_keys) AS key FROM records WHERE run_id = ? "
            f"           UNION SELECT key FROM {ANSWERS} a WHERE run_id = ?) "
            f"SELECT teacher, coalesce(error, ''), count(*) FROM {ANSWERS} c SEMI JOIN k ON c.key = k.key "
            "WHERE status <> 'ok' GROUP BY ALL ORDER BY 3 DESC, 1, 2 LIMIT ?",
            [run_id, run_id, limit],
        )
        return [(str(t), str(e), int(n)) for t, e, n in rows]

    def failure_kinds(self, run_id: str) -> list[tuple[str, int]]:
        """(kind, seeds) of the run's final failures (after retries), most first."""
        rows = self._rows(
            "SELECT kind, count(*) FROM failures WHERE run_id = ? GROUP BY kind ORDER BY 2 DESC, 1", [run_id]
        )
        return [(str(k), int(n)) for k, n in rows]

    def record_sample(self, run_id: str, n: int, *, curated: bool | None = None) -> list[dict[str, Any]]:
        """Up to ``n`` records in a fixed pseudo-random order (by a hash of the id), curated or rejected or
        either, with ``dropped_by`` (the live rejecting verdicts, NULL when curated)."""
        where = {None: "", True: "AND v.reasons IS NULL", False: "AND v.reasons IS NOT NULL"}[curated]
        return self._dicts(
            "WITH v AS (SELECT record_id, string_agg(filter || ': ' || coalesce(reason, ''), '; ' "
            f"          ORDER BY pass_id NULLS FIRST, filter) AS reasons FROM verdicts WHERE {self._LIVE} "
            "           GROUP BY record_id) "
            "SELECT r.id, r.stage, r.seed_id, r.sample_index, r.text, r.payload, v.reasons AS dropped_by "
            f"FROM records r LEFT JOIN v ON v.record_id = r.id WHERE r.run_id = ? {where} "
            "ORDER BY md5(r.id) LIMIT ?",
            [run_id, run_id, n],
        )

    def repeated_texts(self, run_id: str, limit: int = 10) -> tuple[list[tuple[str, int]], int]:
        """The texts the run's records hold more than once (most repeated first), and how many distinct
        texts there are."""
        rows = self._rows(
            "SELECT text, count(*) FROM records WHERE run_id = ? AND text IS NOT NULL GROUP BY text "
            "HAVING count(*) > 1 ORDER BY 2 DESC, 1 LIMIT ?",
            [run_id, limit],
        )
        distinct = self._scalar("SELECT count(DISTINCT text) FROM records WHERE run_id = ?", [run_id])
        return [(str(t), int(n)) for t, n in rows], int(distinct or 0)
