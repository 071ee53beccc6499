"""`factory view`: a read-only page on 127.0.0.1 with a JSON API paged and filtered in DuckDB; driven in
headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from browser import chromium, console_errors, full_page_screenshot
from test_report import XSS, make_run

from factory.store import Store


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file beside the store: its digest and modification time."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, store, run id, files beside the store before serving) for a `factory view` process."""
    from conftest import SEEDS

    tmp = tmp_path_factory.mktemp("view")
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("\n".join(SEEDS.read_text(encoding="utf-8").splitlines()[:8]) + "\n", encoding="utf-8")
    data = tmp / "data"
    data.mkdir()
    store, run_id = make_run(data, seeds)
    (data / "judged.yaml").unlink()
    (data / "seeds.jsonl").unlink(missing_ok=True)
    before = _snapshot(data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "factory.cli", "view", str(store), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"(http://[^ #]+)(#\S*)? ", line)
        assert m, (
            f"no URL printed: {line!r} {proc.stderr.read() if proc.poll() is not None and proc.stderr else ''}"
        )
        yield m.group(1), store, run_id, before
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl+C sends: a clean stop
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert _snapshot(data) == before  # nothing beside the store was written or touched, the store included


def _get(url: str, **headers: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"text": body.decode()}


def _api(base: str, path: str, **params) -> dict:
    status, body = _get(f"{base}api/{path}?{urllib.parse.urlencode(params)}")
    assert status == 200, body
    return body


