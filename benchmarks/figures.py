"""The measured figures that README.md and benchmarks/README.md quote, rendered from the results files.

Every quoted figure sits in a block of one of the two READMEs,

    <!-- figures:NAME -->text<!-- /figures -->

whose text is what the renderer NAME (RENDERERS below) makes of the committed results files, which only the
benchmark scripts write: `results.md` (run.py), `peers_results.md` (peers.py), and `results/NAME.json`
(bench_dedup.py, bench_embed.py, bench_batch.py, bench_view.py, bench_cluster.py, demo_agreement.py,
bench_train.py, bench_key_index.py, bench_local_engine.py, bench_hf_teacher.py, bench_soft_labels.py,
bench_prompt_tokens.py, loop.py, gpu_check.py: its block says so while its file is absent).
The renderers live in figures_clients.py (run.py, peers.py) and figures_local.py (the others), each with
its rows of README.md's speed table, figures_train.py, figures_engine.py, figures_hf.py, figures_loop.py (loop.py), and here
(demo_agreement.py);
figures_read.py reads the files. To change what a block says, change its renderer or re-run its benchmark,
then rewrite the blocks:

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
from figures_clients import (  # noqa: E402
    client_speed_rows,
    filter_memory,
    peer_speed_rows,
    peers_header,
    peers_reading,
    peers_section,
    peers_targets,
    ratelimit_summary,
    run_header,
    run_missed,
    run_reading,
    run_section,
    worker_cpu,
)
from figures_engine import local_engine  # noqa: E402
from figures_hf import hf_teacher  # noqa: E402
from figures_local import (  # noqa: E402
    cluster,
    cluster_estimate,
    cluster_ingest,
    cluster_reading,
    dedup_summary,
    dedup_table,
    embed_encoding,
    embed_table,
    local_speed_rows,
    view,
)
from figures_loop import loop_table  # noqa: E402
from figures_quality import quality_table  # noqa: E402

# the markdown results files, which tests/test_readme_figures.py reads from here
from figures_read import PEERS_MD as PEERS_MD  # noqa: E402
from figures_read import RUN_MD, missed  # noqa: E402
from figures_reasoning import math_answers, stream  # noqa: E402
from figures_soft import soft_labels  # noqa: E402
from figures_train import gpu_check, train_throughput  # noqa: E402

READMES = (HERE.parent / "README.md", HERE / "README.md")
BLOCK = re.compile(r"<!-- figures:([a-z0-9-]+) -->(.*?)<!-- /figures -->", re.S)


def speed() -> str:
    """README.md's table of headline figures: a row of each results file's own renderer module, in order."""
    rows = client_speed_rows() + local_speed_rows() + peer_speed_rows()
    lines = ["| figure | ours | compared with | ratio | measured |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"Missed in the `run.py` run: {'; '.join(missed(RUN_MD))}."]
    return "\n" + "\n".join(lines) + "\n"


def pct(share: float) -> str:
    return f"{share:.1%}" if share < 0.1 else f"{share:.0%}"


def demo_agreement() -> str:
    d = _results.load("demo_agreement")
    f = d["figures"]

    def agreed(x: dict[str, Any]) -> str:
        p = x["settings"]["params"]
        return (
            f"with {p['k']} samples a question at temperature {p['temperature']:g}, {x['samples_agreeing']} of "
            f"{x['samples']} samples ({pct(x['share_samples_agreeing'])}) agree with gold, for "
            f"{x['questions_with_an_agreeing_sample']} of the {x['questions']} questions"
        )

    out = (
        f"{agreed(f)}, and the filters keep {f['curated_rows']} rows from {f['curated_questions']} questions"
    )
    took = f"run, export and report took {f['wall_s_median']['total']:.0f} s"
    m = f.get("multi_step")
    if m:
        out += f" (the multi-step problems of the earlier demo, {agreed(m)}, {m['curated_rows']} kept)"
        took += f", against {m['wall_s_median']['total']:.0f} s for the earlier demo"
    medians = f"median of {f['runs']}" if f["runs"] > 1 else "one run"
    return (
        f"{out}; {took} (`benchmarks/demo_agreement.py`, {d['date'][:10]}, {d['cpus']} CPUs, "
        f"load {d['load_start']:.1f} → {d['load_end']:.1f}; {medians})"
    )


def cpu_change() -> str:
    d = _results.load("cpu_change")
    f = d["figures"]
    rows = [
        f"| {int(c):,} | {v['raw_us']:.1f} µs | {v['before_us']:.1f} µs ({v['before_ratio']:.3f}) | "
        f"{v['after_us']:.1f} µs ({v['after_ratio']:.3f}) | {v['change']:+.1%} | "
        f"{v['change_of_medians']:+.1%} |"
        for c, v in sorted(f["levels"].items(), key=lambda kv: int(kv[0]))
    ]
    verdict = "missed: " + "; ".join(f["missed"]) if f["missed"] else "met at every level"
    pinned = f.get("pinned")
    where = (
        f", server on core {pinned['server'][0]}, clients on core {pinned['clients'][0]}" if pinned else ""
    )
    body = "\n".join(
        [
            f"Steady client CPU per request, median of {f['reps']} rounds (bare loop, before, after, one run "
            f"each), after = {f['after'][:7]} against before = {f['before'][:7]} ({d['date'][:10]}, {d['cpus']} CPUs{where}, "
            f"load {d['load_start']:.2f} → {d['load_end']:.2f}). The change is the median of the rounds' "
            "changes of the ratio; the change of the medians is beside it:",
            "",
            "| in flight | bare aiohttp loop | before (ratio to the loop) | after (ratio) | change of the ratio "
            "| change of the medians |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Target: the ratio within 5 % of before's: {verdict}.",
        ]
    )
    return "\n" + body + "\n"


def memory() -> str:
    """bench_memory.py: peak RSS of `factory run` per size, both trees (the earlier one up to the size it
    ran at), and the slopes."""
    d = _results.load("memory")
    f = d["figures"]

    def cell(v: dict[str, Any], side: str, key: str, fmt: str) -> str:
        return format(v[side][key], fmt) if side in v else "–"

    rows = [
        f"| {int(n):,} | {cell(v, 'before', 'peak_mb', '.0f')}{' MB' if 'before' in v else ''} | "
        f"{v['after']['peak_mb']:.0f} MB | "
        f"{cell(v, 'before', 'rps', ',.0f')} / {v['after']['rps']:,.0f} |"
        for n, v in sorted(f["sizes"].items(), key=lambda kv: int(kv[0]))
    ]
    per = f["bytes_per_request"]
    verdict = "missed: " + "; ".join(f["missed"]) if f["missed"] else "met"
    both = [int(n) for n, v in f["sizes"].items() if "before" in v]
    over = f"{min(both):,}–{max(both):,} requests" if both else "the sizes"
    after_all = (
        f" Over all of this tree's sizes: {f['after_all_sizes']:,.0f} bytes per request."
        if "after_all_sizes" in f
        else ""
    )
    ns = sorted(int(n) for n in f["sizes"])
    if len(ns) >= 3:  # the last step, once the fixed pools (page cache, log) have filled
        a, b = (f["sizes"][str(n)]["after"]["peak_mb"] for n in ns[-2:])
        after_all += (
            f" Between {ns[-2]:,} and {ns[-1]:,} requests: {(b - a) * 2**20 / (ns[-1] - ns[-2]):,.0f} bytes per "
            "request."
        )
    body = "\n".join(
        [
            f"Peak resident memory of the whole `factory run` process, {f['before'][:7]} against "
            f"{f['after'][:7]}, {f['in_flight']:,} requests in flight, {f['latency_s'] * 1000:.0f} ms server "
            f"latency ({d['date'][:10]}, {d['cpus']} CPUs, load {d['load_start']:.2f} → {d['load_end']:.2f}; "
            f"{'median of ' + str(f['reps']) + ' runs' if f['reps'] > 1 else 'one run'} a side and size):",
            "",
            "| requests | before | after | requests/s before / after |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Slope over {over}: {per['before']:,.0f} bytes per request before, {per['after']:,.0f} after "
            f"({f['ratio']:.1%} of before's).{after_all} Target: under 10 % of before's: {verdict}.",
        ]
    )
    return "\n" + body + "\n"


def key_index() -> str:
    """bench_key_index.py: DuckDB's index memory a row, insert rate and look-up time of each key design."""
    d = _results.load("key_index")
    f = d["figures"]
    rows = [
        f"| ({k}) {v['design']} | {v['index_bytes_per_row']:.0f} | {v['inserts_per_s']:,} | "
        f"{v['lookup_ms']:.0f} ({v['lookup_cold_ms']:.0f} cold) |"
        for k, v in f["designs"].items()
    ]
    body = "\n".join(
        [
            f"{f['rows']:,} random 32-character keys committed {f['batch']:,} a transaction, then a look-up of "
            f"{f['lookup_keys']:,} keys (half stored) in the reopened file ({d['date'][:10]}, {d['cpus']} CPUs, "
            f"load {d['load_start']:.2f} → {d['load_end']:.2f}; one run a design):",
            "",
            "| design | index bytes a row (peak) | rows inserted/s | look-up, ms |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    return "\n" + body + "\n"


def prompt_tokens() -> str:
    """The dry run's prompt-token estimate against the exact count (bench_prompt_tokens.py)."""
    d = _results.load("prompt_tokens")
    e = d["figures"]["all"]["chars_over_4"]
    return (
        f"against SmolLM2's tokenizer over {e['prompts']:,} prompts of our recipes, a median error of "
        f"{e['median']:.1%} and at most {e['max']:.1%} (`benchmarks/bench_prompt_tokens.py`, {d['date']})."
    )


def batch() -> str:
    """bench_batch.py: client CPU, peak RSS and bytes written of the batch path and the online path."""
    d = _results.load("batch")
    f = d["figures"]
    on, ba = f["online"], f["batch"]
    rows = [
        f"| {label} | {on[k]:,.1f} | {ba[k]:,.1f} | {ba[k] / on[k]:.2f} |"
        for k, label in (("cpu_s", "client CPU seconds"), ("peak_mb", "peak resident memory, MB"),
                         ("written_mb", "bytes written (store, journal, upload files), MB"),
                         ("store_mb", "store file at the end, MB"))
    ]  # fmt: skip
    body = "\n".join(
        [
            f"{f['requests']:,} requests of the `prompt` recipe, each side one whole `factory run` process against "
            f"the fault server (batch side: {ba['batches']:.0f} batch files, batch_rate 0; online side: 256 in "
            f"flight, no latency) ({d['date'][:10]}, {d['cpus']} CPUs, load {d['load_start']:.1f} → "
            f"{d['load_end']:.1f}; {'median of ' + str(f['reps']) + ' runs' if f['reps'] > 1 else 'one run'} a side):",
            "",
            "| figure | online | batch | batch ÷ online |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    return "\n" + body + "\n"


RENDERERS: dict[str, Callable[[], str]] = {
    "batch": batch,
    "prompt-tokens": prompt_tokens,
    "cpu-change": cpu_change,
    "memory": memory,
    "key-index": key_index,
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
    "embed-encoding": embed_encoding,
    "ratelimit-summary": ratelimit_summary,
    "filter-memory": filter_memory,
    "worker-cpu": worker_cpu,
    "speed": speed,
    "math-answers": math_answers,
    "stream": stream,
    "view": view,
    "cluster": cluster,
    "cluster-ingest": cluster_ingest,
    "cluster-reading": cluster_reading,
    "cluster-estimate": cluster_estimate,
    "demo-agreement": demo_agreement,
    "train-throughput": train_throughput,
    "gpu-check": gpu_check,
    "hf-teacher": hf_teacher,
    "quality-table": quality_table,
    "quality-kd-table": lambda: quality_table("quality_kd"),
    "local-engine": local_engine,
    "soft-labels": soft_labels,
    "loop": loop_table,
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


def show(name: str, rewrite_readmes: bool) -> None:
    """What a benchmark does after it saved its results: print its block, and rewrite the READMEs if asked."""
    print(render(name))
    if rewrite_readmes:
        write()


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
