"""Writes of `factory import`: an imported run, its records, their parse verdicts and its seeds.

The records go in one transaction per batch, so memory stays bounded however large the file; the run is
marked ``importing`` until the last batch is in, and then ``done``. An import that fails half-way (a file
changed under the second read, a full disk) deletes what it wrote; one killed half-way leaves a run that is
not ``done``, whose rows the next import of the file replaces. A done run is never touched again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import pyarrow as pa

from factory.errors import StoreError
from factory.store.tables import RECORD_SCHEMA, execute, table_of

if TYPE_CHECKING:
    from factory.store import Batch, Store

UNDONE = "importing"
_TABLES = ("verdicts", "seeds_done", "records", "run_stats", "runs")  # children first


def imported_before(store: Store, run_id: str) -> bool:
    """Whether a finished import created this run."""
    status = store._scalar("SELECT status FROM runs WHERE id = ?", [run_id])
    return status is not None and status != UNDONE


def _forget(store: Store, run_id: str) -> None:
    """Delete every row of an import that did not finish (no one has used that run)."""
    for table in _TABLES:  # constants, not values: the run id travels as a parameter
        execute(store.con, f"DELETE FROM {table} WHERE {'id' if table == 'runs' else 'run_id'} = ?", [run_id])


def _insert(con: duckdb.DuckDBPyConnection, b: Batch) -> None:
    if b.records:
        con.register("_import_records", table_of(b.records, RECORD_SCHEMA))
        execute(con, "INSERT INTO records (id, run_id, recipe, stage, seed_id, sample_index, text, payload, "
                "parent_ids, request_keys, teacher, template_version) SELECT * FROM _import_records")  # fmt: skip
        con.unregister("_import_records")
    if b.verdicts:
        cols = list(zip(*b.verdicts, strict=True))
        con.register("_import_verdicts", pa.table(
            {"record_id": pa.array(cols[0], pa.string()), "run_id": pa.array(cols[1], pa.string()),
             "filter": pa.array(cols[2], pa.string()), "filter_version": pa.array(cols[3], pa.string()),
             "keep": pa.array(cols[4], pa.bool_()), "score": pa.array(cols[5], pa.float64()),
             "reason": pa.array(cols[6], pa.string())}
        ))  # fmt: skip
        execute(con, "INSERT INTO verdicts (record_id, run_id, filter, filter_version, keep, score, reason) "
                "SELECT * FROM _import_verdicts")  # fmt: skip
        con.unregister("_import_verdicts")
    if b.seeds_done:
        run_ids, seed_ids, counts = zip(*b.seeds_done, strict=True)
        con.register("_import_seeds", pa.table(
            {"run_id": pa.array(run_ids, pa.string()), "seed_id": pa.array(seed_ids, pa.string()),
             "records": pa.array(counts, pa.int32())}
        ))  # fmt: skip
        execute(con, "INSERT INTO seeds_done SELECT * FROM _import_seeds")
        con.unregister("_import_seeds")


def write_import(store: Store, *, run: dict[str, Any], batches: Iterable[Batch]) -> int:
    """Create the run (``run``: id, name, recipe, teacher, config, config_hash, version) and write the
    batches' records, verdicts and seeds, a transaction each; the run is done when the last is in. Returns
    the records written. On any error what was written is deleted again, then the error is raised."""
    con = store.con
    run_id = run["id"]
    written = 0
    store.limit_memory("256MB")  # DuckDB's page cache would otherwise grow with the file
    try:
        execute(con, "BEGIN TRANSACTION")
        _forget(store, run_id)  # the rows of an import killed half-way
        execute(
            con,
            "INSERT INTO runs (id, name, recipe, teacher, config, config_hash, status, factory_version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, run["name"], run["recipe"], run["teacher"], orjson.dumps(run["config"]).decode(),
             run["config_hash"], UNDONE, run["version"]],
        )  # fmt: skip
        store._new_invocation(run_id, UNDONE)
        execute(con, "COMMIT")
        for b in batches:
            execute(con, "BEGIN TRANSACTION")
            _insert(con, b)
            execute(con, "COMMIT")
            written += len(b.records)
        execute(con, "BEGIN TRANSACTION")
        execute(con, "UPDATE runs SET status = 'done', updated_at = now() WHERE id = ?", [run_id])
        execute(con, "UPDATE run_stats SET status = 'done', updated_at = now() WHERE run_id = ?", [run_id])
        execute(con, "COMMIT")
    except duckdb.Error as exc:
        _undo(store, run_id)
        raise StoreError(f"cannot write the imported run to {store.path}: {exc}; nothing was stored") from exc
    except BaseException:
        _undo(store, run_id)
        raise
    finally:
        store.limit_memory(None)
    return written


def _undo(store: Store, run_id: str) -> None:
    with contextlib.suppress(duckdb.Error):
        execute(store.con, "ROLLBACK")
    try:
        execute(store.con, "BEGIN TRANSACTION")
        _forget(store, run_id)
        execute(store.con, "COMMIT")
    except duckdb.Error:  # the store itself failed: the run stays not done, and the next import redoes it
        with contextlib.suppress(duckdb.Error):
            execute(store.con, "ROLLBACK")
