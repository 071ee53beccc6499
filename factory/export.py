"""Export the curated view of a run: JSONL, Parquet, or a Hugging Face dataset folder with its card.

The run is read from the store in Arrow batches and written as it is read, so memory stays bounded by the
batch size whatever the run's size. Parquet needs one schema before the first row is written: a first
pass over the same rows settles it (and the label names of a ClassLabel column); the second pass writes.

Rows go to splits by a hash of the seed id (default: every record of a seed lands in one split, so no
question sits in train and test at once) or of the record id; the same record always lands in the same
split. Shapes (``--as``) are declared by each recipe (``Recipe.shapes``); ``messages`` is derived from
``prompt_completion``. How records become a shape's rows (trusted targets only, preference pairs grouped by
seed) is export_shapes.py's part.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.errors import ConfigError, FactoryError
from factory.export_shapes import PAIRS_PER_QUESTION, Plan, grouped_rows, plan_shape, shaped_rows
from factory.outputs import sweep_stale, temp_beside, user_modes
from factory.store import Store

FORMATS = ("hf", "parquet", "jsonl")
SPLIT_BY = ("seed", "record")
LINEAGE = ("record_id", "seed_id", "stage", "sample_index", "teacher", "template_version", "request_keys",
           "focus_round", "focus_eval")  # fmt: skip
FUNNEL_IMAGE = "funnel.svg"  # the funnel chart of an HF export, shown in its card
EXPORT_MEMORY = "256MB"  # DuckDB's page cache while exporting: the reads are a range of seeds at a time
ROW_GROUP = 10_000  # rows buffered per split before a parquet row group is written


@dataclass(slots=True)
class ExportResult:
    out: Path
    format: str
    shape: str
    rows: int
    splits: dict[str, int]
    files: list[Path]
    stage: str | None
    skipped: int = 0  # curated records the shape cannot show (e.g. no label), counted, not written
    # Curated records a shape that teaches an answer leaves out, by reason ("disagree with gold": n).
    set_aside: dict[str, int] = field(default_factory=dict)
    pairs_per_question: int | None = None  # preference: the cap the pairs were made under
    label_names: list[str] | None = None
    shards: dict[str, int] = field(default_factory=dict)
    soft_labels: dict[str, int] = field(
        default_factory=dict
    )  # rows with the teacher's logprobs: with/without ids


def split_of(key: str, splits: dict[str, float]) -> str:
    """Deterministic split from a key (seed id or record id): the same key always lands in the same split."""
    x = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64
    acc = 0.0
    names = list(splits)
    for name in names:
        acc += splits[name]
        if x < acc:
            return name
    return names[-1]


def _check_splits(splits: dict[str, float]) -> None:
    if not splits or any(v < 0 for v in splits.values()) or abs(sum(splits.values()) - 1.0) > 1e-6:
        raise ConfigError(f"export.splits must be non-negative shares summing to 1, got {splits}")
    bad = [s for s in splits if not s.replace("_", "").isalnum()]
    if bad:
        raise ConfigError(f"export.splits: split names must be letters, digits or _, got {bad}")


def _out_ready(out: Path, overwrite: bool) -> Path:
    out = out.resolve()
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"--out {out}: {blocker} is a file, not a folder; give another path")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"--out {out} exists and is not empty; pass --overwrite to replace it, or pick another folder"
        )
    return out


def export_run(
    store: Store, run_id: str, out: Path, *, fmt: str = "hf", shape: str = "records",
    splits: dict[str, float] | None = None, split_by: str = "seed", slim: bool = False,
    include_rejected: bool = False, overwrite: bool = False, stage: str | None = None,
    max_shard_mb: float = 256.0, batch_rows: int = 20_000, pairs_per_question: int = PAIRS_PER_QUESTION,
) -> ExportResult:  # fmt: skip
    """Write the curated records of a run (all records with ``include_rejected``) to ``out``.

    The folder appears whole or not at all: everything is written to a temporary sibling first."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if split_by not in SPLIT_BY:
        raise ConfigError(f"export.split_by {split_by!r} is not one of {', '.join(SPLIT_BY)}")
    if max_shard_mb <= 0:
        raise ConfigError(f"--max-shard-mb must be positive, got {max_shard_mb}")
    splits = splits or {"train": 1.0}
    _check_splits(splits)
    if out.resolve().parent.is_dir():
        sweep_stale(out.resolve(), "export")  # first: it may move back an export a killed one set aside
    out = _out_ready(out, overwrite)
    summary = store.run_summary(run_id)
    if shape != "records":  # the recipe's code shapes the records: one message when it cannot be loaded
        from factory import stored_recipe

        stored_recipe.load(
            store, run_id, needs=f"an export as {shape!r} (--as {shape})",
            instead=f"shape them in that session: run.to_dataset({shape!r}); a plain export (no --as, the "
            "records as they are) needs no recipe",
        )  # fmt: skip
    plan = plan_shape(summary["recipe"], shape, stage)
    if plan.group is not None:
        if split_by != "seed":
            raise ConfigError(
                f"--as {shape} keeps each question's pairs in one split; drop --split-by {split_by}"
            )
        if include_rejected:
            raise ConfigError(
                f"--as {shape} already pairs curated with rejected answers; drop --include-rejected"
            )
        if pairs_per_question < 1:
            raise ConfigError(f"--pairs-per-question must be at least 1, got {pairs_per_question}")

    def rows() -> Iterator[tuple[str, dict[str, Any] | None]]:
        it = (
            grouped_rows(store, run_id, plan, slim=slim, cap=pairs_per_question, batch_rows=batch_rows)
            if plan.group is not None
            else shaped_rows(store, run_id, plan, slim=slim, include_rejected=include_rejected,
                             batch_rows=batch_rows)
        )  # fmt: skip
        for seed_id, rec_id, row in it:
            yield split_of(seed_id if split_by == "seed" else rec_id, splits), row

    tmp = temp_beside(out, "export", "--out", folder=True)
    try:
        store.limit_memory(EXPORT_MEMORY)
        if fmt == "jsonl":
            w: _Writer = _JsonlWriter(tmp)
        else:
            w = _ParquetWriter(tmp, plan.label, hf=fmt == "hf", max_bytes=max_shard_mb * 2**20)
        skipped = 0
        for split, row in rows():
            if row is None:
                skipped += 1
            else:
                w.add(split, row)
        files = w.close()
        sizes = {s: w.counts[s] for s in splits if w.counts.get(s)}
        if not sizes:
            aside = f", {sum(plan.set_aside.values())} set aside as untrusted" if plan.set_aside else ""
            raise ConfigError(
                f"run {run_id} has no {'records' if include_rejected else 'curated records'} to export as "
                f"{shape}{f' from stage {plan.stage}' if plan.stage else ''} ({skipped} could not be shown that "
                f"way{aside}); `factory status` shows the funnel"
                + (": a question needs a trusted and a wrong sample to make a pair" if plan.group else "")
            )
        if fmt == "hf":
            assert isinstance(w, _ParquetWriter)
            from factory.report import funnel_svg

            (tmp / FUNNEL_IMAGE).write_text(funnel_svg(store, run_id), "utf-8")
            files.append(tmp / FUNNEL_IMAGE)
            (tmp / "README.md").write_text(
                _card(store, run_id, w, sizes, plan, slim, include_rejected, split_by, skipped), "utf-8"
            )
            files.append(tmp / "README.md")
        user_modes(tmp)  # mkdtemp made it 0700
        _swap_in(tmp, out)
    except OSError as exc:  # the disk filled up, a file-size limit, the folder went away
        raise FactoryError(
            f"cannot write the export to {out.parent}: {exc.strerror or exc}; free space (or fix the folder) and "
            "export again. Nothing was replaced" + (f": {out} is as it was" if out.exists() else "")
        ) from None
    finally:
        store.limit_memory(None)
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(
        out=out, format=fmt, shape=shape, rows=sum(sizes.values()), splits=sizes,
        files=[out / f.relative_to(tmp) for f in files], stage=plan.stage, skipped=skipped,
        label_names=getattr(w, "label_names", None), shards=dict(getattr(w, "shards", {})),
        set_aside=dict(plan.set_aside), pairs_per_question=pairs_per_question if plan.group else None,
        soft_labels=dict(plan.soft_labels),
    )  # fmt: skip


