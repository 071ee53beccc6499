"""Files of rows to import: JSONL, Parquet, or a local Hugging Face dataset folder (a ``save_to_disk`` folder
of Arrow files, or a folder of Parquet shards), read a batch at a time so that memory stays bounded whatever
the file's size. Anything that cannot be read is one ConfigError naming the file and the fix."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from factory.errors import ConfigError

SUFFIXES = (".jsonl", ".ndjson", ".parquet")
MAX_LINE_BYTES = 64 * 2**20  # a JSONL line longer than this is refused, not read into memory
BATCH_ROWS = 2048
_SNIFF = 8192


@dataclass(frozen=True, slots=True)
class Source:
    """What FILE names: its kind (jsonl | parquet | arrow) and the files that hold its rows, in order."""

    path: Path
    kind: str
    files: tuple[Path, ...]

    def columns(self) -> list[str]:
        """The columns: the schema's, or the keys of a JSONL file's first row."""
        if self.kind == "jsonl":
            for _n, row in self.rows():
                return list(row)
            return []
        return list(_schema(self, self.files[0]).names)

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(row number from 1, row) for every row of every file."""
        if self.kind == "jsonl":
            yield from _jsonl_rows(self.files[0])
            return
        n = 0
        for f in self.files:
            for batch in _batches(self, f):
                for row in batch.to_pylist():
                    n += 1
                    yield n, row

    def sha256(self) -> str:
        """Digest of the bytes of its files (and, for a folder, their names within it)."""
        h = hashlib.sha256()
        for f in self.files:
            if self.path.is_dir():
                h.update(f.relative_to(self.path).as_posix().encode() + b"\x00")
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        return h.hexdigest()


def open_source(path: Path) -> Source:
    if not path.exists():
        raise ConfigError(f"FILE {path} not found: give a .jsonl or .parquet file or a dataset folder")
    if path.is_dir():
        return _folder(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"FILE {path}: unsupported extension {suffix!r}; give one of {', '.join(SUFFIXES)} or a local "
            "Hugging Face dataset folder"
        )
    if suffix == ".parquet":
        src = Source(path, "parquet", (path,))
        _schema(src, path)
        return src
    with path.open("rb") as fh:
        head = fh.read(_SNIFF)
    if b"\x00" in head:
        raise ConfigError(f"FILE {path} is not text (it holds NUL bytes): give a UTF-8 JSONL file")
    return Source(path, "jsonl", (path,))


def _folder(path: Path) -> Source:
    arrow = sorted(p for p in path.rglob("*.arrow") if not p.name.startswith("cache-"))
    if arrow and any(path.rglob("state.json")):
        return Source(path, "arrow", tuple(arrow))
    parquet = sorted(path.rglob("*.parquet"))
    if parquet:
        return Source(path, "parquet", tuple(parquet))
    raise ConfigError(
        f"FILE {path} is a folder but not a dataset: expected a `Dataset.save_to_disk` folder (state.json and "
        ".arrow files) or .parquet shards; give such a folder or a .jsonl/.parquet file"
    )


def _schema(src: Source, f: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if src.kind == "parquet":
            return pq.ParquetFile(f).schema_arrow
        return _arrow_reader(f).schema
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"FILE {f}: cannot read it as {src.kind.title()}: {exc}") from None


def _arrow_reader(f: Path) -> Any:
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.memory_map(str(f)))
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(str(f)))


def _batches(src: Source, f: Path) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if src.kind == "parquet":
            yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS)
        else:
            yield from _arrow_reader(f)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"FILE {f}: cannot read it as {src.kind.title()}: {exc}") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    cap = MAX_LINE_BYTES
    with path.open("rb") as fh:
        n = 0
        while line := fh.readline(cap + 1):
            n += 1
            if len(line) > cap and not (len(line) == cap + 1 and line.endswith(b"\n")):
                raise ConfigError(
                    f"FILE {path}, line {n}: longer than {cap // 2**20} MiB; a JSONL row must be one line "
                    "under that size (is this really JSONL?)"
                )
            if b"\x00" in line:
                raise ConfigError(f"FILE {path}, line {n}: not text (NUL bytes); give a UTF-8 JSONL file")
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise ConfigError(
                        f"FILE {path}, line {n}: not valid UTF-8 (byte {bad.start}); re-save the file as UTF-8"
                    ) from None
                raise ConfigError(
                    f"FILE {path}, line {n}: not valid JSON ({exc}); one JSON object per line"
                ) from None
            if not isinstance(row, dict):
                raise ConfigError(f"FILE {path}, line {n}: expected a JSON object, got {type(row).__name__}")
            yield n, row
