"""Seed files: JSONL, JSON (a list of objects), CSV or Parquet, checked before anything is stored.

A seed file is never held whole (a JSON list excepted: it is one document, parsed at once; use JSONL for a
large seed set). :func:`check_seeds` streams it once and checks every row (required fields present, values
that JSON can hold, ids unique), keeping only the row count, the digest the run id covers, and the file's
size and modification time; the run then streams it again, a window of rows at a time
(:meth:`SeedFile.windows`), and refuses a file that changed since its check. Ids are checked for repeats
in a dict up to ``IDS_IN_MEMORY`` rows, beyond that in a scratch DuckDB file (factory.store.seed_ids).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from factory.errors import ConfigError

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
IDS_IN_MEMORY = 100_000  # seed ids checked for repeats in a dict; beyond it on disk
PARQUET_BATCH = 4096  # rows decoded from a Parquet file at a time


@dataclass(frozen=True, slots=True)
class Seed:
    """One seed row. ``id`` is the row's ``id`` field when present, else a hash of its content."""

    id: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SeedFile:
    """A checked seed file: its rows stream from disk; ``len()`` and ``digest`` come from the check."""

    path: Path
    required: tuple[str, ...]
    count: int
    digest: str  # over every row in file order: the seed part of the run id (see seeds_digest)
    stamp: tuple[int, int]  # size and modification time (ns) when checked

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Seed]:
        for window in self.windows(PARQUET_BATCH):
            yield from window

    def windows(self, size: int) -> Iterator[list[Seed]]:
        """The seeds in file order, ``size`` at a time. Raises ConfigError, before the window that would
        show it, when the file changed since its check."""
        self._unchanged()
        window: list[Seed] = []
        for seed in _seeds_again(self.path):
            window.append(seed)
            if len(window) >= size:
                yield window
                window = []
                self._unchanged()
        if window:
            yield window

    def _unchanged(self) -> None:
        try:
            now = _stamp(self.path)
        except OSError as exc:
            raise ConfigError(
                f"seed file {self.path}: cannot read it any more ({exc.strerror or exc})"
            ) from None
        if now != self.stamp:
            raise ConfigError(
                f"seed file {self.path} changed since it was checked; a changed seed file is a new run: run the "
                "command again once the file is final"
            )


Seeds = Sequence[Seed] | SeedFile


def seed_windows(seeds: Seeds, size: int) -> Generator[list[Seed], None, None]:
    """The seeds ``size`` at a time, from a checked file or a list."""
    if isinstance(seeds, SeedFile):
        yield from seeds.windows(size)
        return
    for lo in range(0, len(seeds), size):
        yield list(seeds[lo : lo + size])


def first_seeds(seeds: Seeds, n: int | None) -> Iterator[Seed]:
    return itertools.islice(iter(seeds), n)


# ------------------------------------------------------------------------------------------------ reading


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _pieces(path: Path, f: BinaryIO) -> Iterator[str]:
    """The file's text split after each newline (the newline kept), as ``io.StringIO`` of the whole text
    would give it, a byte-order mark dropped; a byte that is not UTF-8 is an error naming its line and its
    offset in the file."""
    offset = 0
    for n, raw in enumerate(f, 1):
        skip = 3 if n == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
        try:
            yield raw[skip:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"seed file {path}: invalid UTF-8 at line {n} (byte {offset + skip + exc.start}); re-save the "
                "file as UTF-8"
            ) from None
        offset += len(raw)


def _jsonl_rows(path: Path, f: BinaryIO) -> Iterator[dict[str, Any]]:
    n = 0
    for piece in _pieces(path, f):
        for line in piece.splitlines():  # \r, \x0b, U+2028 … end a line too, as for str.splitlines
            n += 1
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(
                    f"seed file {path}, line {n}: not valid JSON ({exc}); one JSON object per line"
                ) from None
            if not isinstance(row, dict):
                raise ConfigError(
                    f"seed file {path}, line {n}: expected a JSON object, got {type(row).__name__}"
                )
            yield row


