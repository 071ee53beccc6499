"""Rewrite a store into a fresh file holding only its live data, so deleted rows give their space back.

DuckDB reuses the blocks that deletes free but never returns them to the file system, and a checkpoint after
a large delete rewrites row groups, which can grow the file a little. Compacting copies every table (schema,
constraints and data) into ``STORE.compact-<pid>`` beside the store with ``COPY FROM DATABASE``, syncs it, and
renames it over the store while the writer's lock is still held, so no other process can write in between.
It needs free disk for the live data; on any error the copy is removed and the store is as it was.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from typing import TYPE_CHECKING

import duckdb

from factory.errors import StoreError

if TYPE_CHECKING:
    from factory.store import Store

log = logging.getLogger(__name__)


def _fsync(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compact(store: Store) -> tuple[int, int]:
    """Compact the store (open for writing) and close it. Returns the file's bytes before and after."""
    if store.read_only:
        raise StoreError(f"the store {store.path} is open read-only; compacting needs it writable")
    path = store.path
    tmp = path.with_name(f"{path.name}.compact-{os.getpid()}")
    con = store.con
    before = path.stat().st_size
    try:
        # A copy left by a compaction that was killed: this process holds the store's lock, so no other is
        # compacting it now.
        for stale in path.parent.glob(f"{glob.escape(path.name)}.compact-*"):
            stale.unlink(missing_ok=True)
        con.execute("CHECKPOINT").fetchall()
        name = con.execute("SELECT current_database()").fetchall()[0][0]
        con.execute("ATTACH ? AS _compacted", [str(tmp)]).fetchall()
        try:
            ident = '"' + str(name).replace('"', '""') + '"'  # an identifier DuckDB gave, not a value
            con.execute(f"COPY FROM DATABASE {ident} TO _compacted").fetchall()
        finally:
            con.execute("DETACH _compacted").fetchall()
        _fsync(str(tmp))
        os.replace(tmp, path)  # the lock on the old file is still held: nobody writes in between
        _fsync(str(path.parent), directory=True)
    except BaseException as exc:  # also Ctrl+C: no half-written copy is left beside the store
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, (duckdb.Error, OSError)):
            raise
        raise StoreError(
            f"cannot compact the store {path}: {exc}. The store is as it was (free disk for a copy of its "
            "live data and try again)"
        ) from exc
    finally:
        store.close()
    after = path.stat().st_size
    log.info("compacted %s: %d → %d bytes", path, before, after)
    return before, after
