"""The measured figures that README.md and benchmarks/README.md quote, rendered from the results files.

Every quoted figure sits in a block of one of the two READMEs,

    <!-- figures:NAME -->text<!-- /figures -->

whose text is what the renderer NAME (RENDERERS below) makes of the committed results files, which only the
benchmark scripts write: `results.md` (run.py), `peers_results.md` (peers.py), and `results/NAME.json`
(bench_dedup.py, bench_embed.py, bench_view.py, bench_cluster.py). The renderers live in figures_clients.py
(run.py, peers.py) and figures_local.py (the others); figures_read.py reads the files. To change what a
block says, change its renderer or re-run its benchmark, then rewrite the blocks:

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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from figures_clients import (  # noqa: E402
    filter_memory,
    peers_header,
    peers_reading,
    peers_section,
    peers_targets,
    ratelimit_rows,
    ratelimit_summary,
    run_header,
    run_missed,
    run_reading,
    run_section,
    worker_cpu,
)
from figures_local import (  # noqa: E402
    cluster,
    cluster_estimate,
    cluster_ingest,
    cluster_reading,
    dedup_figures,
    dedup_summary,
    dedup_table,
    embed_case,
    embed_table,
    view,
)
from figures_read import (  # noqa: E402
    PEERS_MD,
    RUN_MD,
    f0,
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
    sig,
    slash,
    table,
    when,
)
from figures_train import train_throughput  # noqa: E402

READMES = (HERE.parent / "README.md", HERE / "README.md")
BLOCK = re.compile(r"<!-- figures:([a-z0-9-]+) -->(.*?)<!-- /figures -->", re.S)


def speed() -> str:
    ours, raw, sdk = run_steady("factory"), run_steady("raw"), run_steady("openai")
    cpu, raw_cpu = run_steady("factory", "steady CPU µs/req"), run_steady("raw", "steady CPU µs/req")
    p_ours, p_raw, p_cur = peers_steady("ours"), peers_steady("raw"), peers_steady("curator")
    col = "ours ÷ this (steady)"
    cache = table(RUN_MD, "Cache replay")
    rerun, other = cache[0], cache[1]
    ing = table(RUN_MD, "Store ingest")[0]
    sdk_n = row(table(RUN_MD, "Throughput"), client="openai")["requests×runs"].split("×")[0]
    x = dedup_figures()
    ed, c = embed_case()
    _, u = embed_case("uniform")
    rl = ratelimit_rows()
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
    "cluster-ingest": cluster_ingest,
    "cluster-reading": cluster_reading,
    "cluster-estimate": cluster_estimate,
    "train-throughput": train_throughput,
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
    try:
        for name in RENDERERS:
            render(name)
    except FileNotFoundError as e:
        print(f"figures: {e.filename} is missing: run the benchmark that writes it", file=sys.stderr)
        return 2
    except (KeyError, StopIteration, ValueError) as e:
        print(f"figures: a results file lacks a figure a block quotes ({e!r})", file=sys.stderr)
        return 2
    if a.check:
        bad = stale()
        for b in bad:
            print(f"stale figures: {b} (python benchmarks/figures.py rewrites it)")
        return 1 if bad else 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
