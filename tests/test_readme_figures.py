"""The measured figures the READMEs quote are the committed results files' own.

Every figure sits in a `<!-- figures:NAME -->` block that `benchmarks/figures.py` renders from the results
files (results.md, peers_results.md, results/*.json); these tests fail when a block differs from what its
file says (a figure edited by hand, or results re-measured without rewriting the READMEs), when a measured
figure is quoted outside a block, or when a results file lacks its date, load or versions.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _figures():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_figures", BENCH / "figures.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


figures = _figures()

# A measured figure: a rate, a ratio, a per-request cost, a duration or memory of a benchmark run.
MEASURED = re.compile(
    r"\d[\d,.]*\s?(?:×|x\b|µs\b|(?:records|rows|requests|req|tokens|sentences|inputs|examples)/s\b"
    r"|(?:records|rows|requests|output tokens|sentences) (?:a|per) second)"
)


def test_every_block_is_what_its_results_file_says() -> None:
    assert figures.stale() == [], "python benchmarks/figures.py rewrites them from the results files"


@pytest.mark.parametrize("readme", figures.READMES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_readmes_quote_figures_in_blocks(readme: Path) -> None:
    names = [n for n, _ in figures.blocks(readme.read_text(encoding="utf-8"))]
    assert names, f"{readme.name} has no figures block"
    assert set(names) <= set(figures.RENDERERS), set(names) - set(figures.RENDERERS)


def test_every_renderer_is_quoted_somewhere() -> None:
    used = {n for p in figures.READMES for n, _ in figures.blocks(p.read_text(encoding="utf-8"))}
    assert set(figures.RENDERERS) == used


@pytest.mark.parametrize("readme", figures.READMES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_measured_figure_outside_a_block(readme: Path) -> None:
    outside = figures.BLOCK.sub("", readme.read_text(encoding="utf-8"))
    found = [m.group() for m in MEASURED.finditer(outside)]
    assert found == [], f"{readme.name} quotes measured figures outside a figures block: {found}"


def test_a_figure_edited_by_hand_is_caught(tmp_path: Path) -> None:
    text = figures.READMES[0].read_text(encoding="utf-8")
    m = next(m for m in figures.BLOCK.finditer(text) if m.group(1) == "speed")
    body = m.group(2)
    digit = re.search(r"\d", body)
    assert digit is not None
    at = m.start(2) + digit.start()
    edited = text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :]
    copy = tmp_path / "README.md"
    copy.write_text(edited, encoding="utf-8")
    assert figures.stale((copy,)) == ["README.md: speed"]
    figures.write((copy,))
    assert copy.read_text(encoding="utf-8") == text
    assert figures.stale((copy,)) == []


def test_a_block_of_an_unknown_name_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "README.md"
    copy.write_text("speed: <!-- figures:made-up -->3× faster<!-- /figures -->\n", encoding="utf-8")
    assert figures.stale((copy,)) == ["README.md: unknown block 'made-up'"]


def test_the_guard_sees_a_figure_outside_a_block() -> None:
    prose = "ours runs at 88,230 records/s, 18× datasketch (4x rensa), at 374 µs a request"
    assert [m.group() for m in MEASURED.finditer(prose)] == ["88,230 records/s", "18×", "4x", "374 µs"]
    assert [m.group() for m in MEASURED.finditer("seed 0x9E3779B9, 32 bands × 4 rows, 200 ms latency")] == []


@pytest.mark.parametrize("path", sorted((BENCH / "results").glob("*.json")), ids=lambda p: p.name)
def test_each_results_file_says_when_under_what_load_and_with_what(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", data["date"])
    assert isinstance(data["load_start"], float | int) and isinstance(data["load_end"], float | int)
    assert data["cpus"] >= 1
    assert data["versions"]["python"] and data["versions"]["distill-factory"]
    assert data["figures"]


@pytest.mark.parametrize("path", [figures.RUN_MD, figures.PEERS_MD], ids=lambda p: p.name)
def test_each_markdown_results_file_opens_with_its_date(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert re.search(r"\d{4}-\d\d-\d\d", first), first
    assert "load" in first