def _swap_in(tmp: Path, out: Path) -> None:
    if out.exists():
        old = tmp.with_name(tmp.name + "-old")  # named like tmp: swept if this process dies here
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# -- writers -------------------------------------------------------------------------------------------
class _Writer:
    counts: dict[str, int]

    def add(self, split: str, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> list[Path]:
        raise NotImplementedError


class _JsonlWriter(_Writer):
    def __init__(self, folder: Path):
        self.folder = folder
        self.counts = {}
        self._files: dict[str, Any] = {}

    def add(self, split: str, row: dict[str, Any]) -> None:
        f = self._files.get(split)
        if f is None:
            f = self._files[split] = open(self.folder / f"{split}.jsonl", "wb")  # noqa: SIM115
        f.write(orjson.dumps(row) + b"\n")
        self.counts[split] = self.counts.get(split, 0) + 1

    def close(self) -> list[Path]:
        for f in self._files.values():
            f.close()
        return [self.folder / f"{s}.jsonl" for s in self._files]


class _ParquetWriter(_Writer):
    """Parquet per split; with ``hf``, shards of at most ``max_bytes`` (Arrow bytes) named
    ``data/{split}-0000i-of-0000n.parquet`` with the Hugging Face features in the schema metadata.

    Rows are shaped once: each chunk goes to a temporary parquet file with the schema its rows imply, and
    the schemas are unified as they come (a column null so far takes the type seen later). ``close`` then
    rewrites the chunks into the final files with Arrow alone: one schema, label names as ClassLabel ids."""

    def __init__(self, folder: Path, label_col: str | None, *, hf: bool, max_bytes: float):
        self.folder = folder
        self.hf = hf
        self.max_bytes = max_bytes
        self.label_col = label_col
        self.counts: dict[str, int] = {}
        self.label_names: list[str] | None = None
        self.features: Any = None
        self.schema: pa.Schema | None = None
        self.split_bytes: dict[str, int] = {}
        self.shards: dict[str, int] = {}
        self.files: dict[str, list[Path]] = {}
        self._labels: set[str] = set()
        self._buf: dict[str, list[dict[str, Any]]] = {}
        self._buf_bytes: dict[str, int] = {}
        self._chunks: dict[str, list[Path]] = {}
        self._chunk_dir = folder / ".chunks"
        self._chunk_dir.mkdir()

    def add(self, split: str, row: dict[str, Any]) -> None:
        buf = self._buf.setdefault(split, [])
        buf.append(row)
        self.counts[split] = self.counts.get(split, 0) + 1
        if self.hf:  # a chunk is at most a quarter shard, so shards stay near their bound
            self._buf_bytes[split] = self._buf_bytes.get(split, 0) + len(orjson.dumps(row))
        if len(buf) >= ROW_GROUP or self._buf_bytes.get(split, 0) * 4 >= self.max_bytes:
            self._spill(split)

    def _spill(self, split: str) -> None:
        rows, self._buf[split] = self._buf[split], []
        self._buf_bytes[split] = 0
        if not rows:
            return
        table = pa.Table.from_pylist(rows)
        if self.label_col is not None:
            self._labels.update(str(x) for x in table.column(self.label_col).unique().to_pylist())
        self.schema = (
            table.schema if self.schema is None
            else pa.unify_schemas([self.schema, table.schema], promote_options="permissive")
        )  # fmt: skip
        chunks = self._chunks.setdefault(split, [])
        path = self._chunk_dir / f"{split}-{len(chunks):06d}.parquet"
        pq.write_table(table, path, compression="none")
        chunks.append(path)

    def _final_schema(self, schema: pa.Schema) -> pa.Schema:
        if self.label_col:
            self.label_names = sorted(self._labels)
            schema = schema.set(schema.get_field_index(self.label_col), pa.field(self.label_col, pa.int64()))
        if not self.hf:
            return schema
        import datasets

        feats = datasets.Features.from_arrow_schema(schema)
        if self.label_col:
            feats[self.label_col] = datasets.ClassLabel(names=self.label_names)
        self.features = feats
        return feats.arrow_schema

    def _conform(self, table: pa.Table, raw: pa.Schema, final: pa.Schema) -> pa.Table:
        """A chunk in the final schema: missing columns as nulls, the label as its id."""
        cols = []
        for f in raw:
            col = table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
            if f.name == self.label_col:
                col = pc.index_in(col, value_set=pa.array(self.label_names, pa.string()))
            cols.append(col)
        t = pa.Table.from_arrays(cols, schema=raw.set(raw.get_field_index(self.label_col), pa.field(
            self.label_col, pa.int32())) if self.label_col else raw)  # fmt: skip
        try:
            return t.cast(final)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # struct fields that differ between chunks
            return pa.Table.from_pylist(t.to_pylist(), schema=final)

    def close(self) -> list[Path]:
        for split in list(self._buf):
            self._spill(split)
        if self.schema is None:
            return []
        raw = self.schema
        final = self._final_schema(raw)
        out: list[Path] = []
        for split, chunks in self._chunks.items():
            paths = self._write_split(split, chunks, raw, final)
            self.shards[split] = len(paths)
            self.split_bytes[split] = 0
            for i, p in enumerate(paths):
                name = f"{split}-{i:05d}-of-{len(paths):05d}.parquet" if self.hf else f"{split}.parquet"
                done = p.with_name(name)
                os.replace(p, done)
                self.split_bytes[split] += done.stat().st_size
                self.files.setdefault(split, []).append(done)
                out.append(done)
        shutil.rmtree(self._chunk_dir)
        return out

    def _write_split(self, split: str, chunks: list[Path], raw: pa.Schema, final: pa.Schema) -> list[Path]:
        folder = self.folder / "data" if self.hf else self.folder
        folder.mkdir(exist_ok=True)
        paths: list[Path] = []
        writer: pq.ParquetWriter | None = None
        size = 0.0
        for chunk in chunks:
            table = self._conform(pq.read_table(chunk), raw, final)
            chunk.unlink()
            if writer is not None and self.hf and size + table.nbytes > self.max_bytes:
                writer.close()
                writer = None
            if writer is None:
                paths.append(folder / f".{split}-{len(paths):05d}.part")
                writer = pq.ParquetWriter(paths[-1], final)
                size = 0.0
            writer.write_table(table)
            size += table.nbytes
        if writer is not None:
            writer.close()
        return paths


# -- card ----------------------------------------------------------------------------------------------
def _card(store: Store, run_id: str, w: _ParquetWriter, sizes: dict[str, int], plan: Plan, slim: bool,
          include_rejected: bool, split_by: str, skipped: int) -> str:  # fmt: skip
    import datasets

    from factory.card import ExportFacts, render_dataset_card

    split_dict = datasets.SplitDict()
    for s, n in sizes.items():
        split_dict.add(datasets.SplitInfo(name=s, num_bytes=w.split_bytes[s], num_examples=n))
    info = datasets.DatasetInfo(
        features=w.features, splits=split_dict, dataset_size=sum(w.split_bytes.values())
    )
    examples = _examples(w, next(iter(sizes)))
    facts = ExportFacts(
        split_sizes=sizes, split_bytes={s: w.split_bytes[s] for s in sizes},
        data_files={s: f"data/{s}-*.parquet" for s in sizes}, dataset_info=info._to_yaml_dict(),
        shape=plan.shape, label_names=w.label_names, examples=examples, slim=slim,
        include_rejected=include_rejected, stage=plan.stage, funnel_image=FUNNEL_IMAGE, split_by=split_by,
        set_aside=dict(plan.set_aside), skipped=skipped, soft_labels=dict(plan.soft_labels),
    )  # fmt: skip
    return render_dataset_card(store, run_id, facts)


def _examples(w: _ParquetWriter, split: str, n: int = 3) -> list[dict[str, Any]]:
    """The first rows of a split as written (label names, not ids)."""
    rows = pq.ParquetFile(w.files[split][0]).read_row_group(0).slice(0, n).to_pylist()
    if w.label_col and w.label_names:
        for r in rows:
            r[w.label_col] = w.label_names[r[w.label_col]]
    return rows


# -- from a run's config -------------------------------------------------------------------------------
def is_export_of(folder: Path, run_id: str) -> bool:
    """Whether ``folder`` holds an earlier HF export of this run (its card names the run id)."""
    card = folder / "README.md"
    return card.is_file() and run_id in card.read_text("utf-8", errors="replace")


def export_configured(
    store: Store, run_id: str, out: str | Path | None = None, *, overwrite: bool = False, **given: Any
) -> ExportResult:
    """``export_run`` with the run config's ``export:`` settings as defaults; arguments given (not None)
    win. ``out`` falls back to ``export.out``, then ``out/<run name>``."""
    cfg = store.run_config(run_id).get("export") or {}
    keys = {"fmt": "format", "shape": "shape", "splits": "splits", "split_by": "split_by",
            "stage": "stage", "max_shard_mb": "max_shard_mb",
            "pairs_per_question": "pairs_per_question"}  # fmt: skip
    kwargs = {k: cfg[c] for k, c in keys.items() if cfg.get(c) is not None}
    kwargs.update({k: v for k, v in given.items() if v is not None})
    target = Path(out or cfg.get("out") or Path("out") / store.run_summary(run_id)["name"])
    return export_run(store, run_id, target, overwrite=overwrite, **kwargs)
