"""Export the curated view of a run: JSONL, Parquet, or a Hugging Face dataset folder with its card.

The run is read from the store in Arrow batches and written as it is read, so memory stays bounded by the
batch size whatever the run's size. Parquet needs one schema before the first row is written: a first
pass over the same rows settles it (and the label names of a ClassLabel column); the second pass writes.

Rows go to splits by a hash of the seed id (default: every record of a seed lands in one split, so no
question sits in train and test at once) or of the record id; the same record always lands in the same
split. Shapes (``--as``) are declared by each recipe (``Recipe.shapes``); ``messages`` is derived from
``prompt_completion``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from factory.errors import ConfigError
from factory.store import Store

FORMATS = ("hf", "parquet", "jsonl")
SHAPES = ("records", "messages", "prompt_completion", "text_label", "triples", "step_by_step")
SPLIT_BY = ("seed", "record")
LINEAGE = ("record_id", "seed_id", "stage", "sample_index", "teacher", "template_version", "request_keys")
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
    label_names: list[str] | None = None
    shards: dict[str, int] = field(default_factory=dict)


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


@dataclass(slots=True)
class _Plan:
    shape: str
    stage: str | None  # None: every stage
    row: Callable[[dict[str, Any]], dict[str, Any] | None]
    label: str | None


def _plan(recipe_slug: str, shape: str, stage: str | None) -> _Plan:
    from recipes import get_recipe

    recipe = get_recipe(recipe_slug)
    if shape not in SHAPES:
        raise ConfigError(f"--as {shape!r} is not one of {', '.join(SHAPES)}")
    if stage is not None and stage != "all" and stage not in recipe.stages:
        raise ConfigError(
            f"--stage {stage!r}: the {recipe_slug} recipe's stages are {', '.join(recipe.stages)} (or all)"
        )
    if shape == "records":
        chosen = None if stage == "all" else (stage or recipe.stages[-1])
        return _Plan(shape, chosen, lambda p: p, None)
    base = "prompt_completion" if shape == "messages" else shape
    sh = recipe.shapes.get(base)
    if sh is None:
        offered = ["records", *recipe.shapes, *(["messages"] if "prompt_completion" in recipe.shapes else [])]
        raise ConfigError(
            f"--as {shape}: the {recipe_slug} recipe's records do not come in that shape; "
            f"it offers {', '.join(offered)}"
        )
    if stage is not None and stage != (sh.stage or recipe.stages[-1]):
        raise ConfigError(
            f"--as {shape} is built from the {sh.stage or recipe.stages[-1]!r} stage; drop --stage"
        )
    row = sh.row
    if shape == "messages":

        def row(p: dict[str, Any], pc: Callable[..., Any] = sh.row) -> dict[str, Any] | None:
            r = pc(p)
            if r is None:
                return None
            return {"messages": [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["completion"]}]}  # fmt: skip

    return _Plan(shape, sh.stage or recipe.stages[-1], row, sh.label)


def _shaped(
    store: Store, run_id: str, plan: _Plan, *, slim: bool, include_rejected: bool, batch_rows: int
) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """(seed id, record id, exported row or None when the shape cannot show the record), in store order."""
    reader = store.curated_reader(run_id, stage=plan.stage, include_rejected=include_rejected,
                                  batch_rows=batch_rows)  # fmt: skip
    for batch in reader:
        for r in batch.to_pylist():
            out = plan.row(orjson.loads(r["payload"]))
            if out is not None:
                out = dict(out)
                if not slim:
                    out.update(
                        record_id=r["id"], seed_id=r["seed_id"], stage=r["stage"], sample_index=r["sample_index"],
                        teacher=r["teacher"], template_version=r["template_version"], request_keys=r["request_keys"],
                    )  # fmt: skip
                if include_rejected:
                    out["dropped_by"] = r["dropped_by"]
            yield r["seed_id"], r["id"], out


def _out_ready(out: Path, overwrite: bool) -> Path:
    out = out.resolve()
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
    max_shard_mb: float = 256.0, batch_rows: int = 20_000,
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
    out = _out_ready(out, overwrite)
    summary = store.run_summary(run_id)
    plan = _plan(summary["recipe"], shape, stage)

    def rows() -> Iterator[tuple[str, dict[str, Any] | None]]:
        for seed_id, rec_id, row in _shaped(store, run_id, plan, slim=slim, include_rejected=include_rejected,
                                            batch_rows=batch_rows):  # fmt: skip
            yield split_of(seed_id if split_by == "seed" else rec_id, splits), row

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt == "jsonl":
            w: _Writer = _JsonlWriter(tmp)
        else:
            schema, labels = _settle_schema((r for _, r in rows()), plan.label)
            w = _ParquetWriter(
                tmp, schema, labels, plan.label, hf=fmt == "hf", max_bytes=max_shard_mb * 2**20
            )
        skipped = 0
        for split, row in rows():
            if row is None:
                skipped += 1
            else:
                w.add(split, row)
        files = w.close()
        sizes = {s: w.counts[s] for s in splits if w.counts.get(s)}
        if not sizes:
            raise ConfigError(
                f"run {run_id} has no {'records' if include_rejected else 'curated records'} to export as "
                f"{shape}{f' from stage {plan.stage}' if plan.stage else ''} ({skipped} could not be shown that "
                "way); `factory status` shows the funnel"
            )
        if fmt == "hf":
            assert isinstance(w, _ParquetWriter)
            (tmp / "README.md").write_text(
                _card(store, run_id, w, sizes, plan, slim, include_rejected), "utf-8"
            )
            files.append(tmp / "README.md")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(
        out=out, format=fmt, shape=shape, rows=sum(sizes.values()), splits=sizes,
        files=[out / f.relative_to(tmp) for f in files], stage=plan.stage, skipped=skipped,
        label_names=getattr(w, "label_names", None), shards=dict(getattr(w, "shards", {})),
    )  # fmt: skip


def _swap_in(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# -- schema --------------------------------------------------------------------------------------------
def _settle_schema(
    rows: Iterator[dict[str, Any] | None], label_col: str | None
) -> tuple[pa.Schema | None, set[str]]:
    """One Arrow schema for every row (nulls promoted to the type seen elsewhere) and the label values."""
    schema: pa.Schema | None = None
    chunk: list[dict[str, Any]] = []
    labels: set[str] = set()

    def fold() -> None:
        nonlocal schema
        t = pa.Table.from_pylist(chunk)
        schema = (
            t.schema if schema is None else pa.unify_schemas([schema, t.schema], promote_options="permissive")
        )
        chunk.clear()

    for r in rows:
        if r is None:
            continue
        chunk.append(r)
        if label_col is not None:
            labels.add(str(r[label_col]))
        if len(chunk) >= ROW_GROUP:
            fold()
    if chunk:
        fold()
    return schema, labels


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
    ``data/{split}-0000i-of-0000n.parquet``, and the Hugging Face features in the schema metadata."""

    def __init__(self, folder: Path, schema: pa.Schema | None, labels: set[str], label_col: str | None,
                 *, hf: bool, max_bytes: float):  # fmt: skip
        self.folder = folder
        self.hf = hf
        self.max_bytes = max_bytes
        self.counts: dict[str, int] = {}
        self.label_col = label_col
        self.label_names = sorted(labels) if label_col else None
        self._label_index = {n: i for i, n in enumerate(self.label_names or [])}
        self.features: Any = None
        self.schema = self._final_schema(schema or pa.schema([]))
        self._buf: dict[str, list[dict[str, Any]]] = {}
        self._buf_bytes: dict[str, int] = {}
        self._open: dict[str, tuple[pq.ParquetWriter, Path]] = {}
        self._shard_bytes: dict[str, float] = {}
        self._paths: dict[str, list[Path]] = {}
        self.split_bytes: dict[str, int] = {}
        self.shards: dict[str, int] = {}

    def _final_schema(self, schema: pa.Schema) -> pa.Schema:
        if self.label_col and self.label_col in schema.names:
            schema = schema.set(schema.get_field_index(self.label_col), pa.field(self.label_col, pa.int64()))
        if not self.hf:
            return schema
        import datasets

        feats = datasets.Features.from_arrow_schema(schema)
        if self.label_col and self.label_col in feats:
            feats[self.label_col] = datasets.ClassLabel(names=self.label_names)
        self.features = feats
        return feats.arrow_schema

    def add(self, split: str, row: dict[str, Any]) -> None:
        if self.label_col is not None:
            row[self.label_col] = self._label_index[row[self.label_col]]
        buf = self._buf.setdefault(split, [])
        buf.append(row)
        self.counts[split] = self.counts.get(split, 0) + 1
        if self.hf:  # a row group is at most a quarter shard, so shards stay near their bound
            self._buf_bytes[split] = self._buf_bytes.get(split, 0) + len(orjson.dumps(row))
        if len(buf) >= ROW_GROUP or self._buf_bytes.get(split, 0) * 4 >= self.max_bytes:
            self._write(split)

    def _write(self, split: str) -> None:
        rows, self._buf[split] = self._buf[split], []
        self._buf_bytes[split] = 0
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=self.schema)
        cur = self._open.get(split)
        if cur is not None and self.hf and self._shard_bytes[split] + table.nbytes > self.max_bytes:
            cur[0].close()
            cur = None
        if cur is None:
            n = len(self._paths.setdefault(split, []))
            path = (
                self.folder
                / ("data" if self.hf else "")
                / (f"{split}-{n:05d}.parquet.part" if self.hf else f"{split}.parquet")
            )
            path.parent.mkdir(exist_ok=True)
            cur = self._open[split] = (pq.ParquetWriter(path, self.schema), path)
            self._paths[split].append(path)
            self._shard_bytes[split] = 0
        cur[0].write_table(table)
        self._shard_bytes[split] += table.nbytes

    def close(self) -> list[Path]:
        for split in list(self._buf):
            self._write(split)
        for w, _ in self._open.values():
            w.close()
        files: list[Path] = []
        for split, paths in self._paths.items():
            total = len(paths)
            self.shards[split] = total
            self.split_bytes[split] = 0
            for i, p in enumerate(paths):
                final = p.with_name(f"{split}-{i:05d}-of-{total:05d}.parquet") if self.hf else p
                if final != p:
                    os.replace(p, final)
                self.split_bytes[split] += final.stat().st_size
                files.append(final)
        return files


# -- card ----------------------------------------------------------------------------------------------
def _card(store: Store, run_id: str, w: _ParquetWriter, sizes: dict[str, int], plan: _Plan, slim: bool,
          include_rejected: bool) -> str:  # fmt: skip
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
        include_rejected=include_rejected, stage=plan.stage,
    )  # fmt: skip
    return render_dataset_card(store, run_id, facts)


def _examples(w: _ParquetWriter, split: str, n: int = 3) -> list[dict[str, Any]]:
    """The first rows of a split as written (label names, not indices)."""
    path = w._paths[split][0]
    final = path.with_name(f"{split}-00000-of-{w.shards[split]:05d}.parquet")
    rows = pq.ParquetFile(final).read_row_group(0).slice(0, n).to_pylist()
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
            "stage": "stage", "max_shard_mb": "max_shard_mb"}  # fmt: skip
    kwargs = {k: cfg[c] for k, c in keys.items() if cfg.get(c) is not None}
    kwargs.update({k: v for k, v in given.items() if v is not None})
    target = Path(out or cfg.get("out") or Path("out") / store.run_summary(run_id)["name"])
    return export_run(store, run_id, target, overwrite=overwrite, **kwargs)
