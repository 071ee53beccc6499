"""Charts as SVG text, written by hand: no plotting library, no script, no font to load, and the same data
always gives the same bytes (the funnel image of a dataset card must not change between re-exports).

Every string that comes from data goes through ``esc``; numbers are formatted with fixed precision.
Colours are the Okabe-Ito palette, which stays distinct for the common kinds of colour blindness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

KEPT = "#0072B2"
DROPPED = "#D55E00"
NEUTRAL = "#9a9a9a"
INK = "#222222"
MUTED = "#666666"
GRID = "#e4e4e4"
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif\""


def esc(text: Any) -> str:
    return escape(str(text), quote=True)


def cut(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def num(x: float) -> str:
    """A coordinate: two decimals, no trailing zeros, never '-0'."""
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def count(n: float) -> str:
    return f"{int(n):,}"


def _svg(width: int, height: int, body: list[str], title: str, chart_id: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{esc(chart_id)}" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" {FONT} font-size="12">'
        f"<title>{esc(title)}</title>"
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>' + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, s: str, *, anchor: str = "start", size: int = 12, fill: str = INK,
          weight: str = "normal") -> str:  # fmt: skip
    w = f' font-weight="{weight}"' if weight != "normal" else ""
    return (
        f'<text x="{num(x)}" y="{num(y)}" text-anchor="{anchor}" font-size="{size}" fill="{fill}"{w}>'
        f"{esc(s)}</text>"
    )


def _rect(x: float, y: float, w: float, h: float, fill: str, tip: str | None = None) -> str:
    t = f"<title>{esc(tip)}</title>" if tip else ""
    return (
        f'<rect x="{num(x)}" y="{num(y)}" width="{num(max(w, 0))}" height="{num(h)}" fill="{fill}">{t}</rect>'
    )


def _legend(x: float, y: float, items: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    for name, colour in items:
        out.append(_rect(x, y - 9, 10, 10, colour))
        out.append(_text(x + 14, y, name, size=11, fill=MUTED))
        x += 24 + 7 * len(name)
    return out


def nice_ticks(hi: float, n: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``hi``."""
    if hi <= 0:
        return [0.0, 1.0]
    raw = hi / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(math.ceil(hi / step) + 1)]


# ---- funnel -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    kept: int
    dropped: int = 0
    reasons: tuple[tuple[str, int], ...] = ()  # (reason, records), most first


def funnel(steps: Sequence[Step], *, title: str = "Where the records went", chart_id: str = "funnel") -> str:
    """One row per step: what it kept (blue) and dropped (orange) on a common scale, then its top reasons."""
    width, left, right = 880, 170, 250
    row, top = 50, 34
    height = top + row * len(steps) + 16
    full = max([s.kept + s.dropped for s in steps] + [1])
    span = width - left - right
    body = [_text(12, 20, title, size=14, weight="600"),
            *_legend(width - right + 10, 20, [("kept", KEPT), ("dropped", DROPPED)])]  # fmt: skip
    for i, s in enumerate(steps):
        y = top + i * row
        wk, wd = span * s.kept / full, span * s.dropped / full
        body.append(_text(left - 10, y + 15, cut(s.name, 24), anchor="end", weight="600"))
        body.append(_rect(left, y + 2, wk, 18, KEPT, f"{s.name}: {s.kept:,} kept"))
        if s.dropped:
            body.append(_rect(left + wk, y + 2, wd, 18, DROPPED, f"{s.name}: {s.dropped:,} dropped"))
        label = f"{s.kept:,}" + (f" kept of {s.kept + s.dropped:,} (−{s.dropped:,})" if s.dropped else "")
        body.append(_text(left + wk + wd + 6, y + 15, label, size=11, fill=MUTED))
        if s.reasons:
            why = "; ".join(f"{r or '(no reason)'} ×{n:,}" for r, n in s.reasons)
            body.append(
                f'<text x="{left}" y="{num(y + 36)}" font-size="11" fill="{DROPPED}">{esc(cut(why, 120))}'
                f"<title>{esc(why)}</title></text>"
            )
    return _svg(width, height, body, title, chart_id)


