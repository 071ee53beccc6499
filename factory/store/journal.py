"""An append-only journal of teacher answers (and of the run's counters) not yet committed to DuckDB.

An answer is written as it is parsed off its connection: the runner hooks the teacher's HTTP response, before
the task that awaits it resumes, and the journal writes the row there and then with one ``os.write``. When
answers come faster than one every ``coalesce_s`` (5 ms), a row that follows a write by less than that is
queued instead, and all rows queued in one pass of the event loop go out in one write at the start of the
next pass, ahead of the tasks those answers wake: a system call per answer was the largest cost the journal
added per request at a thousand requests in flight. (A writer thread waking every few milliseconds cost
more, in taking the interpreter from the event loop. With 1 ms, a busy client whose passes of the loop
take more than that wrote twice a pass, the first answer of the pass at once and the others after it.) Each write of rows is followed, at most every
``stats_interval_s`` (10 ms) and at every rotation, by a line of the invocation's counters (requests sent,
attempts, tokens, failures by kind) as they are then, so the counters in the journal cover the answers in
it up to that interval. The kernel keeps written data even if the process is SIGKILLed: a kill loses only
answers not yet written, those read off their connections in the loop pass it died in (they count as in
flight).

The next open for writing replays the journal: rows into the cache table, counters into ``run_stats``
(each counter the larger of the committed and the journaled value). Read-only readers (``factory status``
after a crash) fold the journaled counters in without writing. Segments are rotated at each commit and
deleted once their rows are committed.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from factory.errors import StoreError

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.01
COALESCE_S = 0.005
_STATS = b'{"stats":'


def journal_dir(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".journal")


class Journal:
    def __init__(
        self, directory: Path, *, stats_interval_s: float = STATS_INTERVAL_S, coalesce_s: float = COALESCE_S
    ):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stats_interval_s = stats_interval_s
        self.coalesce_s = coalesce_s
        self._wrote_at = -1.0  # when rows were last written
        self._n = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self._pid = os.getpid()
        self._stats: Callable[[], dict[str, Any]] | None = None
        self._on_error: Callable[[StoreError], None] | None = None
        self._last_stats = b""
        self._stats_at = 0.0
        self._pending: list[bytes] = []  # rows of this loop pass, written by the next ``_drain``
        self._drain_due = False
        self.error: StoreError | None = None  # the write that failed (disk full); nothing is written after

    def start(
        self,
        stats: Callable[[], dict[str, Any]] | None = None,
        on_error: Callable[[StoreError], None] | None = None,
    ) -> None:
        """``stats`` gives the counters line written after the rows (at most every ``stats_interval_s``,
        and at each rotation); ``on_error`` hears of a write that failed (the append does not raise)."""
        self._stats, self._on_error = stats, on_error

    def _open(self) -> None:
        self._n += 1
        self._path = self.directory / f"seg-{self._pid}-{self._n:08d}.jsonl"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, row: tuple[Any, ...]) -> None:
        """Write one row (values in the cache table's column order, as a JSON array; bytes as base64 text)
        at once, or, within
        ``coalesce_s`` of the last write, with the other rows of this loop pass at the start of the next.
        A failed write is kept in ``error`` and told to ``on_error``; the append itself does not raise."""
        if self.error is not None:
            return
        self._pending.append(orjson.dumps(row, default=_bytes_as_text))
        if self._drain_due:
            return
        if time.monotonic() - self._wrote_at >= self.coalesce_s:
            self._drain()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._drain()
            return
        self._drain_due = True
        loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_due = False
        parts, self._pending = self._pending, []
        if not parts or self.error is not None:
            return
        try:
            self._write(parts, time.monotonic() - self._stats_at >= self.stats_interval_s)
        except StoreError as exc:
            if self._on_error is not None:
                self._on_error(exc)

    def flush(self) -> None:
        """Write the queued rows and the counters line."""
        if self.error is not None:
            raise self.error
        parts, self._pending = self._pending, []
        self._write(parts, True)

    def _write(self, parts: list[bytes], with_stats: bool) -> None:
        if with_stats and self._stats is not None:
            line = self._stats_line()
            self._stats_at = time.monotonic()
            if line is not None and (line != self._last_stats or parts):
                parts.append(line)
                self._last_stats = line
        if not parts:
            return
        data = b"\n".join(parts) + b"\n"
        try:
            if self._fd is None:
                self._open()
            written = os.write(self._fd, data)  # type: ignore[arg-type]
            self._wrote_at = time.monotonic()
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            self.error = StoreError(
                f"cannot write the answer journal in {self.directory}: {exc.strerror or exc}. "
                "Free disk space and re-run the same command; everything committed so far is kept."
            )
            raise self.error from exc

    def _stats_line(self) -> bytes | None:
        try:
            return orjson.dumps({"stats": self._stats()})  # type: ignore[misc]
        except Exception:  # a counter read mid-update must not stop the rows from being written
            log.debug("journal: counters not written this time", exc_info=True)
            return None

    def rotate(self) -> Path | None:
        """Close the current segment and return its path (None if nothing was written since last time)."""
        self.flush()
        if self._fd is None:
            return None
        os.close(self._fd)
        path, self._fd, self._path = self._path, None, None
        return path

    def close(self) -> Path | None:
        self._stats = None
        return self.rotate()


def _bytes_as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def bytes_of(text: str) -> bytes:
    """A journaled bytes value (base64 text) back as bytes; ValueError when it is not base64."""
    return base64.b64decode(text.encode("ascii"), validate=True)


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
    later: int = 0,
) -> tuple[list[Path], list[tuple[Any, ...]]]:
    """All complete rows from leftover segments as tuples in ``columns`` order (see ``scan_segments``)."""
    paths, rows, _ = scan_segments(directory, columns, check=check, bad=bad, later=later)
    return paths, rows


def scan_segments(
    directory: Path,
    columns: tuple[str, ...] | None,
    *,
    check: Callable[[tuple[Any, ...]], str | None] | None = None,
    bad: list[BadLine] | None = None,
    later: int = 0,
) -> tuple[list[Path], list[tuple[Any, ...]], list[dict[str, Any]]]:
    """Leftover segments, their cache rows (none when ``columns`` is None) and their counters lines.

    A torn last line, the one a crash cut short, is skipped: it was in flight. Rows are JSON arrays in
    ``columns`` order; JSON objects (an older journal) are mapped by name; a list written before the last
    ``later`` columns were added lacks them, and gets None for them. A complete row line that does
    not parse, has the wrong number of values, or that ``check`` refuses (it returns a reason) is left out
    and added to ``bad``; a row of one of the ``older`` lengths (written before columns were added at the
    end) gets None for the columns it lacks. A counters line that does not parse is skipped (the committed
    counters stand)."""
    check_journal_path(directory)
    if not directory.is_dir():
        return [], [], []
    bad = [] if bad is None else bad
    paths = sorted(directory.glob("seg-*.jsonl"))
    rows: list[tuple[Any, ...]] = []
    stats: list[dict[str, Any]] = []
    for p in paths:
        for n, raw in _lines(p):
            if raw.startswith(_STATS):
                doc = _loads(raw)
                if isinstance(doc, dict) and isinstance(doc.get("stats"), dict):
                    stats.append(doc["stats"])
                continue
            if columns is None:
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                bad.append(BadLine(p, n, raw, f"not valid JSON ({exc})"))
                continue
            if isinstance(value, dict):
                row = tuple(value.get(c) for c in columns)
            elif isinstance(value, list) and len(columns) - later <= len(value) <= len(columns):
                row = (*value, *([None] * (len(columns) - len(value))))
            else:
                what = f"{len(value)} values" if isinstance(value, list) else f"a JSON {type(value).__name__}"
                bad.append(BadLine(p, n, raw, f"{what}, expected a list of {len(columns)}"))
                continue
            reason = check(row) if check is not None else None
            if reason:
                bad.append(BadLine(p, n, raw, reason))
            else:
                rows.append(row)
    return paths, rows, stats


def latest_stats(stats: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (run, invocation), each counter at its largest journaled value (counters only grow)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for s in stats:
        try:
            ident = (str(s["run_id"]), int(s["invocation"]))
        except (KeyError, TypeError, ValueError):
            continue
        merged = out.setdefault(ident, {"failures": {}, "failure_examples": {}})
        for k in COUNTERS:
            v = s.get(k)
            if isinstance(v, int):
                merged[k] = max(merged.get(k, 0), v)
        for kind, n in (s.get("failures") or {}).items():
            if isinstance(n, int):
                merged["failures"][kind] = max(merged["failures"].get(kind, 0), n)
        merged["failure_examples"].update(s.get("failure_examples") or {})
    return out


COUNTERS = ("requests_sent", "attempts", "cache_hits", "prompt_tokens", "completion_tokens")


def _loads(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break
            if line.strip():
                yield n, line