def _text(driver, css: str) -> str:
    """The text of the first element matching ``css``, read in one step (the page redraws as it goes)."""
    return str(
        driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css
        )
    )


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (Linux /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:  # LISTEN
                found.add(addr)
    return found


def test_binds_loopback_only_and_answers_only_to_its_own_name(served):
    base, *_ = served
    port = int(urllib.parse.urlsplit(base).port or 0)
    assert base.startswith("http://127.0.0.1:")
    if os.path.exists("/proc/net/tcp"):
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and no other interface
    status, _ = _get(base + "api/runs", Host=f"attacker.example:{port}")
    assert status == 421  # a page elsewhere cannot reach it through a DNS name that points here
    req = urllib.request.Request(base + "api/runs", method="POST", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405


def test_api_pages_filters_and_searches_in_the_store(served):
    base, store, run_id, _ = served
    with Store(store, read_only=True) as st:
        funnel = st.funnel(run_id)
        rows = st.curated_table(run_id, include_rejected=True).to_pylist()
    runs = _api(base, "runs")["runs"]
    assert [r["id"] for r in runs] == [run_id] and runs[0]["records"] == funnel["generated"]
    f = _api(base, "facets", run=run_id)
    assert (f["records"], f["kept"]) == (funnel["generated"], funnel["curated"])
    assert [x["filter"] for x in f["filters"]] == ["exact_dedup", "critic"]
    assert {x["label"] for x in f["labels"]} == {"positive", "negative"}

    rejected = _api(base, "records", run=run_id, status="rejected", limit=200)
    assert rejected["total"] == funnel["generated"] - funnel["curated"] == len(rejected["rows"])
    assert {r["id"] for r in rejected["rows"]} == {r["id"] for r in rows if r["dropped_by"]}
    dup = _api(base, "records", run=run_id, filter="exact_dedup", reason="exact duplicate")
    assert dup["total"] == 7 and all(
        {"filter": "exact_dedup", "reason": "exact duplicate"} in r["dropped_by"] for r in dup["rows"]
    )
    pages = [_api(base, "records", run=run_id, limit=5, offset=o)["rows"] for o in range(0, 25, 5)]
    ids = [r["id"] for p in pages for r in p]
    assert ids == [r["id"] for r in rows]  # the store's order, each record once across pages
    neg = _api(base, "records", run=run_id, label="negative", status="kept")
    assert neg["total"] == 0
    found = _api(base, "records", run=run_id, q="OFF BY ONE")
    assert found["total"] == 8 and all("Off by one" in r["text"] for r in found["rows"])
    by_id = _api(base, "records", run=run_id, q=rows[3]["id"][:10])
    assert [r["id"] for r in by_id["rows"]] == [rows[3]["id"]]
    status, err = _get(f"{base}api/records?run={run_id}&status=maybe")
    assert status == 400 and "status must be" in err["error"]
    status, err = _get(f"{base}api/records?run=nope")
    assert status == 400 and "no run 'nope'" in err["error"]


def test_a_record_comes_whole_with_every_verdict(served):
    base, store, run_id, _ = served
    with Store(store, read_only=True) as st:
        rid = next(r["id"] for r in st.curated_table(run_id, include_rejected=True).to_pylist()
                   if r["dropped_by"] and "critic" in r["dropped_by"])  # fmt: skip
        why = st.why(rid)
    rec = _api(base, "record", run=run_id, id=rid)
    assert not rec["curated"]
    assert [(v["filter"], v["keep"]) for v in rec["verdicts"]] == [
        ("heuristics", True),
        ("exact_dedup", True),
        ("critic", False),
    ]  # the pass's order
    assert len(rec["verdicts"]) == len(why["verdicts"])
    (answer,) = rec["answers"]
    assert answer["messages"][-1]["role"] == "user" and answer["text"] and answer["teacher"] == "scripted:x"
    assert rec["payload"]["label"] in ("positive", "negative")


def test_in_the_browser_a_reason_filters_and_a_record_shows_its_verdicts(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, *_ = served
    with chromium() as driver:
        wait = WebDriverWait(driver, 30)
        driver.get(base)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.rec"))
        wait.until(lambda d: "of 24 " in _text(d, "#pager-top .range"))
        reason = driver.find_element(By.CSS_SELECTOR, 'button.reason[data-filter="exact_dedup"]')
        assert reason.get_attribute("data-reason") == "exact duplicate"
        reason.click()
        wait.until(lambda d: "of 7 " in _text(d, "#pager-top .range"))
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.rec")
        assert len(rows) == 7
        assert all(
            "exact_dedup: exact duplicate" in r.find_element(By.CSS_SELECTOR, ".why").text for r in rows
        )
        assert "exact_dedup: exact duplicate" in driver.find_element(By.ID, "chips").text
        rows[0].click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#verdicts tr.drop"))
        detail = driver.find_element(By.ID, "detail")
        verdicts = [
            tr.get_attribute("data-filter")
            for tr in detail.find_elements(By.CSS_SELECTOR, "#verdicts tr[data-filter]")
        ]
        assert verdicts == ["heuristics", "exact_dedup"]  # the critic never saw a duplicate
        assert (
            "Raw completion" in detail.text and "Parsed payload" in detail.text and "Lineage" in detail.text
        )
        full_page_screenshot(driver, tmp_path / "view.png", max_height=1200)
        assert console_errors(driver) == []
    assert (tmp_path / "view.png").stat().st_size > 10_000


def test_record_text_is_shown_as_text_never_run(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, run_id, _ = served
    with chromium() as driver:
        wait = WebDriverWait(driver, 30)
        driver.get(base + "#" + urllib.parse.urlencode({"run": run_id, "q": "__pwned"}))
        wait.until(lambda d: "of 1 " in _text(d, "#pager-top .range"))
        row = driver.find_element(By.CSS_SELECTOR, "tr.rec")
        assert XSS in row.find_element(By.CSS_SELECTOR, ".snippet").text
        row.click()
        wait.until(lambda d: d.find_elements(By.ID, "record-text"))
        assert XSS in driver.find_element(By.ID, "record-text").text
        assert driver.execute_script("return window.__pwned") is None
        assert driver.execute_script("return document.scripts.length") == 1  # app.js only
        assert not driver.find_elements(By.CSS_SELECTOR, "#main img, #detail img")
        full_page_screenshot(driver, tmp_path / "escaped.png", max_height=1200)
        assert console_errors(driver) == []


def test_search_on_disk_and_in_memory_agree(served, monkeypatch):
    from factory.card import LABEL_FIELDS
    from factory.store import browse

    _, store, run_id, _ = served
    with Store(store, read_only=True) as st:
        in_memory = browse.Browser(st, LABEL_FIELDS).page(run_id, q="the answer is 2", limit=200)
        monkeypatch.setattr(browse, "SEARCH_COPY_CHARS", 0)  # a run too large to copy: scan records.text
        on_disk = browse.Browser(st, LABEL_FIELDS).page(run_id, q="the answer is 2", limit=200)
        with pytest.raises(Exception, match="no record 'nope'"):
            browse.Browser(st, LABEL_FIELDS).record(run_id, "nope")
    assert in_memory == on_disk and in_memory["total"] > 0
    assert all("the answer is 2" in r["text"].lower() for r in on_disk["rows"])
