"""What is wrong with a store, and what can be recovered: behind `factory doctor` and the store's messages.

A store is three things on disk: the DuckDB file (with its WAL), and the answer journal, a folder of
segments holding answers not yet committed. The file can be truncated or hold a corrupt block; the journal
can hold a line that is not a cache row. Neither is ever changed by a check: only ``--repair`` changes
anything, and it only sets unreadable journal lines aside (appended, as they were, to
``STORE.journal.rejected``) and commits the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from factory.errors import StoreError
from factory.store.journal import BadLine, bytes_of, check_journal_path, journal_dir, read_segments
from factory.store.migrations import pending_migrations
from factory.store.tables import CACHE_LATER_COLUMNS

DAMAGE_HINTS = ("corrupt", "could not read enough bytes", "checksum", "not a valid duckdb", "invalid block")


def is_damage(exc: BaseException) -> bool:
    """A DuckDB error that means the file's bytes are wrong (truncated, a corrupt block), not its use."""
    msg = str(exc).lower()
    return isinstance(exc, duckdb.SerializationException) or any(h in msg for h in DAMAGE_HINTS)


def first_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def damaged(path: Path, exc: BaseException, *, note: str = "nothing was changed") -> StoreError:
    return StoreError(
        f"the store {path} is damaged ({first_line(exc)}); {note}. Run `factory doctor --store "
        f"{path}` to see what can still be read, then restore the file from a backup or start a new store "
        "with --store NEW.duckdb"
    )


_last_opened: Path | None = None


def note_opened(path: Path) -> None:
    """Remember the store opened last: messages about DuckDB errors met after the open name it."""
    global _last_opened
    _last_opened = path


def store_error_from(exc: BaseException) -> StoreError | None:
    """The StoreError for a DuckDB error met while using the store opened last: damage or an I/O error.
    Anything else (None) is a bug and keeps its traceback."""
    if not isinstance(exc, duckdb.Error):
        return None
    path = _last_opened or Path("(the store)")
    if is_damage(exc):
        return damaged(path, exc)
    if isinstance(exc, duckdb.IOException):
        return StoreError(f"the store {path} could not be read or written: {first_line(exc)}")
    return None


def unwritable(path: Path) -> StoreError | None:
    """Why the store's folder cannot take its WAL and journal, or None. os.access also sees a read-only
    file system, for root too."""
    folder = path.parent
    if os.access(folder, os.W_OK | os.X_OK) and (not path.exists() or os.access(path, os.W_OK)):
        return None
    what = f"the folder {folder}" if not os.access(folder, os.W_OK | os.X_OK) else f"the file {path}"
    return StoreError(
        f"cannot write to the store {path}: {what} is read-only (the store writes its WAL and answer journal "
        "beside it). Make it writable, or copy the store to a writable folder and pass --store NEW_PATH"
    )


def rejected_path(db_path: Path) -> Path:
    jdir = journal_dir(db_path)
    return jdir.with_name(jdir.name + ".rejected")


def row_check(schema: pa.Schema, required: set[str]) -> Callable[[tuple[Any, ...]], str | None]:
    """A function that names what is wrong with one journal row for ``schema`` (None when it fits)."""

    def fits(value: Any, t: pa.DataType) -> bool:
        if pa.types.is_string(t):
            return isinstance(value, str)
        if pa.types.is_integer(t):
            return isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31
        if pa.types.is_floating(t):
            return isinstance(value, int | float) and not isinstance(value, bool)
        if pa.types.is_binary(t):  # journaled as base64 text
            if not isinstance(value, str):
                return False
            try:
                bytes_of(value)
            except ValueError:
                return False
        return True

    def check(row: tuple[Any, ...]) -> str | None:
        for value, f in zip(row, schema, strict=True):
            if value is None:
                if f.name in required:
                    return f"{f.name} is missing"
            elif not fits(value, f.type):
                shown = repr(value)
                return f"{f.name} is {type(value).__name__} {shown[:40]}, expected {f.type}"
        return None

    return check