# ---- histograms ---------------------------------------------------------------------------------------


def histogram(
    edges: Sequence[float], kept: Sequence[int], dropped: Sequence[int], *, title: str, x_label: str,
    chart_id: str, threshold: float | None = None, threshold_label: str = "", tick_labels: Sequence[str] | None = None,
) -> str:  # fmt: skip
    """Stacked bars (kept below, dropped above) over ``edges``; a dashed line at ``threshold``."""
    width, height = 560, 300
    left, right, top, bottom = 56, 16, 40, 50
    pw, ph = width - left - right, height - top - bottom
    lo, hi = edges[0], edges[-1]
    totals = [k + d for k, d in zip(kept, dropped, strict=True)]
    ticks = nice_ticks(max([*totals, 1]))
    ymax = ticks[-1]

    def xs(v: float) -> float:
        return left + pw * (v - lo) / (hi - lo if hi > lo else 1)

    def ys(v: float) -> float:
        return top + ph - ph * v / ymax

    body = [_text(12, 20, title, size=14, weight="600"),
            *_legend(width - 150, 20, [("kept", KEPT), ("dropped", DROPPED)])]  # fmt: skip
    for t in ticks:
        body.append(
            f'<line x1="{left}" x2="{width - right}" y1="{num(ys(t))}" y2="{num(ys(t))}" stroke="{GRID}"/>'
        )
        body.append(_text(left - 6, ys(t) + 4, count(t), anchor="end", size=10, fill=MUTED))
    for i in range(len(kept)):
        x0, x1 = xs(edges[i]), xs(edges[i + 1])
        w = max(x1 - x0 - 1, 1)
        tip = f"{edges[i]:g} to {edges[i + 1]:g}: {kept[i]:,} kept, {dropped[i]:,} dropped"
        if kept[i]:
            body.append(_rect(x0 + 0.5, ys(kept[i]), w, ys(0) - ys(kept[i]), KEPT, tip))
        if dropped[i]:
            body.append(_rect(x0 + 0.5, ys(totals[i]), w, ys(kept[i]) - ys(totals[i]), DROPPED, tip))
    body.append(
        f'<line x1="{left}" x2="{width - right}" y1="{num(ys(0))}" y2="{num(ys(0))}" stroke="{MUTED}"/>'
    )
    if tick_labels is not None:
        for i, lab in enumerate(tick_labels):
            body.append(_text((xs(edges[i]) + xs(edges[i + 1])) / 2, ys(0) + 16, lab, anchor="middle", size=10,
                              fill=MUTED))  # fmt: skip
    else:
        for v in nice_edges(lo, hi):
            body.append(_text(xs(v), ys(0) + 16, f"{v:g}", anchor="middle", size=10, fill=MUTED))
    body.append(_text(left + pw / 2, height - 12, x_label, anchor="middle", size=11, fill=MUTED))
    if threshold is not None and lo <= threshold <= hi:
        x = xs(threshold)
        body.append(f'<line class="threshold" x1="{num(x)}" x2="{num(x)}" y1="{top - 6}" y2="{num(ys(0))}" '
                    f'stroke="{INK}" stroke-width="1.5" stroke-dasharray="5 3"/>')  # fmt: skip
        anchor = "start" if x < left + pw * 0.7 else "end"
        body.append(
            _text(x + (4 if anchor == "start" else -4), top + 4, threshold_label, anchor=anchor, size=11)
        )
    return _svg(width, height, body, title, chart_id)


