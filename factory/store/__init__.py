"""The store: one DuckDB file that owns runs, the request cache, records and the verdict ledger.

Only this package writes SQL. Values always travel as parameters or Arrow tables, never in f-strings.
One process opens a store for writing; a second one gets :class:`StoreInUse`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import duckdb
import orjson

from factory.errors import ConfigError, StoreError, StoreInUse
from factory.outputs import ensure_folder
from factory.store import doctor, keyformat
from factory.store.batches import Batches
from factory.store.journal import (
    COUNTERS,
    BadLine,
    Journal,
    bytes_of,
    journal_dir,
    latest_stats,
    scan_segments,
)
from factory.store.migrations import migrate, pending_migrations
from factory.store.reads import Reads
from factory.store.tables import (
    CACHE_COLUMNS,
    CACHE_LATER_COLUMNS,
    CACHE_SCHEMA,
    INGEST_CHECKPOINT,
    RECORD_COLUMNS,
    RECORD_SCHEMA,
    Batch,
    CacheRow,
    RecordRow,
    execute,
    full_cache_rows,
    merged_counters,
    warm_arrow,
)  # fmt: skip
from factory.store.verdicts import Verdicts
from factory.store.writes import Writes

log = logging.getLogger(__name__)


def diagnose(path: Path) -> doctor.Diagnosis:
    """What `factory doctor` reports: the file, its migrations, every table, the journal. Changes nothing."""
    return doctor.diagnose(path, CACHE_SCHEMA)


class Store(Writes, Verdicts, Reads, Batches):
    """One store file, open for writing (one process at a time) or read-only. Its parts: Writes (runs,
    commits, the runner's look-ups), Verdicts (the ledger and the curated view), Reads (status, export,
    report and viewer queries), Batches (provider batches of `teacher.mode: batch`)."""

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
        warm_arrow()
        execute(self.con, "SET enable_progress_bar = false")  # long reads would draw a bar on stderr
        if read_only and pending_migrations(self.con):
            # A store written by an older version: bring it up to date once (briefly opening it for writing),
            # then read it as asked.
            self.con.close()
            Store(self.path).close()
            self.con = duckdb.connect(str(self.path), read_only=True)
            execute(self.con, "SET enable_progress_bar = false")
        if not read_only:
            # Fewer, larger checkpoints while ingesting; the WAL is replayed on open after a crash.
            execute(self.con, "SET checkpoint_threshold = ?", [INGEST_CHECKPOINT])
            # One DuckDB thread for a writer: batched inserts cost about a third less CPU per row than with
            # a thread per core, and the other cores are left to the network and the engines.
            execute(self.con, "SET threads = 1")
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
        check = doctor.row_check(CACHE_SCHEMA, doctor.required_columns(self.con, "cache"))
        paths, rows, stats = scan_segments(
            journal_dir(self.path), CACHE_COLUMNS, check=check, bad=bad, later=len(CACHE_LATER_COLUMNS)
        )
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
        blob = CACHE_COLUMNS.index("logprobs")  # journaled as base64 text
        rows = [r if r[blob] is None else (*r[:blob], bytes_of(r[blob]), *r[blob + 1 :]) for r in rows]
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
            merged = merged_counters(found[0], s)
            execute(
                self.con,
                "UPDATE run_stats SET requests_sent = ?, attempts = ?, cache_hits = ?, prompt_tokens = ?, "
                "completion_tokens = ?, failures = ?, failure_examples = ?, "
                "status = CASE WHEN status = 'running' THEN 'killed' ELSE status END "
                "WHERE run_id = ? AND invocation = ?",
                [*(merged[k] for k in COUNTERS), orjson.dumps(merged["failures"]).decode(),
                 orjson.dumps(merged["failure_examples"]).decode(), run_id, invocation],
            )  # fmt: skip

    # -- writes ------------------------------------------------------------------------------------


__all__ = [
    "CACHE_COLUMNS", "CACHE_SCHEMA", "RECORD_COLUMNS", "RECORD_SCHEMA", "Batch", "CacheRow", "RecordRow", "Store",
    "diagnose", "full_cache_rows",
]  # fmt: skip
