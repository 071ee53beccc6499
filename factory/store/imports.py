"""Writes of `factory import`: a whole imported run (the run, its records, their parse verdicts and its seeds)
in one transaction, so that a file that fails half-way leaves the store as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import pyarrow as pa

from factory.errors import StoreError

if TYPE_CHECKING:
    from factory.store import Batch, Store


def records_of(store: Store, run_id: str) -> int:
    """How many records the run holds (0 when there is no such run)."""
    return int(store._scalar("SELECT count(*) FROM records WHERE run_id = ?", [run_id]))


def write_import(store: Store, *, run: dict[str, Any], batches: Iterable[Batch]) -> int:
    """Create the run (``run``: id, name, recipe, teacher, config, config_hash, version) as done and write
    the batches' records, verdicts and seeds, all in one transaction. Returns the records written. An error
    of any kind (the file changing under a second read included) rolls everything back."""
    from factory.store import _RECORD_SCHEMA, _table, _x

    con = store.con
    written = 0
    try:
        _x(con, "BEGIN TRANSACTION")
        _x(
            con,
            "INSERT INTO runs (id, name, recipe, teacher, config, config_hash, status, factory_version) "
            "VALUES (?, ?, ?, ?, ?, ?, 'done', ?) ON CONFLICT (id) DO UPDATE SET status = 'done', "
            "updated_at = now(), factory_version = excluded.factory_version, config = excluded.config",
            [run["id"], run["name"], run["recipe"], run["teacher"], orjson.dumps(run["config"]).decode(),
             run["config_hash"], run["version"]],
        )  # fmt: skip
        store._new_invocation(run["id"], "done")
        for b in batches:
            if b.records:
                con.register("_import_records", _table(b.records, _RECORD_SCHEMA))
                _x(con, "INSERT INTO records (id, run_id, recipe, stage, seed_id, sample_index, text, payload, "
                        "parent_ids, request_keys, teacher, template_version) SELECT * FROM _import_records")  # fmt: skip
                con.unregister("_import_records")
                written += len(b.records)
            if b.verdicts:
                cols = list(zip(*b.verdicts, strict=True))
                con.register("_import_verdicts", pa.table(
                    {"record_id": pa.array(cols[0], pa.string()), "run_id": pa.array(cols[1], pa.string()),
                     "filter": pa.array(cols[2], pa.string()), "filter_version": pa.array(cols[3], pa.string()),
                     "keep": pa.array(cols[4], pa.bool_()), "score": pa.array(cols[5], pa.float64()),
                     "reason": pa.array(cols[6], pa.string())}
                ))  # fmt: skip
                _x(con, "INSERT INTO verdicts (record_id, run_id, filter, filter_version, keep, score, reason) "
                        "SELECT * FROM _import_verdicts")  # fmt: skip
                con.unregister("_import_verdicts")
            if b.seeds_done:
                run_ids, seed_ids, counts = zip(*b.seeds_done, strict=True)
                con.register("_import_seeds", pa.table(
                    {"run_id": pa.array(run_ids, pa.string()), "seed_id": pa.array(seed_ids, pa.string()),
                     "records": pa.array(counts, pa.int32())}
                ))  # fmt: skip
                _x(con, "INSERT INTO seeds_done SELECT * FROM _import_seeds ON CONFLICT DO NOTHING")
                con.unregister("_import_seeds")
        _x(con, "COMMIT")
    except duckdb.Error as exc:
        with contextlib.suppress(duckdb.Error):
            _x(con, "ROLLBACK")
        raise StoreError(f"cannot write the imported run to {store.path}: {exc}; nothing was stored") from exc
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            _x(con, "ROLLBACK")
        raise
    return written
