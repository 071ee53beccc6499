"""`factory report`: one self-contained HTML page that shows a run: the funnel, score histograms with their
thresholds, label balance before and after curation, text lengths, a 2-D map of sentence embeddings, what
each teacher was asked and answered, and sample records kept and rejected, side by side.

The page loads nothing: charts are inline SVG, styles are inline, there is no script, and a Content Security
Policy forbids any request. ``funnel_svg`` is also the image an HF export puts beside its dataset card.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from factory.errors import ConfigError
from factory.outputs import ensure_folder, temp_beside, user_modes
from factory.report import charts
from factory.report.charts import funnel_steps
from factory.store import Store

FUNNEL_TITLE = "Where the records went: generated → parsed → each filter → curated"


@dataclass(slots=True)
class ReportResult:
    path: Path
    bytes: int
    notes: list[str]


def funnel_svg(store: Store, run_id: str) -> str:
    """The run's funnel as a standalone SVG file: a function of the store's state only (same bytes for the
    same state)."""
    funnel = store.funnel(run_id)
    slugs = {x["filter"] for x in funnel["filters"]}
    parse = [(f, r, n) for f, r, n in store.verdict_counts(run_id) if f not in slugs]
    svg = charts.funnel(funnel_steps(funnel, parse), title=FUNNEL_TITLE)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + svg + "\n"


def render_report(store: Store, run_id: str, *, map_points: int = 1500) -> tuple[str, list[str]]:
    """The report page as text, and notes on what it could not show."""
    from factory.report.data import gather
    from factory.report.html import render
    from factory.report.projection import embedding_map

    facts = gather(store, run_id)
    emap, why = embedding_map(store, run_id, facts.last_pass, facts.label_field, map_points)
    if why:
        facts.notes.append(why)
    return render(facts, emap, why), facts.notes


def write_report(store: Store, run_id: str, out: Path, *, map_points: int = 1500) -> ReportResult:
    """Render the report and write it to ``out`` (whole or not at all)."""
    out = out.resolve()
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the path of the HTML file to write")
    ensure_folder(out.parent, "--out")
    page, notes = render_report(store, run_id, map_points=map_points)
    tmp = temp_beside(out, "report", "--out", folder=False)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(page)
        user_modes(tmp)  # mkstemp made it 0600
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ReportResult(out, len(page.encode()), notes)


__all__ = ["ReportResult", "funnel_steps", "funnel_svg", "render_report", "write_report"]
