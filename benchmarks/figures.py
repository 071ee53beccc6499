"""The measured figures that README.md and benchmarks/README.md quote, rendered from the results files.

Every quoted figure sits in a block of one of the two READMEs,

    <!-- figures:NAME -->text<!-- /figures -->

whose text is what the renderer NAME below makes of the committed results files, which only the benchmark
scripts write: `results.md` (run.py), `peers_results.md` (peers.py), `results/dedup.json` (bench_dedup.py),
`results/embed.json` (bench_embed.py). To change what a block says, change its renderer or re-run its
benchmark, then rewrite the blocks:

    python benchmarks/figures.py            # rewrite every block of both READMEs
    python benchmarks/figures.py --check    # exit 1 naming each block that differs (tests/test_readme_figures.py)

bench_dedup.py and bench_embed.py take --write-readme to do the rewrite after their run.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _results  # noqa: E402

READMES = (HERE.parent / "README.md", HERE / "README.md")
BLOCK = re.compile(r"<!-- figures:([a-z0-9-]+) -->(.*?)<!-- /figures -->", re.S)
RUN_MD, PEERS_MD = HERE / "results.md", HERE / "peers_results.md"


# ---------------------------------------------------------------------------------------------- reading


def num(cell: str) -> float:
    """A table cell's leading number ("1,086", "0.25 s", "8720 records/s")."""
    m = re.match(r"-?[\d,]*\.?\d+", cell.strip())
    if not m:
        raise ValueError(f"no number in {cell!r}")
    return float(m.group().replace(",", ""))


def table(path: Path, prefix: str) -> list[dict[str, str]]:
    tables = _results.md_tables(path)
    return next(rows for head, rows in tables.items() if head.startswith(prefix))


