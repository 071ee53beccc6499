"""Plain-text output the commands share: the filter funnel in one line, and aligned columns."""

from __future__ import annotations

from typing import Any


def print_funnel(f: dict[str, Any]) -> None:
    print(f"funnel: generated {f['generated']} → parsed {f['parsed']}", end="")
    for step in f["filters"]:
        top = "; ".join(f"{r['reason']} ×{r['records']}" for r in step["top_reasons"])
        print(f" → {step['filter']} {step['kept']}/{step['in']}" + (f" ({top})" if top else ""), end="")
    print(f" → curated {f['curated']}")


def print_rows(head: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    for r in [head, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False)).rstrip())
