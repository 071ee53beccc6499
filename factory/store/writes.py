"""What a run writes: the run and its invocations, commits of answers, records, finished seeds,
failures and verdicts, and the cache look-ups the runner makes."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from factory.errors import StoreError
from factory.store import doctor
from factory.store.tables import (
    CACHE_SCHEMA,
    INGEST_CHECKPOINT,
    RECORD_SCHEMA,
    RUN_CHECKPOINT,
    Batch,
    StoreBase,
    execute,
    full_cache_rows,
    insert_frame,
    run_memory_limit,
    table_of,
)

log = logging.getLogger(__name__)

LIMIT_STEP = 4 * 2**20  # DuckDB's memory limit is raised in steps of at least this many bytes


class Writes(StoreBase):
    def commit(self, batch: Batch, *, known_new: bool = False) -> None:
        """Write a batch in one transaction. Idempotent: rows already present are left alone.

        ``cache`` and ``seeds_done`` have no key index (one grows DuckDB's memory with the store, see
        migrations.m011_no_key_indexes): their keys stay unique by what is inserted. By default only cache
        keys, finished seeds, records and verdicts not stored yet go in (an anti-join, which scans the
        table as a look-up does). The runner passes ``known_new``: each key it sends once and keeps in
        flight until committed, each seed finishes once, so its rows go in with plain inserts."""
        self._write(batch, checked=not known_new)
        if self._bounded:
            self._follow_indexes()

    def _write(self, batch: Batch, *, checked: bool) -> None:
        con = self.con
        try:
            execute(con, "BEGIN TRANSACTION")
            if batch.replace:
                execute(
                    con,
                    "DELETE FROM cache WHERE status <> 'ok' AND key IN (SELECT unnest(?::VARCHAR[]))",
                    [batch.replace],
                )
            if batch.cache:
                insert_frame(
                    con, "_batch_cache", table_of(full_cache_rows(batch.cache), CACHE_SCHEMA),
                    "INSERT INTO cache (key, teacher, status, request, text, finish_reason, prompt_tokens, "
                    "completion_tokens, latency_ms, error, run_id, logprobs, reasoning, cached_prompt_tokens, "
                    "cost_usd) ",
                    "SELECT DISTINCT ON (key) * FROM _batch_cache b "
                    "WHERE NOT EXISTS (SELECT 1 FROM cache c WHERE c.key = b.key)" if checked else None,
                )  # fmt: skip
            if batch.records:
                insert_frame(
                    con, "_batch_records", table_of(batch.records, RECORD_SCHEMA),
                    "INSERT INTO records (id, run_id, recipe, stage, seed_id, sample_index, text, payload, "
                    "parent_ids, request_keys, teacher, template_version) ",
                    "SELECT DISTINCT ON (id) * FROM _batch_records b "
                    "WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.id = b.id)" if checked else None,
                )  # fmt: skip
            if batch.seeds_done:
                run_ids, seed_ids, counts = zip(*batch.seeds_done, strict=True)
                t = pa.table({"run_id": list(run_ids), "seed_id": list(seed_ids),
                              "records": pa.array(counts, pa.int32())})  # fmt: skip
                insert_frame(
                    con, "_batch_done", t, "INSERT INTO seeds_done ",
                    "SELECT DISTINCT ON (run_id, seed_id) * FROM _batch_done b WHERE NOT EXISTS "
                    "(SELECT 1 FROM seeds_done d WHERE d.run_id = b.run_id AND d.seed_id = b.seed_id)"
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
                insert_frame(
                    con, "_batch_verdicts", t,
                    "INSERT INTO verdicts (record_id, run_id, filter, filter_version, keep, score, reason) ",
                    "SELECT DISTINCT ON (record_id, filter, filter_version) * FROM _batch_verdicts b "
                    "WHERE NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.record_id = b.record_id "
                    "AND v.filter = b.filter AND v.filter_version = b.filter_version)" if checked else None,
                )  # fmt: skip
            if batch.stats is not None:
                s = batch.stats
                execute(con,
                    "UPDATE run_stats SET requests_sent = ?, attempts = ?, cache_hits = ?, prompt_tokens = ?, "
                    "completion_tokens = ?, cost_usd = ?, saved_usd = ?, unpriced = ?, failures = ?, "
                    "failure_examples = ?, status = ?, updated_at = now() WHERE run_id = ? AND invocation = ?",
                    [
                        s["requests_sent"], s["attempts"], s["cache_hits"], s["prompt_tokens"],
                        s["completion_tokens"], s.get("cost_usd"), s.get("saved_usd"), s.get("unpriced"),
                        orjson.dumps(s["failures"]).decode(),
                        orjson.dumps(s.get("failure_examples") or {}).decode(), s["status"],
                        s["run_id"], s["invocation"],
                    ],
                )  # fmt: skip
            execute(con, "COMMIT")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                execute(con, "ROLLBACK")
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
        execute(self.con, "BEGIN TRANSACTION")
        execute(
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
        execute(self.con, "COMMIT")
        return invocation

    def _new_invocation(self, run_id: str, status: str) -> int:
        rows = execute(
            self.con, "SELECT coalesce(max(invocation), 0) + 1 FROM run_stats WHERE run_id = ?", [run_id]
        )
        invocation = int(rows[0][0]) if rows else 1
        execute(
            self.con,
            "INSERT INTO run_stats (run_id, invocation, failures, status) VALUES (?, ?, '{}', ?)",
            [run_id, invocation, status],
        )
        return invocation

    def open_invocation(self, run_id: str, status: str) -> int:
        """A new invocation of an existing run for work besides generation (a filter that calls a teacher),
        so its requests and tokens count in the run's totals."""
        execute(self.con, "BEGIN TRANSACTION")
        invocation = self._new_invocation(run_id, status)
        execute(self.con, "COMMIT")
        return invocation

    def finish_run(self, run_id: str, status: str) -> None:
        execute(self.con, "UPDATE runs SET status = ?, updated_at = now() WHERE id = ?", [status, run_id])

    # -- reads -------------------------------------------------------------------------------------

    def count_cache(self, teacher: str | None = None) -> int:
        if teacher is None:
            return int(self._scalar("SELECT count(*) FROM cache"))
        return int(self._scalar("SELECT count(*) FROM cache WHERE teacher = ?", [teacher]))

    def lookup(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Cached answers for these keys (missing keys are absent from the result); ``logprobs`` is the packed
        blob (factory.logprobs.unpack) or None."""
        if not keys:
            return {}
        self.con.register("_lookup", pa.table({"key": pa.array(keys, pa.string())}))
        try:
            rows = self._dicts(
                "SELECT c.key, c.status, c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, "
                "c.latency_ms, c.error, c.logprobs, c.reasoning, c.cached_prompt_tokens, c.cost_usd FROM cache c "
                "SEMI JOIN _lookup l ON c.key = l.key"
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

    _bounded = False  # a run's memory limit is set
    _index_bytes = 0  # the most memory DuckDB reported for key indexes during this run
    _limit = 0  # bytes: the memory limit set now

    def bounded(self, on: bool) -> None:
        """For a run (``on``), memory that does not grow with the run: DuckDB's page cache capped at
        RUN_PAGE_CACHE plus room for the small tables' key indexes (see run_memory_limit; it follows what
        they take as commits go in), and rows checkpointed to the file every RUN_CHECKPOINT of write-ahead
        log (until then DuckDB keeps them in memory too). Off: the defaults again."""
        if on:
            self._bounded = True
            self._index_bytes, self._limit = 0, 0
            self._set_run_memory(run_memory_limit())
            execute(self.con, "SET checkpoint_threshold = ?", [RUN_CHECKPOINT])
        else:
            self._bounded = False
            execute(self.con, "RESET memory_limit")
            execute(self.con, "SET checkpoint_threshold = ?", [INGEST_CHECKPOINT])

    def _follow_indexes(self) -> None:
        """After a run's commit: the limit is raised when the indexes have grown (never lowered in a run:
        after a checkpoint DuckDB unloads them, and the next insert loads them whole again)."""
        used = int(
            self._scalar(
                "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'ART_INDEX'"
            )
        )
        if used > self._index_bytes:
            self._index_bytes = used
            limit = run_memory_limit(used)
            if limit > self._limit + LIMIT_STEP:
                self._set_run_memory(limit)

    def _set_run_memory(self, limit: int) -> None:
        execute(self.con, "SET memory_limit = ?", [f"{limit // 2**10}KiB"])
        self._limit = limit