def nice_edges(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round values between lo and hi for an x axis."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


# ---- label balance ------------------------------------------------------------------------------------


def balance(rows: Sequence[tuple[str, int, int]], *, title: str, chart_id: str) -> str:
    """Per label: its share of all records (grey) and of the curated ones (blue), with the counts."""
    width, left = 720, 170
    row, top = 40, 40
    height = top + row * len(rows) + 10
    all_n = sum(r[1] for r in rows) or 1
    cur_n = sum(r[2] for r in rows) or 1
    span = width - left - 230
    body = [_text(12, 20, title, size=14, weight="600"),
            *_legend(width - 260, 20, [("all records", NEUTRAL), ("curated", KEPT)])]  # fmt: skip
    for i, (value, n, k) in enumerate(rows):
        y = top + i * row
        a, c = n / all_n, k / cur_n
        body.append(_text(left - 10, y + 17, cut(value, 24), anchor="end", weight="600"))
        body.append(
            _rect(left, y + 2, span * a, 14, NEUTRAL, f"{value}: {n:,} of all records ({100 * a:.1f} %)")
        )
        body.append(_rect(left, y + 18, span * c, 14, KEPT, f"{value}: {k:,} curated ({100 * c:.1f} %)"))
        body.append(_text(left + span + 8, y + 14, f"{n:,} ({100 * a:.1f} %)", size=11, fill=MUTED))
        body.append(_text(left + span + 8, y + 30, f"{k:,} curated ({100 * c:.1f} %)", size=11,
                          fill=KEPT if k else DROPPED))  # fmt: skip
    return _svg(width, height, body, title, chart_id)


# ---- scatter ------------------------------------------------------------------------------------------


def scatter(
    points: Sequence[tuple[float, float]], groups: Sequence[int], names: Sequence[str], colours: Sequence[str],
    *, title: str, chart_id: str, tips: Sequence[str] | None = None,
) -> str:  # fmt: skip
    """Points in a square plot, coloured by group (``names[g]``, ``colours[g]``)."""
    size, pad, top = 400, 14, 34
    width, height = size + 160, size + top + pad
    xs = [p[0] for p in points] or [0.0]
    ys = [p[1] for p in points] or [0.0]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (size - 2 * pad) / (x1 - x0 if x1 > x0 else 1)
    sy = (size - 2 * pad) / (y1 - y0 if y1 > y0 else 1)
    s = min(sx, sy)
    body = [_text(12, 20, title, size=14, weight="600"),
            f'<rect x="0.5" y="{top}.5" width="{size - 1}" height="{size - 1}" fill="none" stroke="{GRID}"/>']  # fmt: skip
    counts = [0] * len(names)
    for i, ((x, y), g) in enumerate(zip(points, groups, strict=True)):
        counts[g] += 1
        cx = pad + (x - x0) * s
        cy = top + size - pad - (y - y0) * s
        tip = f"<title>{esc(tips[i])}</title>" if tips else ""
        body.append(
            f'<circle cx="{num(cx)}" cy="{num(cy)}" r="3" fill="{colours[g]}" fill-opacity="0.72">{tip}</circle>'
        )
    for g, (name, colour) in enumerate(zip(names, colours, strict=True)):
        y = top + 14 + 20 * g
        body.append(f'<circle cx="{size + 16}" cy="{y - 4}" r="5" fill="{colour}"/>')
        body.append(_text(size + 26, y, f"{cut(name, 20)} ({counts[g]:,})", size=11))
    return _svg(width, height, body, title, chart_id)


def funnel_steps(funnel: dict[str, Any], parse_reasons: list[tuple[str, str, int]]) -> list[Step]:
    """The funnel as chart rows: generated, parsed (the recipe's own checks), each filter of the latest
    pass (what it kept of what reached it, its top reasons), curated."""
    steps = [Step("generated", funnel["generated"])]
    dropped = funnel["generated"] - funnel["parsed"]
    top = sorted(parse_reasons, key=lambda x: (-x[2], x[0], x[1]))[:3]
    steps.append(Step("parsed", funnel["parsed"], dropped, tuple((f"{f}: {r}", n) for f, r, n in top)))
    for x in funnel["filters"]:
        reasons = sorted(x["top_reasons"], key=lambda y: (-y["records"], y["reason"]))
        steps.append(Step(x["filter"], x["kept"], x["dropped"],
                                 tuple((y["reason"], y["records"]) for y in reasons)))  # fmt: skip
    steps.append(Step("curated", funnel["curated"]))
    return steps