def required_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND is_nullable = 'NO'",
        [table],
    ).fetchall()
    return {r[0] for r in rows}


def journal_problem(db_path: Path, bad: list[BadLine], good: int) -> StoreError:
    first = bad[0]
    return StoreError(
        f"the answer journal of {db_path} holds {len(bad)} unreadable line(s) (first: {first.path.name} line "
        f"{first.line}: {first.reason}) beside {good} good answer(s); nothing was changed. Run `factory doctor "
        f"--store {db_path} --repair` to set the unreadable lines aside in {rejected_path(db_path).name} and "
        "commit the good ones"
    )


def set_aside(bad: list[BadLine], target: Path) -> None:
    """Append the raw lines to ``target``, on disk before anything else is changed."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, b"".join(b.raw if b.raw.endswith(b"\n") else b.raw + b"\n" for b in bad))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(
            f"cannot set {len(bad)} unreadable journal line(s) aside in {target}: {exc.strerror or exc}; "
            "nothing was changed. Free space or move that path away, then repair again"
        ) from None


# -- the doctor's report ---------------------------------------------------------------------------
@dataclass
class Check:
    what: str
    ok: bool
    detail: str


@dataclass
class Diagnosis:
    path: Path
    checks: list[Check] = field(default_factory=list)
    bad_lines: list[BadLine] = field(default_factory=list)
    journal_rows: int = 0
    repaired: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, what: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(what, ok, detail))


def _scan_tables(con: duckdb.DuckDBPyConnection, d: Diagnosis) -> bool:
    """Read every row of every table (each block's checksum is verified as it is read)."""
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
    all_ok = True
    for t in tables:
        try:
            cur = con.execute(f'SELECT * FROM "{t}"')  # a name from the catalog, not a value
            n = 0
            while batch := cur.fetchmany(50_000):
                n += len(batch)
            d.add(f"table {t}", True, f"{n} rows")
        except duckdb.Error as exc:
            all_ok = False
            d.add(f"table {t}", False, f"cannot be read: {first_line(exc)}")
    return all_ok


def diagnose(db_path: Path, schema: pa.Schema) -> Diagnosis:
    """Check the store file, its migrations, every table, and the journal; change nothing."""
    d = Diagnosis(db_path)
    required: set[str] = set()
    if not db_path.is_file():
        d.add("store file", False, "missing" if not db_path.exists() else "not a file")
    else:
        try:
            con = duckdb.connect(str(db_path), read_only=True)
        except duckdb.Error as exc:
            d.add("store file", False, f"cannot be opened: {first_line(exc)}")
        else:
            d.add("store file", True, f"opens ({db_path.stat().st_size:,} bytes)")
            try:
                pending = pending_migrations(con)
                d.add("migrations", True, f"{len(pending)} pending, applied on the next write" if pending
                      else "up to date")  # fmt: skip
            except duckdb.Error as exc:
                d.add("migrations", False, f"cannot be read: {first_line(exc)}")
            try:
                _scan_tables(con, d)
                required = required_columns(con, "cache")
            except duckdb.Error as exc:
                d.add("catalog", False, f"cannot be read: {first_line(exc)}")
            finally:
                con.close()
    jdir = journal_dir(db_path)
    try:
        check_journal_path(jdir)
    except StoreError as exc:
        d.add("journal", False, str(exc).split("; ")[0])
        return d
    _, rows = read_segments(jdir, tuple(schema.names), check=row_check(schema, required), bad=d.bad_lines,
                            later=len(CACHE_LATER_COLUMNS))  # fmt: skip
    d.journal_rows = len(rows)
    if d.bad_lines:
        d.add("journal", False, f"{len(rows)} answers to replay, {len(d.bad_lines)} unreadable line(s)")
    else:
        d.add("journal", True, f"{len(rows)} answers to replay" if rows else "empty")
    return d