def _csv_rows(path: Path, f: BinaryIO) -> Iterator[dict[str, Any]]:
    reader = csv.DictReader(_pieces(path, f))
    limit = csv.field_size_limit(2**31 - 1)  # a long document in one field is a seed, not an error
    try:
        for r in reader:
            if None in r:  # more values than header columns
                raise ConfigError(
                    f"seed file {path}, line {reader.line_num}: more values than the "
                    f"{len(reader.fieldnames or [])} header columns; quote values that hold commas"
                )
            yield dict(r)
    except csv.Error as exc:
        raise ConfigError(f"seed file {path}, line {reader.line_num}: not valid CSV ({exc})") from None
    finally:
        csv.field_size_limit(limit)


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH)
        for batch in batches:
            yield from batch.to_pylist()
    except Exception as exc:
        raise ConfigError(f"seed file {path}: cannot read Parquet: {exc}") from None


def _json_rows(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"seed file {path}: invalid UTF-8 at line {line} (byte {exc.start}); re-save the file as UTF-8"
        ) from None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"seed file {path}: not valid JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ConfigError(f"seed file {path}: expected a JSON list of objects")
    return data


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:  # before reading: a .gz or .xlsx file is not "invalid UTF-8"
        raise ConfigError(
            f"seed file {path}: unsupported extension {suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    if suffix == ".parquet":
        yield from _parquet_rows(path)
    elif suffix == ".json":
        yield from _json_rows(path)
    else:
        with path.open("rb") as f:
            yield from (_csv_rows if suffix == ".csv" else _jsonl_rows)(path, f)


def _seeds(path: Path, required: Sequence[str]) -> Iterator[tuple[int, Seed, bytes]]:
    """(row number, seed, the row's canonical JSON) for every row, each checked on its own."""
    for n, row in enumerate(_rows(path), 1):
        missing = [f for f in required if row.get(f) in (None, "")]
        if missing:
            raise ConfigError(
                f"seed file {path}, row {n}: missing required field(s) {', '.join(repr(m) for m in missing)}; "
                f"every row needs {', '.join(repr(r) for r in required)}"
            )
        try:
            canon = orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise ConfigError(
                f"seed file {path}, row {n}: {exc}; seed values must be text, numbers, booleans, lists or "
                "mappings"
            ) from None
        if row.get("id") not in (None, ""):
            sid = str(row["id"])
        else:  # factory.keys.digest("seed1", row, length=16), from the JSON already made
            sid = hashlib.blake2b(b"seed1\x00" + canon, digest_size=8).hexdigest()
        yield n, Seed(sid, row), canon


def _seeds_again(path: Path) -> Iterator[Seed]:
    """The seeds of a file that :func:`_seeds` checked and that has not changed since: the checks are not
    made again, and a row's canonical JSON only for the id of a row without one (this runs for every seed
    of a run, beside its requests)."""
    rows = _jsonl_again(path) if path.suffix.lower() in (".jsonl", ".ndjson") else _rows(path)
    try:
        yield from _seed_rows(rows)
    except (UnicodeDecodeError, orjson.JSONDecodeError):  # the size and time of the file did not change
        raise ConfigError(
            f"seed file {path} changed since it was checked; a changed seed file is a new run: run the "
            "command again once the file is final"
        ) from None


def _seed_rows(rows: Iterable[dict[str, Any]]) -> Iterator[Seed]:
    for row in rows:
        sid = row.get("id")
        if sid in (None, ""):
            canon = orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
            sid = hashlib.blake2b(b"seed1\x00" + canon, digest_size=8).hexdigest()
        yield Seed(str(sid), row)


def _jsonl_again(path: Path, block: int = 1 << 20) -> Iterator[dict[str, Any]]:
    """The rows of a checked JSONL file, as :func:`_jsonl_rows` gives them (lines split as
    ``str.splitlines`` splits them, blank ones skipped, a byte-order mark dropped), read a block of whole
    lines at a time."""
    with path.open("rb") as f:
        rest, first = b"", True
        while True:
            data = f.read(block)
            chunk = rest + data
            if data:
                cut = chunk.rfind(b"\n") + 1
                if not cut:  # a line longer than the block: read on
                    rest = chunk
                    continue
                chunk, rest = chunk[:cut], chunk[cut:]
            text = chunk.decode("utf-8")
            if first:
                text, first = text.removeprefix("\ufeff"), False
            for line in text.splitlines():
                if line and not line.isspace():
                    row = orjson.loads(line)
                    if type(row) is not dict:
                        raise orjson.JSONDecodeError("not an object", line, 0)
                    yield row
            if not data:
                return


# ------------------------------------------------------------------------------------------------ checking


class _Repeats:
    """Seed ids seen so far: in a dict (a repeat is an error at once), then, past ``IDS_IN_MEMORY`` rows,
    on disk (a repeat is found once every row is in)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[str, int] | None = {}
        self.ledger: Any = None
        self.ids: list[str] = []
        self.rows: list[int] = []

    def error(self, sid: str, first: int, n: int) -> ConfigError:
        return ConfigError(
            f"seed file {self.path}, row {n}: id {sid!r} repeats row {first}; seed ids must be unique"
        )

    def add(self, sid: str, n: int) -> None:
        if self.seen is None:
            self.ids.append(sid)
            self.rows.append(n)
            if len(self.ids) >= PARQUET_BATCH * 4:
                self._flush()
            return
        first = self.seen.setdefault(sid, n)
        if first != n:
            raise self.error(sid, first, n)
        if len(self.seen) > IDS_IN_MEMORY:
            from factory.store.seed_ids import IdLedger

            self.ledger = IdLedger()
            self.ids, self.rows = list(self.seen), list(self.seen.values())
            self.seen = None
            self._flush()

    def _flush(self) -> None:
        if self.ids:
            self.ledger.add(self.ids, self.rows)
            self.ids, self.rows = [], []

    def finish(self) -> None:
        if self.ledger is None:
            return
        self._flush()
        repeat = self.ledger.first_repeat()
        if repeat is not None:
            raise self.error(*repeat)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()


def _update(h: Any, sid: str, canon: bytes) -> None:
    h.update(sid.encode() + b"\x00" + canon + b"\n")


def check_seeds(path: Path, required: Sequence[str] = ()) -> SeedFile:
    """Read the whole seed file once, checking every row; keep its count and digest, not its rows."""
    if not path.exists():
        raise ConfigError(
            f"seed file {path} not found: check the 'seeds' field of the config (paths are relative to the config file)"
        )
    if not path.is_file():
        raise ConfigError(f"seed file {path} is not a file")
    stamp = _stamp(path)
    h = hashlib.blake2b(digest_size=16)
    count = 0
    repeats = _Repeats(path)
    try:
        for count, seed, canon in _seeds(path, required):
            _update(h, seed.id, canon)
            repeats.add(seed.id, count)
        repeats.finish()
    finally:
        repeats.close()
    if not count:
        raise ConfigError(f"seed file {path} holds no rows: add at least one seed")
    return SeedFile(path, tuple(required), count, h.hexdigest(), stamp)


def load_seeds(path: Path, required: Sequence[str] = ()) -> list[Seed]:
    """Every seed of a file, checked, in a list (for the few callers that need them all at once)."""
    return list(check_seeds(path, required))


def seeds_digest(seeds: Iterable[Seed]) -> str:
    """What the run id covers of the seeds: each id and canonical row, in order (SeedFile.digest)."""
    h = hashlib.blake2b(digest_size=16)
    for s in seeds:
        _update(h, s.id, orjson.dumps(s.data, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()
