"""Reading the results files for benchmarks/figures.py: tables, cells, dates and load averages, number formats."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _results  # noqa: E402

RUN_MD, PEERS_MD = HERE / "results.md", HERE / "peers_results.md"


def num(cell: str) -> float:
    """A table cell's leading number ("1,086", "0.25 s", "8720 records/s")."""
    m = re.match(r"-?[\d,]*\.?\d+", cell.strip())
    if not m:
        raise ValueError(f"no number in {cell!r}")
    return float(m.group().replace(",", ""))


def table(path: Path, prefix: str) -> list[dict[str, str]]:
    tables = _results.md_tables(path)
    return next(rows for head, rows in tables.items() if head.startswith(prefix))


def row(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    return next(r for r in rows if all(r[k].strip("*") == v for k, v in match.items()))


def missed(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    at = next((i for i, x in enumerate(lines) if x.startswith("Missed targets")), len(lines))
    return [x[2:] for x in lines[at + 1 :] if x.startswith("- ")]


def header(path: Path) -> str:
    """The results file's first line: when, on what, under what load, with which versions."""
    return path.read_text(encoding="utf-8").splitlines()[0]


def f0(x: float) -> str:
    return f"{x:,.0f}"


def sig(x: float) -> str:
    """Two significant figures for a ratio: 0.78, 2.2, 47."""
    return f"{x:.2f}" if x < 1 else f"{x:.1f}" if x < 10 else f"{x:.0f}"


def when(d: dict[str, Any]) -> str:
    return f"{d['date'][:10]}, {d['cpus']} CPUs, load {d['load_start']:.1f} → {d['load_end']:.1f}"


LEVELS = ("64", "256", "1024")


def run_steady(client: str, col: str = "req/s, steady") -> list[float]:
    rows = table(RUN_MD, "Throughput")
    return [num(row(rows, **{"in flight": c, "client": client})[col]) for c in LEVELS]


def peers_steady(client: str, col: str = "req/s, steady") -> list[float]:
    rows = table(PEERS_MD, "Throughput, 200 ms")
    return [num(row(rows, **{"in flight": c, "client": client})[col]) for c in LEVELS]


def slash(xs: list[float], fmt: Callable[[float], str] = f0, unit: str = "") -> str:
    return " / ".join(fmt(x) for x in xs) + unit


def ratios(a: list[float], b: list[float], unit: str = "×") -> str:
    """a ÷ b at each level: "2.2 / 9.7 / 47×", or without a unit "1.00 / 0.90 / 2.95"."""
    fmt = sig if unit else (lambda x: f"{x:.2f}")
    return " / ".join(fmt(x / y) for x, y in zip(a, b, strict=True)) + unit


def run_date() -> str:
    m = re.search(r"\d{4}-\d\d-\d\d", header(RUN_MD))
    return m.group() if m else "undated"


def run_load() -> str:
    m = re.search(r"load average ([\d.]+) at the start, ([\d.]+) at the end", header(RUN_MD))
    return f"load {m.group(1)} → {m.group(2)}" if m else "load not recorded"


def peers_load(prefix: str) -> str:
    """'load 1.7 → 3.0' (at the start → at the end) from the sentence under a peers_results.md heading."""
    text = _results.md_section(
        PEERS_MD, next(h for h in _results.md_tables(PEERS_MD) if h.startswith(prefix))
    )
    m = re.search(r"Load average ([\d.]+) at the start, ([\d.]+) at the end", text)
    return f"load {m.group(1)} → {m.group(2)}" if m else "load not recorded"


def peers_date(prefix: str = "") -> str:
    if prefix:
        head = next(h for h in _results.md_tables(PEERS_MD) if h.startswith(prefix))
        m = re.search(r"Re-measured (\d{4}-\d\d-\d\d \d\d:\d\d)", _results.md_section(PEERS_MD, head))
        if m:
            return m.group(1)
    m = re.search(r"Measured (\d{4}-\d\d-\d\d \d\d:\d\d)", header(PEERS_MD))
    return m.group(1) if m else "undated"
