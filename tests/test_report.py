"""`factory report`: one self-contained HTML page, rendered in headless Chromium; the funnel chart of the card."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from browser import chromium, console_errors, full_page_screenshot
from conftest import write_config
from test_critic import Judge
from test_curation import _teacher

from factory import api
from factory.report import charts, funnel_svg
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher

XSS = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'


def make_run(tmp: Path, seeds_file: Path) -> tuple[Path, str]:
    """A judged rationales run: exact duplicates, a critic with a threshold, both labels, two teachers, and a
    record whose text holds markup."""
    base = _teacher(seeds_file).fn
    assert base is not None

    def answer(req):
        text = base(req)
        if req.sample_index == 0 and "Maya has 5 bags" in req.messages[-1]["content"].split("\n\n")[-1]:
            return f"{XSS} Work it out. The answer is 28."
        return text

    store = tmp / "s.duckdb"
    cfg = write_config(
        tmp,
        f"name: judged\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {store}\nteacher: scripted:x\n"
        "teachers: {judge: 'scripted:judge'}\nparams: {k: 3}\nlicense: cc-by-4.0\n"
        "filters:\n  - heuristics: {min_chars: 10}\n  - exact_dedup\n  - critic: {teacher: judge, min_score: 6}\n",
        name="judged.yaml",
    )
    teacher = ScriptedTeacher("scripted:x", "x", {"fn": answer})
    res = asyncio.run(api.run_async(api.prepare(cfg), teachers={"default": teacher, "judge": Judge()}))
    assert res.status == "done" and res.curation is not None
    return store, res.run_id


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)  # fmt: skip


def _has_minilm() -> bool:
    from factory.embeddings import default_model_path
    from factory.errors import ConfigError

    try:
        default_model_path()
        import sentence_transformers  # noqa: F401
    except (ConfigError, ImportError):
        return False
    return True


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path, str]:
    """(report file, store, run id), written by the command."""
    from conftest import SEEDS

    tmp = tmp_path_factory.mktemp("report")
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("\n".join(SEEDS.read_text(encoding="utf-8").splitlines()[:8]) + "\n", encoding="utf-8")
    store, run_id = make_run(tmp, seeds)
    out = _cli("report", "judged", "--store", str(store), "--out", str(tmp / "report.html"), cwd=tmp)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(str(tmp / "report.html"))
    return tmp / "report.html", store, run_id


def test_the_report_is_self_contained_and_escapes_record_text(report):
    path, _, _ = report
    page = path.read_text(encoding="utf-8")
    assert "default-src 'none'" in page  # the page may load nothing
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert "<script" not in page.lower()  # no script of its own, and record text cannot add one
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    for section in ("funnel", "scores", "labels", "lengths", "repetition", "map", "teachers", "samples"):
        assert f'<section id="{section}">' in page
    assert "min_score = 6 (kept at or above)" in page
    assert "exact duplicate ×7" in page and "critic score below 6 ×7" in page
    assert "scripted:judge" in page and "not known" in page  # cost: no price is stored
    assert "No curated record left for: negative" in page  # the wrong answers all went


def test_the_report_renders_in_chromium_without_console_errors(report, tmp_path):
    path, _, _ = report
    with chromium() as driver:
        driver.get(path.as_uri())
        ids = driver.execute_script("return [...document.querySelectorAll('svg.chart')].map(s => s.id)")
        assert {"funnel", "scores-critic", "labels-label", "lengths"} <= set(ids)
        if _has_minilm():
            assert {"map-kept", "map-label"} <= set(ids)
        else:
            assert "No map" in driver.find_element("id", "map").text
        sizes = driver.execute_script(
            "return [...document.querySelectorAll('svg.chart')].map(s => s.getBoundingClientRect().height)"
        )
        assert all(h > 50 for h in sizes)  # drawn, not collapsed
        bars = driver.execute_script("return document.querySelectorAll('#funnel svg rect').length")
        assert bars > 6
        assert driver.execute_script("return window.__pwned") is None
        assert "<script>window.__pwned" in driver.find_element("id", "samples").text  # shown as text
        assert console_errors(driver) == []
        shot = tmp_path / "report.png"
        full_page_screenshot(driver, shot)
    assert shot.stat().st_size > 10_000


def test_funnel_chart_is_deterministic_wellformed_xml_and_in_the_export(report, tmp_path):
    _, store_path, run_id = report
    from factory.export import export_run

    with Store(store_path, read_only=True) as st:
        svg = funnel_svg(st, run_id)
        assert svg == funnel_svg(st, run_id)
        out = export_run(st, run_id, tmp_path / "hf")
    root = ET.fromstring(svg.split("\n", 1)[1])
    assert root.tag.endswith("svg")
    assert (out.out / "funnel.svg").read_text(encoding="utf-8") == svg
    assert (
        "![The funnel: generated, parsed, each filter, curated](funnel.svg)"
        in (out.out / "README.md").read_text()
    )
    assert out.out / "funnel.svg" in out.files


def test_chart_text_is_escaped():
    step = charts.Step('a <b> & "c"', 3, 2, (("<script>x</script> & more", 2),))
    svg = charts.funnel([step], title="t & <u>")
    root = ET.fromstring(svg)  # parses: nothing from data became markup
    texts = "".join(root.itertext())
    assert "<script>x</script>" in texts and not root.findall(".//{http://www.w3.org/2000/svg}script")
    hist = charts.histogram([0, 1, 2], [1, 0], [0, 1], title="<h>", x_label="x&y", chart_id='"q"', threshold=1,
                            threshold_label="<t>")  # fmt: skip
    ET.fromstring(hist)


def test_report_without_a_map_and_of_an_unknown_run(report, tmp_path):
    _, store_path, run_id = report
    out = _cli("report", run_id, "--store", str(store_path), "--out", str(tmp_path / "r.html"), "--map-points", "0",
               cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "The map was turned off" in (tmp_path / "r.html").read_text(encoding="utf-8")
    bad = _cli("report", "nosuchrun", "--store", str(store_path), cwd=tmp_path)
    assert bad.returncode == 2 and "no run 'nosuchrun'" in bad.stderr
