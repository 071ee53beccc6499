"""An append-only journal of teacher answers not yet committed to DuckDB.

Answers are appended as they arrive and written with one ``os.write`` per event-loop tick (the runner
schedules ``flush`` right after the first append of a tick), before anything built from them can be
committed. The kernel keeps written data even if the process is SIGKILLed, so a crash between two
DuckDB commits loses at most the answers of the current tick, which count as in flight: the next open
replays the journal into the cache table. Segments are rotated at each commit and deleted once their
rows are committed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from factory.errors import StoreError


def journal_dir(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".journal")


class Journal:
    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self._pid = os.getpid()
        self._pending: list[bytes] = []

    def _open(self) -> None:
        self._n += 1
        self._path = self.directory / f"seg-{self._pid}-{self._n:08d}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, row: tuple[Any, ...]) -> bool:
        """Buffer one row (values in the cache table's column order, written as a JSON array); returns True
        when the buffer was empty (the caller schedules ``flush``)."""
        self._pending.append(orjson.dumps(row))
        return len(self._pending) == 1

    def flush(self) -> None:
        if not self._pending:
            return
        if self._fd is None:
            self._open()
        data = b"\n".join(self._pending) + b"\n"
        self._pending = []
        try:
            written = os.write(self._fd, data)  # type: ignore[arg-type]
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            raise StoreError(
                f"cannot write the answer journal in {self.directory}: {exc.strerror or exc}. "
                "Free disk space and re-run the same command; everything committed so far is kept."
            ) from exc

    def rotate(self) -> Path | None:
        """Close the current segment and return its path (None if nothing was written since last time)."""
        self.flush()
        if self._fd is None:
            return None
        os.close(self._fd)
        path, self._fd, self._path = self._path, None, None
        return path

    def close(self) -> Path | None:
        return self.rotate()


@dataclass(slots=True)
class BadLine:
    """A complete journal line that cannot be replayed: where it is, its bytes, and why."""

    path: Path
    line: int
    raw: bytes
    reason: str


def check_journal_path(directory: Path) -> None:
    """StoreError when the journal's folder, or a segment in it, is not what the store writes there."""
    if directory.exists() and not directory.is_dir():
        raise StoreError(
            f"{directory} should be the store's answer journal (a folder) but is a file; nothing was changed. "
            f"Move it away (e.g. `mv {directory} {directory}.bak`) and run again"
        )
    for p in sorted(directory.glob("seg-*.jsonl")) if directory.is_dir() else []:
        if not p.is_file():
            raise StoreError(
                f"{p} should be a journal segment (a file) but is not; nothing was changed. Move it out of "
                f"{directory} and run again"
            )


def read_segments(
    directory: Path,
    columns: tuple[str, ...],
    *,
    check: Callable[[tuple[Any, ...]], str | None] | None = None,
    bad: list[BadLine] | None = None,
) -> tuple[list[Path], list[tuple[Any, ...]]]:
    """All complete rows from leftover segments as tuples in ``columns`` order (a torn last line, the one
    a crash cut short, is skipped: it was in flight). Lines are JSON arrays in that order; JSON objects (an
    older journal) are mapped by name. A complete line that does not parse, has the wrong number of
    values, or that ``check`` refuses (it returns a reason) is left out and added to ``bad``."""
    check_journal_path(directory)
    if not directory.is_dir():
        return [], []
    bad = [] if bad is None else bad
    paths = sorted(directory.glob("seg-*.jsonl"))
    rows: list[tuple[Any, ...]] = []
    for p in paths:
        for n, raw in _lines(p):
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                bad.append(BadLine(p, n, raw, f"not valid JSON ({exc})"))
                continue
            if isinstance(value, dict):
                row = tuple(value.get(c) for c in columns)
            elif isinstance(value, list) and len(value) == len(columns):
                row = tuple(value)
            else:
                what = f"{len(value)} values" if isinstance(value, list) else f"a JSON {type(value).__name__}"
                bad.append(BadLine(p, n, raw, f"{what}, expected a list of {len(columns)}"))
                continue
            reason = check(row) if check is not None else None
            if reason:
                bad.append(BadLine(p, n, raw, reason))
            else:
                rows.append(row)
    return paths, rows


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break
            if line.strip():
                yield n, line
