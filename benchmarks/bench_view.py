"""`factory view` on a run of 1,000,000 records: page load and API query times.

    python benchmarks/bench_view.py [--n 1000000] [--tries 5] [--rebuild] [--json]

Writes benchmarks/results/view.json (with the date, load average and versions).

The store is built here once (kept in benchmarks/.cache/, rebuilt with --rebuild or another --n) with
`Store.commit` in 20,000-row batches: synthetic rationales records of 150-300 characters with a label, a
request and its cached answer each, recipe parse failures, and one filter pass of heuristics, exact dedup
and a critic (about 2.3 verdicts per record). Then `factory view STORE --port 0` runs as its own process,
as a user starts it, and this script measures, as medians of --tries:

  start-up           process start to the URL printed (imports, opening the store, indexing the run)
  page load          in headless Chromium: navigation start to the first page of records drawn (the page's
                     own `records-shown` performance mark); needs chromium and chromedriver, else skipped
  page load (HTTP)   the same requests without a browser: the page, its script and style, runs, facets, the
                     first page of records, one after the other
  each API query     one request's wall-clock: first page, a page a million rows deep, a drop reason, a
                     label, a search, one record whole

Peer: what a page that loads everything would wait for before drawing anything: the run's records with
their drop reasons as one Arrow table (`Store.curated_table(..., include_rejected=True)`), in this process.
Target: page load and every query under a second (exit code 1 otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _results  # noqa: E402

from factory.store import Batch, Store  # noqa: E402

RUN = "bench-1m"
TARGET_MS = 1000.0
BATCH = 20_000
LABELS = ("positive", "negative", "neutral", "unsure")
LABEL_WEIGHTS = (0.55, 0.3, 0.12, 0.03)
RARE = "zyzzyva"  # a word in about one record in ten thousand


def build(path: Path, n: int) -> None:
    """A store holding one run of ``n`` records, its cache rows, parse verdicts and one filter pass."""
    for p in path.parent.glob(path.name + "*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    rng = random.Random(11)
    vocab = sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                    for _ in range(6000)})  # fmt: skip
    texts_seen: list[str] = []
    ids: list[str] = []
    texts: list[str] = []
    parse_failed: set[int] = set()
    t0 = time.perf_counter()
    with Store(path) as st:
        cfg = {"name": RUN, "recipe": "rationales", "teacher": "openai:bench-model", "filters": []}
        st.start_run(run_id=RUN, name=RUN, recipe="rationales", teacher="openai:bench-model", config=cfg,
                     config_hash="bench", version="bench")  # fmt: skip
        for start in range(0, n, BATCH):
            batch = Batch()
            for i in range(start, min(n, start + BATCH)):
                rid = hashlib.blake2b(f"r{i}".encode(), digest_size=12).hexdigest()
                key = hashlib.blake2b(f"k{i}".encode(), digest_size=16).hexdigest()
                if texts_seen and rng.random() < 0.08:
                    text = rng.choice(texts_seen[-2000:])  # the teacher repeating itself
                else:
                    words = [rng.choice(vocab) for _ in range(rng.randint(24, 46))]
                    if rng.random() < 0.0001:
                        words[rng.randrange(len(words))] = RARE
                    text = " ".join(words)[:300]
                    texts_seen.append(text)
                label = rng.choices(LABELS, LABEL_WEIGHTS)[0]
                question = f"Question {i // 4}: how many of {rng.randint(2, 99)} items remain?"
                payload = {
                    "input": question,
                    "rationale": text,
                    "answer": str(rng.randint(1, 99)),
                    "label": label,
                }
                request = {"messages": [{"role": "system", "content": "You are a careful tutor."},
                                        {"role": "user", "content": question}],
                           "sample": i % 4, "sampling": {"max_tokens": 256, "temperature": 0.7, "top_p": 1.0}}  # fmt: skip
                batch.records.append((rid, RUN, "rationales", "rationale", f"seed-{i // 4:07d}", i % 4, text,
                                      orjson.dumps(payload).decode(), [], [key], "openai:bench-model", "bench1"))  # fmt: skip
                batch.cache.append((key, "openai:bench-model", "ok", orjson.dumps(request).decode(), text, "stop",
                                    40, len(text) // 4, rng.lognormvariate(6.2, 0.5), None, RUN))  # fmt: skip
                if rng.random() < 0.03:
                    parse_failed.add(i)
                    batch.verdicts.append(
                        (rid, RUN, "rationales.parse", "p1", False, None, "no final answer")
                    )
                ids.append(rid)
                texts.append(text)
            st.commit(batch)
        log(f"records, cache rows and parse verdicts: {n:,} in {time.perf_counter() - t0:.0f} s")
        t1 = time.perf_counter()
        verdicts: list[tuple[object, ...]] = []
        alive = [i for i in range(n) if i not in parse_failed]
        kept = []
        for i in alive:  # heuristics
            ok = len(texts[i]) >= 160
            verdicts.append(
                (
                    ids[i],
                    "heuristics",
                    "h1",
                    ok,
                    float(len(texts[i])),
                    None if ok else "shorter than 160 chars",
                    None,
                )
            )
            if ok:
                kept.append(i)
        alive, kept, first = kept, [], {}
        for i in alive:  # exact dedup
            j = first.setdefault(texts[i], i)
            ok = j == i
            detail = None if ok else orjson.dumps({"duplicate_of": ids[j]}).decode()
            verdicts.append(
                (
                    ids[i],
                    "exact_dedup",
                    "x1",
                    ok,
                    0.0 if ok else 1.0,
                    None if ok else "exact duplicate",
                    detail,
                )
            )
            if ok:
                kept.append(i)
        for i in kept:  # critic
            if rng.random() < 0.01:
                verdicts.append(
                    (ids[i], "critic", "c1", False, None, "no readable score after 3 attempts", None)
                )
                continue
            score = float(rng.randint(1, 10))
            ok = score >= 6
            verdicts.append((ids[i], "critic", "c1", ok, score, None if ok else "critic score below 6",
                             orjson.dumps({"reason": "synthetic"}).decode()))  # fmt: skip
        filters = [{"filter": "heuristics", "version": "h1", "params": {"min_chars": 160}},
                   {"filter": "exact_dedup", "version": "x1", "params": {}},
                   {"filter": "critic", "version": "c1", "params": {"min_score": 6}}]  # fmt: skip
        st.write_pass(RUN, filters, verdicts)
        st.finish_run(RUN, "done")
        log(f"filter pass: {len(verdicts):,} verdicts in {time.perf_counter() - t1:.0f} s")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn, tries: int) -> list[float]:
    out = []
    for _ in range(tries):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as resp:
        return resp.read()


def start_server(path: Path) -> tuple[subprocess.Popen[str], str, float]:
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "factory.cli", "view", str(path), "--port", "0", "--run", RUN],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    line = proc.stdout.readline() if proc.stdout else ""
    took = (time.perf_counter() - t) * 1000
    m = re.search(r"(http://[^ #]+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the view did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, m.group(1), took


def browser_loads(url: str, tries: int) -> list[float] | None:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return None
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(shutil.which("chromium"))
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,900",
    ):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(str(shutil.which("chromedriver"))))
    out = []
    try:
        for _ in range(tries + 1):  # the first load is a warm-up of the browser itself
            driver.get("about:blank")
            driver.get(url)
            WebDriverWait(driver, 60).until(
                lambda d: d.execute_script("return performance.getEntriesByName('records-shown').length")
            )
            out.append(
                float(
                    driver.execute_script("return performance.getEntriesByName('records-shown')[0].startTime")
                )
            )
    finally:
        driver.quit()
    return out[1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--tries", type=int, default=5)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--store", type=Path, default=ROOT / "benchmarks" / ".cache" / "view" / "bench.duckdb")
    ap.add_argument("--json", action="store_true")  # the figures are also written to results/view.json
    args = ap.parse_args()
    ctx = _results.context(["duckdb", "pyarrow", "selenium"])

    path = args.store
    stamp = path.with_name(path.name + ".n")
    if args.rebuild or not path.exists() or not stamp.exists() or stamp.read_text() != str(args.n):
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"building a store of {args.n:,} records at {path} ...")
        build(path, args.n)
        stamp.write_text(str(args.n))

    starts = []
    for _ in range(max(1, min(args.tries, 3)) - 1):
        proc, _, took = start_server(path)
        starts.append(took)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    proc, base, took = start_server(path)
    starts.append(took)
    rows: list[tuple[str, list[float] | None]] = [("start-up (open, index the run)", starts)]
    try:
        q = lambda **p: f"{base}api/records?" + urllib.parse.urlencode({"run": RUN, **p})  # noqa: E731
        first = json.loads(get(q()))
        some = first["rows"][3]["id"]

        def http_load() -> None:
            for p in ("", "app.js", "app.css", "api/runs", f"api/facets?run={RUN}"):
                get(base + p)
            get(q(limit=50))

        page_url = f"{base}#run={RUN}"
        rows.append(("page load, Chromium (to records drawn)", browser_loads(page_url, args.tries)))
        rows.append(("page load, HTTP only (6 requests)", timed(http_load, args.tries)))
        total = first["total"]
        queries = {
            "first page (50 rows)": q(limit=50),
            f"page at row {total - 100:,}": q(limit=50, offset=total - 100),
            "rejected, page 2": q(status="rejected", offset=50),
            "reason: exact duplicate": q(filter="exact_dedup", reason="exact duplicate"),
            "label: unsure, kept": q(label="unsure", status="kept"),
            f"search a rare word ({RARE})": q(q=RARE),
            "search a common substring (ab)": q(q="ab"),
            "one record whole": f"{base}api/record?" + urllib.parse.urlencode({"run": RUN, "id": some}),
            "facets (counts per reason, label)": f"{base}api/facets?run={RUN}",
        }
        for name, url in queries.items():
            get(url)  # warm
            rows.append((name, timed(lambda u=url: get(u), args.tries)))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)

    with Store(path, read_only=True) as st:
        n = st.run_summary(RUN)["records_total"]
        peer = timed(lambda: st.curated_table(RUN, include_rejected=True), max(1, min(args.tries, 3)))
    peer_ms = statistics.median(peer)

    results = {name: (statistics.median(v) if v else None) for name, v in rows}
    saved = _results.save("view", ctx, {"records": n, "tries": args.tries, "peer_ms": round(peer_ms, 1),
                                        "ms": {k: None if v is None else round(v, 1) for k, v in results.items()}})  # fmt: skip
    log(f"written: {saved}")
    if args.json:
        print(json.dumps({"records": n, "peer_ms": peer_ms, "results": results}, indent=2))
    print(f"\n`factory view` on {n:,} records (medians of {args.tries}; ms)\n")
    print("| figure | ours | compared with | ratio |")
    print("|---|---|---|---|")
    missed = []
    for name, ms in results.items():
        if ms is None:
            print(f"| {name} | not measured (no chromium/chromedriver/selenium) | | |")
            continue
        bound = "" if name.startswith("start-up") else f"target {TARGET_MS:,.0f}"
        print(
            f"| {name} | {ms:,.0f} | {bound} | {ms / TARGET_MS:.2f} |"
            if bound
            else f"| {name} | {ms:,.0f} | | |"
        )
        if bound and ms > TARGET_MS:
            missed.append(name)
    load = (
        results.get("page load, Chromium (to records drawn)") or results["page load, HTTP only (6 requests)"]
    )
    print(f"| loading every record first (curated_table, the peer) | {peer_ms:,.0f} | page load {load:,.0f} | "
          f"{peer_ms / load:.1f}× slower |")  # fmt: skip
    if missed:
        print(f"\nmissed the {TARGET_MS:,.0f} ms target: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
