"""The report page: the facts turned into charts (inline SVG) and tables, through one Jinja template with
autoescaping on. Record text is only ever inserted as escaped text; the SVG charts escape their own."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from markupsafe import Markup

from factory import __version__
from factory.report import charts
from factory.report.data import Facts
from factory.report.projection import Map

TEMPLATE = "report.html.j2"
MAX_TEXT = 700  # characters of a sample record's text
MAX_LABELS = 12  # label values charted (the rest are summed as "other")
MAP_GROUPS = 7  # label colours on the map (the rest are "other")


def render(facts: Facts, emap: Map | None, map_note: str | None) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True, undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )  # fmt: skip
    env.filters["n"] = lambda v: "" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"
    env.filters["oneline"] = lambda s, k: charts.cut(s or "", k)  # whitespace folded, for table cells
    env.filters["clip"] = _clip  # newlines kept, for <pre>
    return env.get_template(TEMPLATE).render(**context(facts, emap, map_note))


def _utc(stamp: str | None) -> str:
    if not stamp:
        return "not recorded"
    t = datetime.fromisoformat(stamp)
    return (t.astimezone(timezone.utc) if t.tzinfo else t).strftime("%Y-%m-%d %H:%M UTC")


def _clip(s: str | None, limit: int = MAX_TEXT) -> str:
    s = s or ""
    return s if len(s) <= limit else s[: limit - 1] + "…"


def context(facts: Facts, emap: Map | None, map_note: str | None) -> dict[str, Any]:
    run, fn = facts.run, facts.funnel
    steps = charts.funnel_steps(fn, facts.parse_reasons)
    return {
        "version": __version__,
        "run": run,
        "created": _utc(run.get("created_at")),
        "funnel": fn,
        "funnel_svg": Markup(charts.funnel(steps)),
        "funnel_rows": [
            {
                "name": s.name,
                "in": s.kept + s.dropped,
                "kept": s.kept,
                "dropped": s.dropped,
                "reasons": s.reasons,
            }
            for s in steps
        ],
        "scores": [_score_chart(s) for s in facts.scores],
        "passed_filters": [f["filter"] for f in (facts.last_pass or {}).get("filters", [])],
        "labels": [_label_chart(field, rows) for field, rows in facts.labels],
        "lengths": _length_chart(facts),
        "budget": _budget_chart(facts),
        "repeats": facts.repeats,
        "distinct_texts": facts.distinct_texts,
        "map": _maps(emap, facts.label_field) if emap is not None else None,
        "map_note": map_note,
        "teachers": facts.teachers,
        "rejections": facts.rejections,
        "attempt_failures": sorted(facts.attempt_failures.items(), key=lambda kv: (-kv[1], kv[0])),
        "final_failures": facts.final_failures,
        "kept_sample": facts.kept_sample,
        "dropped_sample": facts.dropped_sample,
        "label_field": facts.label_field,
        "last_pass": facts.last_pass,
        "accuracy": facts.accuracy,
    }


def _score_chart(s: Any) -> dict[str, Any]:
    side = "kept at or above" if s.keeps == "above" else "dropped at or above"
    label = f"{s.threshold_param} = {s.threshold:g} ({side})" if s.threshold is not None else ""
    svg = charts.histogram(
        s.edges, s.kept, s.dropped, title=f"{s.filter}: {s.what}", x_label=s.what, chart_id=f"scores-{s.filter}",
        threshold=s.threshold, threshold_label=label, tick_labels=s.tick_labels,
    )  # fmt: skip
    return {"filter": s.filter, "svg": Markup(svg), "unscored": s.unscored, "total": s.total, "label": label}


def _label_chart(field: str, rows: list[tuple[str, int, int]]) -> dict[str, Any]:
    shown = rows[:MAX_LABELS]
    rest = rows[MAX_LABELS:]
    if rest:
        shown = [*shown, (f"other ({len(rest)} values)", sum(r[1] for r in rest), sum(r[2] for r in rest))]
    starving = [v for v, n, k in rows if n and not k]
    total_k = sum(k for _, _, k in rows) or 1
    thin = [v for v, _, k in rows if k and k / total_k < 0.5 / max(len(rows), 1)]
    svg = charts.balance(shown, title=f"Label balance: {field}", chart_id=f"labels-{field}")
    return {"field": field, "svg": Markup(svg), "rows": rows, "starving": starving, "thin": thin}


def _length_chart(facts: Facts) -> dict[str, Any] | None:
    ln = facts.lengths
    if ln is None:
        return None
    svg = charts.histogram(
        ln.edges, ln.kept, ln.dropped, title="Text length (characters)", chart_id="lengths",
        x_label=f"characters of the record's text (the last bar holds every text of {ln.overflow_from:,} or more)",
    )  # fmt: skip
    return {"svg": Markup(svg), "median_kept": ln.median_kept, "median_dropped": ln.median_dropped}


def _budget_chart(facts: Facts) -> dict[str, Any] | None:
    b = facts.budget
    if b is None:
        return None
    thinking = facts.run.get("recipe") == "reasoning"
    title = "Thinking budget (output tokens per trace)" if thinking else "Output tokens per answer"
    svg = charts.histogram(
        b.edges, b.kept, b.dropped, title=title, chart_id="budget",
        x_label=f"output tokens of the record's answer (the last bar holds every answer of {b.overflow_from:,} or more)",
    )  # fmt: skip
    return {"svg": Markup(svg), "median_kept": b.median_kept, "median_dropped": b.median_dropped,
            "cut": facts.budget_cut, "thinking": thinking}  # fmt: skip


def _maps(m: Map, label_field: str | None) -> dict[str, Any]:
    kept_svg = charts.scatter(
        m.points, [0 if k else 1 for k in m.kept], ["kept", "dropped"], [charts.KEPT, charts.DROPPED],
        title="Sentence embeddings: kept or dropped", chart_id="map-kept", tips=m.tips,
    )  # fmt: skip
    label_svg = None
    if label_field is not None and any(lab is not None for lab in m.labels):
        counts: dict[str, int] = {}
        for lab in m.labels:
            key = "(none)" if lab is None else lab
            counts[key] = counts.get(key, 0) + 1
        top = sorted(counts, key=lambda k: (-counts[k], k))[:MAP_GROUPS]
        names = [*top, "other"] if len(counts) > len(top) else top
        index = {n: i for i, n in enumerate(top)}
        groups = [index.get("(none)" if lab is None else lab, len(top)) for lab in m.labels]
        colours = [charts.PALETTE[i % len(charts.PALETTE)] for i in range(len(top))] + [charts.NEUTRAL]
        label_svg = charts.scatter(
            m.points, groups, names, colours[: len(names)], title=f"Sentence embeddings by {label_field}",
            chart_id="map-label", tips=m.tips,
        )  # fmt: skip
    return {"kept_svg": Markup(kept_svg), "label_svg": Markup(label_svg) if label_svg else None, "m": m}
