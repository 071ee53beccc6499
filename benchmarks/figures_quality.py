"""benchmarks/README.md's block of the quality benchmark (quality.py), and its chart, from results/quality.json.

The chart is SVG written by hand, like the report's (no plotting library is a dependency): per data set, one
row per variant with its accuracy and 95 % interval, and the teacher's accuracy as a dashed line.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from _results import RESULTS, load

from factory.report.charts import FONT, INK, MUTED, PALETTE, esc, num

SVG = RESULTS / "quality.svg"
DATASETS = {"svamp": "SVAMP", "cqa": "CommonsenseQA"}
CHANCE = {"cqa": "chance, one of five choices, is 20 %"}  # SVAMP's answers are free numbers: no chance level


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(ci: list[float]) -> str:
    return f"{_pct(ci[0])}–{_pct(ci[1])}"


def quality_table(name: str = "quality") -> str:
    d = load(name)
    f = d["figures"]
    lines = [
        "",
        f"Measured {d['date']} (load {d['load_start']} → {d['load_end']}, {d['cpus']} CPUs), mode "
        f"`{f['mode']}`, student `{f['student']}` on {f['device']}, {f['seeds']} seeds, "
        f"{f['wall_s'] / 60:.0f} minutes in all{'' if f.get('complete') else ' (stopped before the end)'}. "
        f"Accuracy: {f['scoring']}; interval: {f['ci']}.",
    ]
    for name, ds in f["datasets"].items():
        b = ds["budget"]
        lines += [
            "",
            f"**{DATASETS.get(name, name)}** ({ds['file']}): {ds['scored_questions']} of "
            f"{ds['validation_questions']} held-out questions scored; every variant {b['steps']} steps × "
            f"{b['batch_size']} inputs over the first {b['train_rows']} rows of its export, learning rate "
            f"{b['learning_rate']:g}{'; ' + CHANCE[name] if name in CHANCE else ''}.",
            "",
            "| variant | trains on | accuracy % | 95 % interval | per seed % | s a training step |",
            "|---|---|---|---|---|---|",
        ]
        for key, v in ds["variants"].items():
            if v["status"] != "done":
                lines.append(f"| ({key}) {v['name']} | {v['trains_on']} | skipped | | {v['reason']} | |")
                continue
            seeds = ", ".join(_pct(x) for x in v["per_seed"])
            step_s = statistics.median(v["train_s"]) / b["steps"]
            lines.append(
                f"| ({key}) {v['name']} | {v['trains_on']} | {_pct(v['accuracy'])} | {_ci(v['ci95'])} | {seeds} "
                f"| {step_s:.1f} |"
            )
        t = ds["teacher"]
        lines.append(
            f"| teacher ({t['name']}) | its own answers | {_pct(t['accuracy'])} | {_ci(t['ci95'])} | | |"
        )
        diffs = [f"{k} ({x['what']}): {100 * x['difference']:+.1f} points [{100 * x['ci95'][0]:+.1f}, "
                 f"{100 * x['ci95'][1]:+.1f}]" for k, x in ds["differences"].items()]  # fmt: skip
        if diffs:
            lines += ["", "Paired differences, same questions: " + "; ".join(diffs) + "."]
    return "\n".join(lines) + "\n"


def chart(figures: dict[str, Any]) -> str:
    """Accuracy by variant with 95 % intervals, one panel per data set, the teacher as a dashed line."""
    width, left, right, row, top = 640, 200, 30, 26, 34
    plot = width - left - right
    body: list[str] = []
    y = top

    def x_of(v: float) -> float:
        return left + plot * v

    for name, ds in figures["datasets"].items():
        done = [(k, v) for k, v in ds["variants"].items() if v["status"] == "done"]
        body.append(_text(8, y, f"{DATASETS.get(name, name)}: exact match on {ds['scored_questions']} "
                                f"held-out questions", weight="bold"))  # fmt: skip
        y0 = y + 10
        for tick in (0, 0.25, 0.5, 0.75, 1.0):
            x = x_of(tick)
            body.append(f'<line x1="{num(x)}" y1="{num(y0)}" x2="{num(x)}" y2="{num(y0 + row * len(done) + 4)}" '
                        f'stroke="#e4e4e4"/>')  # fmt: skip
            body.append(
                _text(x, y0 + row * len(done) + 18, f"{int(tick * 100)} %", anchor="middle", fill=MUTED)
            )
        tx = x_of(ds["teacher"]["accuracy"])
        body.append(f'<line x1="{num(tx)}" y1="{num(y0)}" x2="{num(tx)}" y2="{num(y0 + row * len(done) + 4)}" '
                    f'stroke="{INK}" stroke-dasharray="4 3"/>')  # fmt: skip
        body.append(
            _text(tx + 4, y0 + 10, f"teacher {_pct(ds['teacher']['accuracy'])} %", fill=MUTED, size=11)
        )
        for j, (key, v) in enumerate(done):
            cy = y0 + row * j + row / 2 + 2
            colour = PALETTE[j % len(PALETTE)]
            body.append(_text(left - 8, cy + 4, f"({key}) {v['name']}", anchor="end"))
            lo, hi = v["ci95"]
            body.append(f'<line x1="{num(x_of(lo))}" y1="{num(cy)}" x2="{num(x_of(hi))}" y2="{num(cy)}" '
                        f'stroke="{colour}" stroke-width="3"><title>{esc(_ci(v["ci95"]))} %</title></line>')  # fmt: skip
            body.append(f'<circle cx="{num(x_of(v["accuracy"]))}" cy="{num(cy)}" r="5" fill="{colour}">'
                        f"<title>{esc(_pct(v['accuracy']))} %</title></circle>")  # fmt: skip
        y = y0 + row * len(done) + 44
    height = int(y)
    title = "Student accuracy by variant, 95 % intervals"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" {FONT} font-size="12"><title>{esc(title)}</title>'
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>' + "".join(body) + "</svg>\n"
    )


def _text(x: float, y: float, s: str, *, anchor: str = "start", size: int = 12, fill: str = INK,
          weight: str = "normal") -> str:  # fmt: skip
    w = f' font-weight="{weight}"' if weight != "normal" else ""
    return f'<text x="{num(x)}" y="{num(y)}" text-anchor="{anchor}" font-size="{size}" fill="{fill}"{w}>{esc(s)}</text>'


def write_svg(path: Path = SVG) -> Path:
    path.write_text(chart(load("quality")["figures"]), encoding="utf-8")
    return path
