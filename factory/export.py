"""Export the curated view of a run: JSONL, Parquet, or a Hugging Face dataset folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from factory import __version__
from factory.errors import ConfigError
from factory.store import Store

FORMATS = ("hf", "parquet", "jsonl")
LINEAGE = ("record_id", "seed_id", "stage", "sample_index", "teacher", "template_version", "request_keys")


@dataclass(slots=True)
class ExportResult:
    out: Path
    format: str
    rows: int
    splits: dict[str, int]
    files: list[Path]


def split_of(record_id: str, splits: dict[str, float]) -> str:
    """Deterministic split from the record id: the same record always lands in the same split."""
    x = int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "big") / 2**64
    acc = 0.0
    names = list(splits)
    for name in names:
        acc += splits[name]
        if x < acc:
            return name
    return names[-1]


def _rows(table: pa.Table, *, slim: bool, include_rejected: bool) -> list[dict[str, Any]]:
    out = []
    for r in table.to_pylist():
        row: dict[str, Any] = dict(orjson.loads(r["payload"]))
        if not slim:
            row.update(
                record_id=r["id"], seed_id=r["seed_id"], stage=r["stage"], sample_index=r["sample_index"],
                teacher=r["teacher"], template_version=r["template_version"], request_keys=r["request_keys"],
            )  # fmt: skip
        if include_rejected:
            row["dropped_by"] = r["dropped_by"]
        out.append(row)
    return out


def _check_splits(splits: dict[str, float]) -> None:
    if not splits or any(v < 0 for v in splits.values()) or abs(sum(splits.values()) - 1.0) > 1e-6:
        raise ConfigError(f"export.splits must be non-negative shares summing to 1, got {splits}")


def export_run(
    store: Store, run_id: str, out: Path, *, fmt: str = "hf", splits: dict[str, float] | None = None,
    slim: bool = False, include_rejected: bool = False,
) -> ExportResult:  # fmt: skip
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    splits = splits or {"train": 1.0}
    _check_splits(splits)
    table = store.curated_table(run_id, include_rejected=include_rejected)
    rows = _rows(table, slim=slim, include_rejected=include_rejected)
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in splits}
    for src, row in zip(table.column("id").to_pylist(), rows, strict=True):
        by_split[split_of(src, splits)].append(row)
    by_split = {k: v for k, v in by_split.items() if v}
    # Write into a temporary sibling folder, then swap it in: a failed export never leaves half a folder.
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    files: list[Path] = []
    try:
        for split, srows in by_split.items():
            t = pa.Table.from_pylist(srows)
            if fmt == "jsonl":
                path = tmp / f"{split}.jsonl"
                with open(path, "wb") as f:
                    for r in srows:
                        f.write(orjson.dumps(r) + b"\n")
            elif fmt == "parquet":
                path = tmp / f"{split}.parquet"
                pq.write_table(t, path)
            else:
                (tmp / "data").mkdir(exist_ok=True)
                path = tmp / "data" / f"{split}-00000-of-00001.parquet"
                pq.write_table(t, path)
            files.append(out / path.relative_to(tmp))
        if fmt == "hf":
            (tmp / "README.md").write_text(
                dataset_card(store, run_id, {k: len(v) for k, v in by_split.items()})
            )
            files.append(out / "README.md")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(
        out, fmt, sum(len(v) for v in by_split.values()), {k: len(v) for k, v in by_split.items()}, files
    )


def dataset_card(store: Store, run_id: str, split_sizes: dict[str, int]) -> str:
    """A short card rendered only from what the store knows about the run."""
    s = store.run_summary(run_id)
    cfg = store.run_config(run_id)
    n = sum(split_sizes.values())
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "100K<n<1M"
    yaml_lines = ["---"]
    if cfg.get("license"):
        yaml_lines.append(f"license: {cfg['license']}")
    yaml_lines += [
        "tags:", "- synthetic", f"- {s['recipe']}", "size_categories:", f"- {size}",
        "configs:", "- config_name: default", "  data_files:",
    ]  # fmt: skip
    for split in split_sizes:
        yaml_lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    yaml_lines.append("---")
    drops = store.verdict_counts(run_id)
    body = [
        f"# {s['name']}",
        "",
        f"Synthetic data made by the `{s['recipe']}` recipe with teacher `{s['teacher']}`.",
        "Check the teacher's terms of use before training on or publishing this data.",
        "",
        "| | |", "|---|---|",
        f"| run | `{run_id}` |",
        f"| records generated | {s['records_total']} |",
        f"| records curated | {n} |",
        f"| splits | {', '.join(f'{k}: {v}' for k, v in split_sizes.items())} |",
        f"| teacher requests (paid) | {s['requests_sent']} |",
        f"| output tokens | {s['completion_tokens']} |",
        f"| config hash | `{s['config_hash']}` |",
        f"| factory version | {__version__} |",
        "",
    ]  # fmt: skip
    if drops:
        body += ["## Dropped records", "", "| filter | reason | records |", "|---|---|---|"]
        body += [f"| {f} | {r} | {c} |" for f, r, c in drops[:10]]
        body.append("")
    body += ["## Reproduce", "", "```", "factory run CONFIG.yaml", "```", "", "with this config:", "", "```json",
             orjson.dumps(cfg, option=orjson.OPT_INDENT_2).decode(), "```", ""]  # fmt: skip
    return "\n".join(yaml_lines + body)
