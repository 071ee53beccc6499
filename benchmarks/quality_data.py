"""The training sets of the quality benchmark, built the way a user builds them: `factory import`, then
`factory export`, each called through the CLI's own entry point (same parser, commands and error boundary).

Per data set, two runs of the same file in one store:

- ``curated``: the rationales recipe's import defaults: agreement with gold, then exact dedup;
- ``all``: imported without a gold field (``params.gold_field: null``) and with no filters (``--filters ''``),
  so nothing checks the teacher's answer and every rationale that states one becomes a target with the
  teacher's own answer as its label, wrong ones included.

Both export ``{train: 0.8, validation: 0.2}`` by a hash of the seed id, which for an import is the row's
``id``: the same questions are held out of both runs. The questions scored are those of the curated run's
``records`` export with ``--include-rejected`` (every row, whatever the teacher answered), so every variant
and the teacher are scored on one set.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = {"train": 0.8, "validation": 0.2}
TEACHER = "palm-540b"
# The columns each file keeps its teacher's text in (see the data's README); SVAMP has the answer parsed.
MAPS = {
    "svamp": ["rationale=teacher_rationale", "answer=teacher_answer"],
    "cqa": ["rationale=teacher_rationale"],
}
FILES = {"svamp": "svamp_train.jsonl", "cqa": "cqa_train.jsonl"}


class FactoryFailed(RuntimeError):
    pass


def factory(*args: str, log: Path) -> str:
    """Run one `factory` command in this process; its output goes to ``log``; a non-zero exit raises."""
    from factory.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf), redirect_stderr(buf):
        rc = main(list(args))
    out = buf.getvalue()
    with log.open("a", encoding="utf-8") as f:
        f.write(f"$ factory {' '.join(args)}\n{out}\n")
    if rc != 0:
        last = out.strip().splitlines()[-1] if out.strip() else ""
        raise FactoryFailed(f"`factory {args[0]}` exited {rc}: {last[:600]}")
    return out


@dataclass(slots=True)
class Built:
    """One data set's runs, export folders and the questions every variant is scored on."""

    name: str
    store: Path
    exports: dict[str, Path] = field(default_factory=dict)  # "curated_sbs", "all_sbs", "curated_pc", ...
    train_rows: dict[str, int] = field(default_factory=dict)
    funnel: dict[str, Any] = field(default_factory=dict)
    eval_rows: list[dict[str, Any]] = field(default_factory=list)
    validation_questions: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # an export that could not be made: why


def _config(path: Path, name: str, seeds: Path, *, gold: bool) -> Path:
    lines = [f"name: {name}", "recipe: rationales", f"seeds: {json.dumps(str(seeds))}",
             f"export: {{splits: {json.dumps(SPLITS)}}}"]  # fmt: skip
    if not gold:
        lines.append("params: {gold_field: null}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _export(run: str, shape: str, out: Path, store: Path, log: Path, *extra: str) -> tuple[Path, str]:
    said = factory("export", run, "--store", str(store), "--as", shape, "--format", "jsonl", "--out", str(out),
                   "--overwrite", *extra, log=log)  # fmt: skip
    return out, said.strip().splitlines()[0] if said.strip() else ""


def build(name: str, source: Path, work: Path, *, eval_rows: int | None, preference: bool) -> Built:
    """Import ``source`` twice, export the shapes the variants train on, and pick the questions to score."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "factory.log"
    built = Built(name, work / "store.duckdb")
    st = str(built.store)
    maps = [x for m in MAPS[name] for x in ("--map", m)]
    for run, gold in ((f"{name}-curated", True), (f"{name}-all", False)):
        cfg = _config(work / f"{run}.yaml", run, source, gold=gold)
        args = ["import", str(source), "--recipe", "rationales", "--config", str(cfg), "--store", st,
                "--teacher", TEACHER, "--json", *maps, *([] if gold else ["--filters", ""])]  # fmt: skip
        res = json.loads(factory(*args, log=log).strip().splitlines()[-1])
        funnel = res.get("funnel") or {}
        built.funnel[run] = {"rows": res["rows"], "curated": funnel.get("curated"),
                             "rejected": res.get("rejected", {})}  # fmt: skip
    cur, alle = f"{name}-curated", f"{name}-all"
    e = work / "exports"
    built.exports["curated_sbs"], _ = _export(
        cur, "step_by_step", e / "curated-step_by_step", built.store, log
    )
    built.exports["all_sbs"], _ = _export(alle, "step_by_step", e / "all-step_by_step", built.store, log)
    built.exports["curated_pc"], _ = _export(cur, "prompt_completion", e / "curated-prompt_completion",
                                             built.store, log)  # fmt: skip
    if preference:
        try:
            built.exports["curated_pref"], _ = _export(cur, "preference", e / "curated-preference",
                                                          built.store, log)  # fmt: skip
        except (FactoryFailed, SystemExit) as exc:  # an exporter without the shape: argparse exits 2
            built.failed["curated_pref"] = str(exc) if isinstance(exc, FactoryFailed) else "no such shape"
    for key, path in built.exports.items():
        built.train_rows[key] = len(_rows(path / "train.jsonl"))
    rec, _ = _export(cur, "records", e / "curated-records", built.store, log, "--include-rejected")
    held = sorted(_rows(rec / "validation.jsonl"), key=lambda r: str(r["record_id"]))
    built.validation_questions = len(held)
    chosen = held[:eval_rows] if eval_rows else held
    built.eval_rows = [{"input": r["input"], "gold": r["gold"], "teacher_answer": r["answer"],
                        "teacher_right": bool(r["agrees_with_gold"]), "seed_id": r["seed_id"]}
                       for r in chosen if r.get("gold") is not None]  # fmt: skip
    return built