def row(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    return next(r for r in rows if all(r[k].strip("*") == v for k, v in match.items()))


def missed(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    at = next((i for i, x in enumerate(lines) if x.startswith("Missed targets")), len(lines))
    return [x[2:] for x in lines[at + 1 :] if x.startswith("- ")]


def header(path: Path) -> str:
    """The results file's first line: when, on what, under what load, with which versions."""
    return path.read_text(encoding="utf-8").splitlines()[0]


def f0(x: float) -> str:
    return f"{x:,.0f}"


def sig(x: float) -> str:
    """Two significant figures for a ratio: 0.78, 2.2, 47."""
    return f"{x:.2f}" if x < 1 else f"{x:.1f}" if x < 10 else f"{x:.0f}"


def when(d: dict[str, Any]) -> str:
    return f"{d['date'][:10]}, {d['cpus']} CPUs, load {d['load_start']:.1f} → {d['load_end']:.1f}"


LEVELS = ("64", "256", "1024")


def run_steady(client: str, col: str = "req/s, steady") -> list[float]:
    rows = table(RUN_MD, "Throughput")
    return [num(row(rows, **{"in flight": c, "client": client})[col]) for c in LEVELS]


def peers_steady(client: str, col: str = "req/s, steady") -> list[float]:
    rows = table(PEERS_MD, "Throughput, 200 ms")
    return [num(row(rows, **{"in flight": c, "client": client})[col]) for c in LEVELS]


def slash(xs: list[float], fmt: Callable[[float], str] = f0, unit: str = "") -> str:
    return " / ".join(fmt(x) for x in xs) + unit


def ratios(a: list[float], b: list[float], unit: str = "×") -> str:
    """a ÷ b at each level: "2.2 / 9.7 / 47×", or without a unit "1.00 / 0.90 / 2.95"."""
    fmt = sig if unit else (lambda x: f"{x:.2f}")
    return " / ".join(fmt(x / y) for x, y in zip(a, b, strict=True)) + unit


def run_date() -> str:
    m = re.search(r"\d{4}-\d\d-\d\d", header(RUN_MD))
    return m.group() if m else "undated"


def run_load() -> str:
    m = re.search(r"load average ([\d.]+) at the start, ([\d.]+) at the end", header(RUN_MD))
    return f"load {m.group(1)} → {m.group(2)}" if m else "load not recorded"


def peers_load(prefix: str) -> str:
    """'load 1.7 → 3.0' (at the start → at the end) from the sentence under a peers_results.md heading."""
    text = _results.md_section(
        PEERS_MD, next(h for h in _results.md_tables(PEERS_MD) if h.startswith(prefix))
    )
    m = re.search(r"Load average ([\d.]+) at the start, ([\d.]+) at the end", text)
    return f"load {m.group(1)} → {m.group(2)}" if m else "load not recorded"


def peers_date(prefix: str = "") -> str:
    if prefix:
        head = next(h for h in _results.md_tables(PEERS_MD) if h.startswith(prefix))
        m = re.search(r"Re-measured (\d{4}-\d\d-\d\d \d\d:\d\d)", _results.md_section(PEERS_MD, head))
        if m:
            return m.group(1)
    m = re.search(r"Measured (\d{4}-\d\d-\d\d \d\d:\d\d)", header(PEERS_MD))
    return m.group(1) if m else "undated"


# ------------------------------------------------------------------------------------- run.py (results.md)


def run_header() -> str:
    return header(RUN_MD)


def run_section(prefix: str) -> Callable[[], str]:
    def render() -> str:
        head = next(h for h in _results.md_tables(RUN_MD) if h.startswith(prefix))
        return "\n" + _results.md_section(RUN_MD, head) + "\n"

    return render


def run_missed() -> str:
    return "\n" + "\n".join(f"- {m}" for m in missed(RUN_MD)) + "\n"


def run_reading() -> str:
    ours, raw, sdk = run_steady("factory"), run_steady("raw"), run_steady("openai")
    cpu, raw_cpu = run_steady("factory", "steady CPU µs/req"), run_steady("raw", "steady CPU µs/req")
    sdk_cpu = run_steady("openai", "steady CPU µs/req")
    return (
        f"\n- **Against the bare aiohttp loop** the whole factory path (recipe, request keys, journal, DuckDB "
        f"commits) ran at {ratios(ours, raw, '')} of its steady rate at 64 / 256 / 1,024 in flight, at "
        f"{slash(cpu)} µs of client CPU per request including storage (the loop: {slash(raw_cpu)}).\n"
        f"- **Against the stock SDK** it was {ratios(ours, sdk)} faster at 64 / 256 / 1,024 in flight; "
        f"`AsyncOpenAI` spent {slash([x / 1000 for x in sdk_cpu], lambda x: f'{x:.1f}')} ms of CPU per "
        f"request (steady). That is one run of {f0(num(row(table(RUN_MD, 'Throughput'), client='openai')['requests×runs']))} "
        f"requests per level on {run_date()}, not re-measured since.\n"
    )


# ----------------------------------------------------------------------------------- peers.py (peers_results.md)


def peers_header() -> str:
    return "\n" + header(PEERS_MD) + "\n"


def peers_section(prefix: str) -> Callable[[], str]:
    def render() -> str:
        head = next(h for h in _results.md_tables(PEERS_MD) if h.startswith(prefix))
        return "\n" + _results.md_section(PEERS_MD, head) + "\n"

    return render


def _ratelimit() -> dict[str, dict[str, str]]:
    rows = table(PEERS_MD, "Rate limit")
    return {
        "not told": next(
            r for r in rows if r["client"] == "**ours**" and r["how it learns the limit"].startswith("not")
        ),
        "told": next(
            r for r in rows if r["client"] == "**ours**" and r["how it learns the limit"].startswith("told")
        ),
        "curator": row(rows, client="curator"),
    }


def peers_targets() -> str:
    col = "ours ÷ this (steady)"
    vs_raw, vs_best = (
        peers_steady("raw", col),
        [
            min(a, b)
            for a, b in zip(peers_steady("curator", col), peers_steady("distilabel", col), strict=True)
        ],
    )
    rl = _ratelimit()
    g = "goodput ÷ limit, first to last answer"
    return (
        f"\nTargets (the exit code): at 200 ms, ours' steady rate ≥ 3× the best peer at 1,024 in flight "
        f"(**{vs_best[2]:.2f}×**) and ≥ 1.4× at 256 (**{vs_best[1]:.2f}×**), ≥ 0.9 of the bare "
        f"aiohttp loop at every level (**{slash(vs_raw, lambda x: f'{x:.2f}')}**); under the rate limit, goodput ≥ 0.9 of the "
        f"limit (**{rl['not told'][g]}** not told, **{rl['told'][g]}** told) with ≤ 1.2 attempts per success "
        f"(**{rl['not told']['attempts per row']}** and **{rl['told']['attempts per row']}**), and every row "
        f"delivered ({rl['not told']['rows delivered']} and {rl['told']['rows delivered']} of "
        f"{rl['told']['requests']}). The lognormal table and the end-to-end run are reported, not checked. "
        f"The file's list of missed targets is from the first rate-limit run, before the teacher paced its "
        f"requests: {'; '.join(missed(PEERS_MD))}.\n"
    )


def peers_reading() -> str:
    t = table(PEERS_MD, "Throughput, 200 ms")
    ln = table(PEERS_MD, "Throughput, lognormal")
    cur = [r for r in t + ln if r["client"] == "curator"]
    dis = [r for r in t + ln if r["client"] == "distilabel"]
    steady = [num(r["steady CPU µs/req"]) / 1000 for r in cur if r in t]
    whole = [num(r["CPU µs/req"]) / 1000 for r in cur if r in t]
    inflight = [num(r["max in flight at server"]) for r in cur if num(r["in flight"]) > 64]
    ours1024 = row(t, **{"in flight": "1024", "client": "ours"})
    c64, c1024 = (row(t, **{"in flight": c, "client": "curator"}) for c in ("64", "1024"))
    dcpu = [num(r["steady CPU µs/req"]) / 1000 for r in dis if r in t]
    d256 = row(ln, **{"in flight": "256", "client": "distilabel"})
    rl = _ratelimit()
    e2e = table(PEERS_MD, "End to end")
    ot, pt = (
        row(e2e, pipeline="ours", stage="total"),
        row(e2e, pipeline="Curator + datasketch + pandas", stage="total"),
    )
    orun = row(e2e, pipeline="ours", stage="`factory run`")
    ofil = row(e2e, pipeline="ours", stage="`factory filter` (minhash_dedup)")
    oexp = row(e2e, pipeline="ours", stage="`factory export --format parquet`")
    cgen = row(e2e, pipeline="Curator + datasketch + pandas", stage="curator.LLM")
    cds = row(e2e, pipeline="Curator + datasketch + pandas", stage="datasketch MinHashLSH")
    cpq = row(e2e, pipeline="Curator + datasketch + pandas", stage="pandas to_parquet")
    kept = [num(x["rows exported"]) for x in (ot, pt)]
    return (
        f"\n- **Curator is CPU-bound**: {min(steady):.1f}–{max(steady):.1f} ms of client CPU per request in "
        f"steady state ({min(whole):.1f}–{max(whole):.1f} ms over the whole run), so it never kept more than "
        f"{f0(min(inflight))}–{f0(max(inflight))} requests in flight at the server above 64 in flight: "
        f"{c1024['req/s, steady']} requests/s at 1,024 in flight, against ours' {ours1024['req/s, steady']} at "
        f"{ours1024['steady CPU µs/req']} µs a request with the store and cache included. It is closest at 64 "
        f"in flight (ours {c64['ours ÷ this (steady)']}× steady, {c64['ours ÷ this (whole run)']}× whole run). "
        f"These are medians of 3 from one session ({peers_date()}, {peers_load('Throughput, 200 ms')}), not "
        f"re-measured since.\n"
        f"- **distilabel** spends {min(dcpu):.1f}–{max(dcpu):.1f} ms of CPU a request (the `openai` SDK on "
        f"httpx, and its step processes) and is batch-synchronous: with a heavy latency tail every batch waits "
        f"for its slowest answer ({d256['req/s, steady']} requests/s at 256 in flight, "
        f"{d256['steady ÷ bound']} of the bound). `OpenAILLM` builds its own `AsyncOpenAI`, whose pool holds "
        f"at most 1,000 connections: at 1,024 in flight the server never saw more than "
        f"{row(t, **{'in flight': '1024', 'client': 'distilabel'})['max in flight at server']}.\n"
        f"- **Rate limit** (one run each, {peers_date('Rate limit')}, {peers_load('Rate limit')}). Curator, "
        f"told the limit, paced itself to it: {rl['curator']['attempts per row']} attempts per row, "
        f"{rl['curator']['goodput ÷ limit, first to last answer']} of the limit between the first and last "
        f"answer. distilabel retries each request in the SDK (honouring `Retry-After`) and gives up after 6; "
        f"in this run it failed when the dataset was built and delivered no rows. Ours, told "
        f"`max_requests_per_minute`, spaces its starts at the limit: {rl['told']['429s']} 429s in "
        f"{rl['told']['requests']} rows, {rl['told']['goodput ÷ limit, first to last answer']} of the limit. "
        f"Not told, the first 429 starts pacing at half the rate being sent; the rate is then cut on a 429 and "
        f"raised 10% after each quiet second, and every 429's `Retry-After` holds back all of the teacher's "
        f"requests: {rl['not told']['429s']} 429s ({rl['not told']['attempts per row']} attempts per row), "
        f"{rl['not told']['goodput ÷ limit, first to last answer']} of the limit. A 429 does not use up "
        f"`max_retries`, so no row is lost to it.\n"
        f"- **End to end**, 100,000 seeds, one run each ({peers_load('End to end')}): ours "
        f"{pt['this ÷ ours (wall)']}× faster overall ({ot['wall s']} s against {pt['wall s']} s) with "
        f"{num(pt['CPU s']) / num(ot['CPU s']):.0f}× less CPU ({ot['CPU s']} s against {pt['CPU s']} s); "
        f"Curator's generation {cgen['this ÷ ours (wall)']}× slower (CPU {cgen['CPU s']} s against "
        f"{orun['CPU s']} s) and datasketch's dedup {cds['this ÷ ours (wall)']}× slower ({cds['CPU s']} s of "
        f"CPU against {ofil['CPU s']} s), while pandas wrote its parquet file faster than our export "
        f"({cpq['wall s']} s against {oexp['wall s']} s: ours streams the curated view out of DuckDB and adds "
        f"the lineage columns). Both caught every planted pair; ours dropped {f0(kept[1] - kept[0])} more "
        f"records (it decides on each candidate pair's exact Jaccard, datasketch there on the MinHash "
        f"estimate). Ours peaked at {ofil['peak MB so far']} MB (the filter pass added "
        f"{f0(num(ofil['peak MB so far']) - num(orun['peak MB so far']))} MB over generation), the glued "
        f"pipeline at {pt['peak MB so far']} MB.\n"
    )


# ----------------------------------------------------------------------------- bench_dedup.py (dedup.json)


def _dedup() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """dedup.json, and its methods by a short name: ours, ours-noverify, core, datasketch, shingling."""
    d = _results.load("dedup")
    names = {("ours", "whole filter (verify,"): "ours", ("ours", "whole filter (verify: false"): "ours-noverify",
             ("ours", "signatures + LSH"): "core", ("datasketch", "whole filter"): "datasketch"}  # fmt: skip
    by = {}
    for m in d["figures"]["methods"]:
        for (method, what), short in names.items():
            if m["method"] == method and m["what"].startswith(what):
                by[short] = m
    return d, by


def dedup_table() -> str:
    d, by = _dedup()
    f = d["figures"]
    ref = by["ours"]["cpu_s"]
    lines = [
        f"#### Near-duplicate dedup: {f['records']:,} records of ~{f['chars']:.0f} characters",
        "",
        f"Measured {d['date']} by `bench_dedup.py` on {d['cpus']} CPUs, load average {d['load_start']:.1f} at "
        f"the start and {d['load_end']:.1f} at the end; {', '.join(f'{k} {v}' for k, v in d['versions'].items())}. "
        f"Word {f['ngram']}-grams, {f['num_perm']} permutations, LSH {f['bands']} bands × {f['rows']} rows "
        f"(lsh_threshold {f['lsh_threshold']}), threshold {f['threshold']}. Every row: all {f['records']:,} "
        f"records, median of {f['runs']} runs. ÷ ours: CPU time over ours' whole filter (verify).",
        "",
        "| method | what is timed | records/s (wall) | records/s (CPU) | CPU time ÷ ours' whole filter "
        "| recall (planted J ≥ 0.8) | precision (exact J ≥ 0.8) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in f["methods"]:
        q = ("recall" in m) and (
            f"{m['recall']:.4f} of {m['planted']:,}",
            f"{m['precision']:.4f} of {m['dropped']:,}",
        )
        lines.append(
            f"| {m['method']} | {m['what']} | {f0(m['records'] / m['wall_s'])} | {f0(m['records'] / m['cpu_s'])} "
            f"| {m['cpu_s'] / ref:.2f} | {q[0] if q else ''} | {q[1] if q else ''} |"
        )
    lines += [
        "",
        f"Planted near-duplicates: {f['planted']:,}, of which {f['planted_near']:,} have an exact Jaccard in "
        f"[0.75, 0.85).",
        "",
        "| shingles | per record | signatures + LSH, records/s (CPU) | Jaccard after one word replaced |",
        "|---|---|---|---|",
    ]
    for s in f["shingles"]:
        lines.append(
            f"| {s['shingle']} {s['ngram']}-grams | {s['per_record']:.0f} | {f0(f['records'] / s['cpu_s'])} "
            f"| {s['one_word_jaccard']:.2f} |"
        )
    lines.append("")
    lines.append("Missed: " + "; ".join(f["missed"]) if f["missed"] else "All targets met.")
    return "\n" + "\n".join(lines) + "\n"


def _dedup_figures() -> dict[str, Any]:
    d, by = _dedup()
    f = d["figures"]
    ours, noverify, core, ds = by["ours"], by["ours-noverify"], by["core"], by["datasketch"]
    word, char = (
        next(s for s in f["shingles"] if s["shingle"] == k and s["ngram"] == 5) for k in ("word", "char")
    )
    return {
        "when": when(d), "n": f"{f['records']:,}", "chars": f"{f['chars']:.0f}", "runs": f["runs"],
        "planted": f"{ours['planted']:,}", "ours": f0(f["records"] / ours["cpu_s"]),
        "ours_wall": f0(f["records"] / ours["wall_s"]), "core": f0(f["records"] / core["cpu_s"]),
        "ds": f0(f["records"] / ds["cpu_s"]), "ds_wall": f0(f["records"] / ds["wall_s"]),
        "ratio": sig(ds["cpu_s"] / ours["cpu_s"]), "ratio_wall": sig(ds["wall_s"] / ours["wall_s"]),
        "recall": f"{ours['recall']:.3f}", "precision": f"{ours['precision']:.3f}",
        "recall_nv": f"{noverify['recall']:.3f}", "precision_nv": f"{noverify['precision']:.3f}",
        "recall_ds": f"{ds['recall']:.3f}", "precision_ds": f"{ds['precision']:.3f}",
        "word": f"{word['per_record']:.0f}", "char": f"{char['per_record']:.0f}",
        "faster": sig(char["cpu_s"] / word["cpu_s"]), "jw": f"{word['one_word_jaccard']:.2f}",
        "jc": f"{char['one_word_jaccard']:.2f}",
    }  # fmt: skip


def dedup_summary() -> str:
    x = _dedup_figures()
    return (
        f"\nMeasured (`benchmarks/bench_dedup.py`, {x['when']}; {x['n']} generated records of ~{x['chars']} "
        f"characters with planted near-duplicates; medians of {x['runs']} runs on each side, CPU time): the whole "
        f"filter at {x['ours']} records/s (signatures + LSH alone at {x['core']}); datasketch with the same "
        f"shingles, permutations, bands and exact check (`MinHash.bulk`, `MinHashLSH`) at {x['ds']} records/s: "
        f"{x['ratio']}× ({x['ratio_wall']}× in wall-clock time). Recall {x['recall']} of the {x['planted']} records "
        f"planted at exact Jaccard ≥ 0.8 and precision {x['precision']}; deciding on the estimate instead "
        f"(`verify: false`) gives recall {x['recall_nv']} and precision {x['precision_nv']}. Word 5-grams make "
        f"{x['word']} shingles a record against ~{x['char']} for characters, so signatures + LSH run "
        f"{x['faster']}× faster; one replaced word leaves a word-5-gram Jaccard of {x['jw']} but a "
        f"character-5-gram one of {x['jc']}, so prefer `shingle: char` for short texts where single-word "
        f"edits matter.\n"
    )


# ------------------------------------------------------------------------------ bench_embed.py (embed.json)


def embed_table() -> str:
    d = _results.load("embed")
    f = d["figures"]
    lines = [
        f"Measured {d['date']} by `bench_embed.py` on {d['cpus']} CPUs, load average {d['load_start']:.1f} at "
        f"the start and {d['load_end']:.1f} at the end; {', '.join(f'{k} {v}' for k, v in d['versions'].items())}. "
        f"Every time is the median of {f['runs']} runs on the same input; nothing is extrapolated.",
        "",
        "| case | input | ours | peer, same input | peer ÷ ours | check |",
        "|---|---|---|---|---|---|",
    ]
    for c in f["dedup"]:
        same = c["same_drops_0.95"]
        lines.append(
            f"| dedup, {c['kind']} | {c['peer_vectors']:,} vectors | {c['ours_peer_s']:.2f} s "
            f"| sentence-transformers `paraphrase_mining_embeddings` {c['mining_s']:.2f} s; numpy brute force "
            f"{c['brute_s']:.2f} s | {sig(c['mining_s'] / c['ours_peer_s'])}× / {sig(c['brute_s'] / c['ours_peer_s'])}× "
            f"| drops at ≥ 0.95: ours {c['drops_0.95']['ours']:,}, mining {c['drops_0.95']['mining']:,}, brute force "
            f"{c['drops_0.95']['brute']:,}; rows decided as brute force does: ours {same['ours']:,}, mining "
            f"{same['mining']:,} |"
        )
    for c in f["dedup"]:
        lines.append(
            f"| dedup, {c['kind']}, ours alone | {c['vectors']:,} vectors | {c['ours_s']:.2f} s | | | recall "
            f"{c['rows_0.95']:.4f} at ≥ 0.95 ({c['rows_0.95_n']} sampled rows), {c['rows_0.9']:.4f} at ≥ 0.9 "
            f"({c['rows_0.9_n']}); planted pairs {c['planted_0.95']:.4f} at ≥ 0.95 ({c['planted_0.95_n']}), "
            f"{c['planted_0.9']:.4f} at ≥ 0.9 ({c['planted_0.9_n']}) |"
        )
    v = f["diversity"]
    lines.append(
        f"| diversity, k-center greedy, size {v['size']:,} | {v['vectors']:,} vectors | {v['ours_s']:.2f} s "
        f"| per-pick greedy {v['peer_s']:.2f} s | {sig(v['peer_s'] / v['ours_s'])}× | same picks: {v['same_picks']:.3f} |"
    )
    e = f["encoding"]
    if e:
        lines.append(
            f"| encoding, all-MiniLM-L6-v2, batch {e['batch']} | {e['sentences']} sentences ({e['words_avg']:.0f} "
            f"words avg) | {e['sentences'] / e['ours_s']:.0f} sentences/s | one at a time "
            f"{e['sentences'] / e['peer_s']:.0f} sentences/s | {sig(e['peer_s'] / e['ours_s'])}× | |"
        )
    lines += ["", "Targets: dedup of 100,000 vectors ≤ 10 s; recall at 0.95 ≥ 0.99."]
    lines.append("Missed: " + "; ".join(f["missed"]) if f["missed"] else "All targets met.")
    return "\n" + "\n".join(lines) + "\n"


def _embed_case(kind: str = "2,000 topics") -> tuple[dict[str, Any], dict[str, Any]]:
    d = _results.load("embed")
    return d, next(c for c in d["figures"]["dedup"] if c["kind"] == kind)


# -------------------------------------------------------------------------------------------- README.md


def ratelimit_summary() -> str:
    rl = _ratelimit()
    g = "goodput ÷ limit, first to last answer"
    return (
        f"Against a 3,000-a-minute limit, {rl['told']['requests']} requests took "
        f"{rl['told']['attempts per row']} attempts per row told and {rl['not told']['attempts per row']} not "
        f"told, at {rl['told'][g]} and {rl['not told'][g]} of the limit (`benchmarks/peers.py --only "
        f"ratelimit`, one run each, {peers_date('Rate limit')}, {peers_load('Rate limit')})."
    )


def filter_memory() -> str:
    e2e = table(PEERS_MD, "End to end")
    run_mb = num(row(e2e, pipeline="ours", stage="`factory run`")["peak MB so far"])
    fil_mb = num(row(e2e, pipeline="ours", stage="`factory filter` (minhash_dedup)")["peak MB so far"])
    return f"added {f0(fil_mb - run_mb)} MB of peak memory over generation at 100,000 records (`benchmarks/peers.py`, one run)"


def worker_cpu() -> str:
    cpu = run_steady("factory", "steady CPU µs/req")
    return (
        f"about {f0(round(1e6 / max(cpu), -2))}–{f0(round(1e6 / min(cpu), -2))} requests a second of client CPU "
        f"({f0(min(cpu))}–{f0(max(cpu))} µs a request in steady state, `benchmarks/run.py`, {run_date()})"
    )


def speed() -> str:
    ours, raw, sdk = run_steady("factory"), run_steady("raw"), run_steady("openai")
    cpu, raw_cpu = run_steady("factory", "steady CPU µs/req"), run_steady("raw", "steady CPU µs/req")
    p_ours, p_raw, p_cur = peers_steady("ours"), peers_steady("raw"), peers_steady("curator")
    col = "ours ÷ this (steady)"
    cache = table(RUN_MD, "Cache replay")
    rerun, other = cache[0], cache[1]
    ing = table(RUN_MD, "Store ingest")[0]
    sdk_n = row(table(RUN_MD, "Throughput"), client="openai")["requests×runs"].split("×")[0]
    x = _dedup_figures()
    ed, c = _embed_case()
    _, u = _embed_case("uniform")
    rl = _ratelimit()
    g = "goodput ÷ limit, first to last answer"
    e2e = table(PEERS_MD, "End to end")
    ot, pt = (
        row(e2e, pipeline="ours", stage="total"),
        row(e2e, pipeline="Curator + datasketch + pandas", stage="total"),
    )
    run = f"`run.py`, {run_date()}, {run_load()}"
    peers = f"`peers.py`, {peers_date()}, {peers_load('Throughput, 200 ms')}"
    rows = [
        ["steady requests/s at 64 / 256 / 1,024 in flight (200 ms server)", slash(ours),
         f"stock `AsyncOpenAI`: {slash(sdk)}", ratios(ours, sdk),
         f"{run}; ours median of 3, `AsyncOpenAI` one run of {int(num(sdk_n)):,} requests; not re-measured since"],
        ["same, against a bare aiohttp loop on uvloop", slash(ours), slash(raw), ratios(ours, raw, ""),
         f"{run}; medians of 3"],
        ["same, 10,000 requests a run, against a bare aiohttp loop", slash(p_ours), slash(p_raw),
         slash(peers_steady("raw", col), lambda x: f"{x:.2f}"), f"{peers}; medians of 3"],
        ["same, against bespokelabs-curator (5,000 requests a run)", slash(p_ours), slash(p_cur),
         slash(peers_steady("curator", col), lambda x: f"{x:.2f}") + "×", f"{peers}; medians of 3; not re-measured since"],
        ["client CPU per request incl. storage, steady", slash(cpu, unit=" µs"),
         f"bare aiohttp loop: {slash(raw_cpu, unit=' µs')}", ratios(cpu, raw_cpu, ""), f"{run}; medians of 3"],
        [f"re-running a finished {f0(num(rerun['requests']))}-request run",
         f"{rerun['teacher calls']} teacher calls, {rerun['time / rate']}", "", "", run],
        [f"the same {f0(num(other['requests']))} requests under a new run name",
         f"{f0(num(other['time / rate']))} records/s from the cache, {other['teacher calls']} teacher calls", "", "", run],
        ["store ingest, ~1 KB records, 20,000-row batches", f"{f0(num(ing['rate (median)']))} rows/s",
         f"target {f0(num(ing['target']))}", ing["÷ target"], f"{run}; median of 5 batches"],
        [f"near-duplicate dedup, whole filter (MinHash + LSH, 128 perms, exact check), {x['n']} records",
         f"{x['ours']} records/s (CPU), recall {x['recall']}, precision {x['precision']}",
         f"datasketch, same shingles, bands and check, `MinHash.bulk`: {x['ds']} records/s",
         f"{x['ratio']}× (CPU), {x['ratio_wall']}× (wall)", f"`bench_dedup.py`, {x['when']}; medians of {x['runs']}"],
        [f"embedding dedup, {c['peer_vectors']:,} vectors (in 2,000 topics / uniform)",
         f"{c['ours_peer_s']:.2f} / {u['ours_peer_s']:.2f} s",
         f"sentence-transformers `paraphrase_mining_embeddings`: {c['mining_s']:.2f} / {u['mining_s']:.2f} s",
         f"{sig(c['mining_s'] / c['ours_peer_s'])} / {sig(u['mining_s'] / u['ours_peer_s'])}×",
         f"`bench_embed.py`, {when(ed)}; medians of {ed['figures']['runs']}"],
        [f"{rl['told']['requests']} requests under a 3,000-a-minute limit (429 + Retry-After)",
         f"{rl['told']['attempts per row']} attempts per row told the limit, {rl['not told']['attempts per row']} "
         f"not told; {rl['told'][g]} / {rl['not told'][g]} of the limit",
         f"Curator told the limit: {rl['curator']['attempts per row']}, {rl['curator'][g]}", "",
         f"`peers.py`, {peers_date('Rate limit')}, {peers_load('Rate limit')}; one run each"],
        ["100,000 seeds end to end: generate, dedup, export to parquet", f"{ot['wall s']} s",
         f"Curator + datasketch + pandas: {pt['wall s']} s", f"{pt['this ÷ ours (wall)']}×",
         f"`peers.py`, {peers_date()}, {peers_load('End to end')}; one run each"],
    ]  # fmt: skip
    lines = ["| figure | ours | compared with | ratio | measured |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"Missed in the `run.py` run: {'; '.join(missed(RUN_MD))}."]
    return "\n" + "\n".join(lines) + "\n"


def view() -> str:
    d = _results.load("view")
    f = d["figures"]
    ms = f["ms"]
    browser = ms.get("page load, Chromium (to records drawn)")
    page = browser or ms["page load, HTTP only (6 requests)"]
    which = "page load" if browser else "page load over HTTP"
    lines = [
        f"Measured on a run of {f['records']:,} records (`benchmarks/bench_view.py`, {when(d)}; medians of "
        f"{f['tries']}; milliseconds):",
        "",
        "| figure | ours | compared with | ratio |",
        "|---|---|---|---|",
    ]
    for name, v in ms.items():
        if v is None:
            lines.append(f"| {name} | not measured (no Chromium on the measuring box) | | |")
        elif name.startswith("start-up"):
            lines.append(f"| {name} | {f0(v)} | | |")
        else:
            lines.append(f"| {name} | {f0(v)} | target 1,000 | {v / 1000:.2f} |")
    lines.append(
        f"| loading every record first (`curated_table`), what a page without server-side paging waits for "
        f"| {f0(f['peer_ms'])} | {which} {f0(page)} | {sig(f['peer_ms'] / page)}× slower |"
    )
    return "\n" + "\n".join(lines) + "\n"


def _cluster() -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, float]]]:
    d = _results.load("cluster")
    return d, d["figures"], d["figures"]["variants"]


def cluster() -> str:
    d, f, v = _cluster()
    base = v["ray, 1 worker"]["wall_s"]
    ing = f["ingest"]
    lines = [
        f"Measured {d['date']} by `bench_cluster.py` (Ray {d['versions']['ray']}, a private local Ray started by "
        f"each run, the fault server in its own process) on {d['cpus']} CPUs, load {d['load_start']:.1f} → "
        f"{d['load_end']:.1f}: {f['seeds']:,} seeds of the `prompt` "
        f"recipe, {f['latency_s'] * 1000:.0f} ms server latency, {f['in_flight']} in flight in all, "
        f"{f['shard_seeds']:,} seeds a shard; medians of {f['runs']}.",
        "",
        "| executor | wall s | records/s | records/s ÷ ray, 1 worker | CPU s of all processes | store MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, x in v.items():
        lines.append(
            f"| {name} | {x['wall_s']:.1f} | {f0(f['seeds'] / x['wall_s'])} | {base / x['wall_s']:.2f} "
            f"| {x['driver_cpu_s']:.1f} | {x['store_bytes'] / 1e6:.1f} |"
        )
    lines += [
        "",
        f"Driver ingest alone ({ing['records']:,} records of ~300 characters, from parquet parts into the store, "
        f"checked inserts): {ing['ingest_s']:.1f} s, {f0(ing['rows_per_s'])} records/s; "
        f"{ing['store_bytes_per_record']:.0f} store bytes per record.",
    ]
    return "\n" + "\n".join(lines) + "\n"


def cluster_reading() -> str:
    _, f, v = _cluster()
    two = v["ray, 1 worker"]["wall_s"] / v["ray, 2 workers"]["wall_s"]
    local = v["ray, 1 worker"]["wall_s"] / v["local (one process)"]["wall_s"]
    return (
        f"\n- **1 against 2 workers: {two:.2f}.** On two cores nothing is left for a second worker: the fault "
        f"server, the driver, Ray's own processes and the workers share them, so a second worker only adds "
        f"contention. The figure that carries over to a cluster is a worker's own rate: {worker_cpu()}.\n"
        f"- **Fixed costs.** Starting the private Ray, and each shard's scratch store, runner start and final "
        f"commit in the worker, and its snapshot and ingest in the driver. Ray is for runs that outgrow one "
        f"machine; for {f['seeds']:,} seeds the single process is {local:.1f}× faster.\n"
        f"- **Ingest.** {f0(f['ingest']['rows_per_s'])} records/s into the store (each record with its answer "
        f"and its seed's done row, inserts that skip rows already present), on one core.\n"
    )


def cluster_estimate() -> str:
    _, f, v = _cluster()
    cpu = run_steady("factory", "steady CPU µs/req")
    lo, hi = min(cpu), max(cpu)
    ingest = f["ingest"]["rows_per_s"]
    per = v["local (one process)"]["store_bytes"] / f["seeds"]
    rows = [
        ["teacher calls", "one per record (k samples = k records)", "100M requests"],
        ["client CPU in the workers", f"{f0(lo)}–{f0(hi)} µs a request (`run.py`, steady)",
         f"{1e8 * lo / 1e6 / 3600:.1f}–{1e8 * hi / 1e6 / 3600:.1f} CPU-hours: one worker's core keeps up with "
         f"{f0(round(1e6 / hi, -2))} requests/s"],
        ["time, API teacher", "the provider's limit, e.g. 10,000 requests a minute",
         "167 hours whatever the worker count"],
        ["time, vLLM teachers", "not measured on a GPU here; with G GPUs at r records/s each",
         "100M / (G·r)"],
        ["driver ingest", f"{f0(ingest)} records/s", f"{1e8 / ingest / 60:.0f} minutes of one core over the run, "
         "overlapped with generation"],
        ["store", f"{per:.0f} bytes a record here (short answers, with their request); it grows with text length",
         f"≈ {1e8 * per / 1e9:.0f} GB at these lengths"],
    ]  # fmt: skip
    lines = ["| what | figure used | 100M records |", "|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        f"Where the single driver becomes the bottleneck: at {f0(ingest)} records/s of ingest, a cluster "
        f"producing more than that waits on it.",
    ]
    return "\n" + "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[], str]] = {
    "run-header": run_header,
    "run-throughput": run_section("Throughput"),
    "run-cache": run_section("Cache replay"),
    "run-ingest": run_section("Store ingest"),
    "run-missed": run_missed,
    "run-reading": run_reading,
    "peers-header": peers_header,
    "peers-throughput": peers_section("Throughput, 200 ms"),
    "peers-lognormal": peers_section("Throughput, lognormal"),
    "peers-ratelimit": peers_section("Rate limit"),
    "peers-e2e": peers_section("End to end"),
    "peers-targets": peers_targets,
    "peers-reading": peers_reading,
    "dedup-table": dedup_table,
    "dedup-summary": dedup_summary,
    "embed-table": embed_table,
    "ratelimit-summary": ratelimit_summary,
    "filter-memory": filter_memory,
    "worker-cpu": worker_cpu,
    "speed": speed,
    "view": view,
    "cluster": cluster,
    "cluster-reading": cluster_reading,
    "cluster-estimate": cluster_estimate,
}


def render(name: str) -> str:
    """The block's text. A block of its own lines gets a blank line at either end, so that markdown reads the
    markers as HTML comments of their own and the table or list between them as markdown."""
    out = RENDERERS[name]()
    return "\n" + out + "\n" if out.startswith("\n") else out


# ------------------------------------------------------------------------------------------------ blocks


def blocks(text: str) -> list[tuple[str, str]]:
    """(name, text) of each figures block, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def rewrite(text: str) -> str:
    return BLOCK.sub(lambda m: f"<!-- figures:{m.group(1)} -->{render(m.group(1))}<!-- /figures -->", text)


def stale(paths: tuple[Path, ...] = READMES) -> list[str]:
    """'file: block' for each block whose text is not what its renderer makes of the results files."""
    out = []
    for p in paths:
        for name, body in blocks(p.read_text(encoding="utf-8")):
            if name not in RENDERERS:
                out.append(f"{p.name}: unknown block {name!r}")
            elif body != render(name):
                out.append(f"{p.name}: {name}")
    return out


def write(paths: tuple[Path, ...] = READMES) -> None:
    for p in paths:
        text = p.read_text(encoding="utf-8")
        new = rewrite(text)
        if new != text:
            p.write_text(new, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 naming each block that differs")
    a = ap.parse_args()
    if a.check:
        bad = stale()
        for b in bad:
            print(f"stale figures: {b} (python benchmarks/figures.py rewrites it)")
        return 1 if bad else 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
