"""Results files: what a benchmark measured, with when, under what load and with which versions.

A benchmark script calls `context()` when it starts, and `save(name, ctx, figures)` when it is done: that
writes `benchmarks/results/<name>.json` (the figures, the date, the load average at the start and the end,
the CPU count, Python's and the packages' versions). `load(name)` reads one back. The older results of
`run.py` and `peers.py` are markdown (`results.md`, `peers_results.md`); `md_tables` reads their tables.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def versions(dists: list[str]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for d in ["distill-factory", *dists]:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "not installed"
    return out


def context(dists: list[str]) -> dict[str, Any]:
    """When and where a benchmark starts: call before measuring (the start's load average)."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "versions": versions(dists),
    }


def save(name: str, ctx: dict[str, Any], figures: dict[str, Any], folder: Path | None = None) -> Path:
    """Write results/<name>.json (or ``folder``/<name>.json): the context, the load average now, the figures.
    RESULTS is read at the call, so a test that points it elsewhere writes nothing into the project."""
    folder = RESULTS if folder is None else folder
    data = {**ctx, "load_end": round(os.getloadavg()[0], 2), "figures": figures}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def md_tables(path: Path) -> dict[str, list[dict[str, str]]]:
    """The tables of a results markdown file, by the heading above each: a list of rows, each a dict
    from the column's header to the cell's text."""
    out: dict[str, list[dict[str, str]]] = {}
    heading, header = "", None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
        elif line.startswith("|") and header is None:
            header = [c.strip() for c in line.strip("|").split("|")]
            out[heading] = []
        elif line.startswith("|") and header is not None and not re.fullmatch(r"\|(-+\|)+", line):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out[heading].append(dict(zip(header, cells, strict=True)))
        elif not line.startswith("|"):
            header = None
    return out


def md_section(path: Path, heading: str) -> str:
    """A section of a results markdown file, verbatim: the text after `heading`'s line up to the next
    heading (or a line starting `Missed targets`), without blank lines at either end."""
    lines = path.read_text(encoding="utf-8").splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("#") and x.lstrip("#").strip() == heading)
    end = next(
        (
            i
            for i in range(at + 1, len(lines))
            if lines[i].startswith(("#", "Missed targets", "Whole benchmark"))
        ),
        len(lines),
    )
    return "\n".join(lines[at + 1 : end]).strip("\n")
