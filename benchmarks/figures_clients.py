"""benchmarks/figures.py's renderers of the API client figures: run.py's results.md and peers.py's
peers_results.md, and their rows of README.md's table of headline figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import _results
from figures_read import (
    PEERS_MD,
    RUN_MD,
    f0,
    header,
    missed,
    num,
    peers_date,
    peers_load,
    peers_steady,
    ratios,
    row,
    run_date,
    run_load,
    run_steady,
    slash,
    table,
)

STEADY_RATIO = "ours ÷ this (steady)"
GOODPUT = "goodput ÷ limit, first to last answer"
GLUED = "Curator + datasketch + pandas"  # the end-to-end peer pipeline


def _section(path: Path, prefix: str) -> Callable[[], str]:
    """A renderer of the section (heading, sentence, table) of ``path`` whose heading begins ``prefix``."""

    def render() -> str:
        head = next(h for h in _results.md_tables(path) if h.startswith(prefix))
        return "\n" + _results.md_section(path, head) + "\n"

    return render


# ------------------------------------------------------------------------------------- run.py (results.md)


def run_header() -> str:
    return header(RUN_MD)


def run_section(prefix: str) -> Callable[[], str]:
    return _section(RUN_MD, prefix)


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
    return _section(PEERS_MD, prefix)


def e2e_stage(stage: str, pipeline: str = "ours") -> dict[str, str]:
    """A row of the end-to-end table: ``stage`` of ``pipeline`` (ours, or GLUED)."""
    return row(table(PEERS_MD, "End to end"), pipeline=pipeline, stage=stage)


def ratelimit_rows() -> dict[str, dict[str, str]]:
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
    col = STEADY_RATIO
    vs_raw, vs_best = (
        peers_steady("raw", col),
        [
            min(a, b)
            for a, b in zip(peers_steady("curator", col), peers_steady("distilabel", col), strict=True)
        ],
    )
    rl = ratelimit_rows()
    g = GOODPUT
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
    rl = ratelimit_rows()
    ot, pt = e2e_stage("total"), e2e_stage("total", GLUED)
    orun, ofil = e2e_stage("`factory run`"), e2e_stage("`factory filter` (minhash_dedup)")
    oexp = e2e_stage("`factory export --format parquet`")
    cgen, cds = e2e_stage("curator.LLM", GLUED), e2e_stage("datasketch MinHashLSH", GLUED)
    cpq = e2e_stage("pandas to_parquet", GLUED)
    kept = [num(x["rows exported"]) for x in (ot, pt)]
    return (
        f"\n- **Curator is CPU-bound**: {min(steady):.1f}–{max(steady):.1f} ms of client CPU per request in "
        f"steady state ({min(whole):.1f}–{max(whole):.1f} ms over the whole run), so it never kept more than "
        f"{f0(min(inflight))}–{f0(max(inflight))} requests in flight at the server above 64 in flight: "
        f"{c1024['req/s, steady']} requests/s at 1,024 in flight, against ours' {ours1024['req/s, steady']} at "
        f"{ours1024['steady CPU µs/req']} µs a request with the store and cache included. It is closest at 64 "
        f"in flight (ours {c64['ours ÷ this (steady)']}× steady, {c64['ours ÷ this (whole run)']}× whole run). "
        f"These are medians of 3 from one run of peers.py ({peers_date()}, {peers_load('Throughput, 200 ms')}), not "
        f"re-measured since.\n"
        f"- **distilabel** spends {min(dcpu):.1f}–{max(dcpu):.1f} ms of CPU a request (the `openai` SDK on "
        f"httpx, and its step processes) and is batch-synchronous: with a heavy latency tail every batch waits "
        f"for its slowest answer ({d256['req/s, steady']} requests/s at 256 in flight, "
        f"{d256['steady ÷ bound']} of the bound). `OpenAILLM` builds its own `AsyncOpenAI`, whose pool holds "
        f"at most 1,000 connections: at 1,024 in flight the server never saw more than "
        f"{row(t, **{'in flight': '1024', 'client': 'distilabel'})['max in flight at server']}.\n"
        f"- **Rate limit** (one run each, {peers_date('Rate limit')}, {peers_load('Rate limit')}). Curator, "
        f"told the limit, paced itself to it: {rl['curator']['attempts per row']} attempts per row, "
        f"{rl['curator'][GOODPUT]} of the limit between the first and last "
        f"answer. distilabel retries each request in the SDK (honouring `Retry-After`) and gives up after 6; "
        f"in this run it failed when the dataset was built and delivered no rows. Ours, told "
        f"`max_requests_per_minute`, spaces its starts at the limit: {rl['told']['429s']} 429s in "
        f"{rl['told']['requests']} rows, {rl['told'][GOODPUT]} of the limit. "
        f"Not told, the first 429 starts pacing at half the rate being sent; the rate is then cut on a 429 and "
        f"raised 10% after each quiet second, and every 429's `Retry-After` holds back all of the teacher's "
        f"requests: {rl['not told']['429s']} 429s ({rl['not told']['attempts per row']} attempts per row), "
        f"{rl['not told'][GOODPUT]} of the limit. A 429 does not use up "
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


def ratelimit_summary() -> str:
    rl = ratelimit_rows()
    g = GOODPUT
    return (
        f"Against a 3,000-a-minute limit, {rl['told']['requests']} requests took "
        f"{rl['told']['attempts per row']} attempts per row told and {rl['not told']['attempts per row']} not "
        f"told, at {rl['told'][g]} and {rl['not told'][g]} of the limit (`benchmarks/peers.py --only "
        f"ratelimit`, one run each, {peers_date('Rate limit')}, {peers_load('Rate limit')})."
    )


def filter_memory() -> str:
    run_mb = num(e2e_stage("`factory run`")["peak MB so far"])
    fil_mb = num(e2e_stage("`factory filter` (minhash_dedup)")["peak MB so far"])
    return f"added {f0(fil_mb - run_mb)} MB of peak memory over generation at 100,000 records (`benchmarks/peers.py`, one run)"


def worker_cpu() -> str:
    cpu = run_steady("factory", "steady CPU µs/req")
    return (
        f"about {f0(round(1e6 / max(cpu), -2))}–{f0(round(1e6 / min(cpu), -2))} requests a second of client CPU "
        f"({f0(min(cpu))}–{f0(max(cpu))} µs a request in steady state, `benchmarks/run.py`, {run_date()})"
    )


# ------------------------------------------------------------------------ rows of README.md's speed table


def client_speed_rows() -> list[list[str]]:
    """Throughput against the SDK, the bare loop and Curator, client CPU, cache replay and store ingest."""
    ours, raw, sdk = run_steady("factory"), run_steady("raw"), run_steady("openai")
    cpu, raw_cpu = run_steady("factory", "steady CPU µs/req"), run_steady("raw", "steady CPU µs/req")
    p_ours, p_raw, p_cur = peers_steady("ours"), peers_steady("raw"), peers_steady("curator")
    col = STEADY_RATIO
    cache = table(RUN_MD, "Cache replay")
    rerun, other = cache[0], cache[1]
    ing = table(RUN_MD, "Store ingest")[0]
    sdk_n = row(table(RUN_MD, "Throughput"), client="openai")["requests×runs"].split("×")[0]
    run = f"`run.py`, {run_date()}, {run_load()}"
    peers = f"`peers.py`, {peers_date()}, {peers_load('Throughput, 200 ms')}"
    return [
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
    ]  # fmt: skip


def peer_speed_rows() -> list[list[str]]:
    """The rate-limit run and the end-to-end run against Curator + datasketch + pandas."""
    rl = ratelimit_rows()
    g = GOODPUT
    ot, pt = e2e_stage("total"), e2e_stage("total", GLUED)
    return [
        [f"{rl['told']['requests']} requests under a 3,000-a-minute limit (429 + Retry-After)",
         f"{rl['told']['attempts per row']} attempts per row told the limit, {rl['not told']['attempts per row']} "
         f"not told; {rl['told'][g]} / {rl['not told'][g]} of the limit",
         f"Curator told the limit: {rl['curator']['attempts per row']}, {rl['curator'][g]}", "",
         f"`peers.py`, {peers_date('Rate limit')}, {peers_load('Rate limit')}; one run each"],
        ["100,000 seeds end to end: generate, dedup, export to parquet", f"{ot['wall s']} s",
         f"{GLUED}: {pt['wall s']} s", f"{pt['this ÷ ours (wall)']}×",
         f"`peers.py`, {peers_date()}, {peers_load('End to end')}; one run each"],
    ]  # fmt: skip
