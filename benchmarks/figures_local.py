"""benchmarks/figures.py's renderers of the local benchmarks' figures: results/dedup.json, embed.json,
view.json and cluster.json, and their rows of README.md's table of headline figures."""

from __future__ import annotations

from typing import Any

import _results
from figures_clients import worker_cpu
from figures_read import f0, run_steady, sig, when

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


def dedup_figures() -> dict[str, Any]:
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
    x = dedup_figures()
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
    lines += ["", "Targets: dedup of 100,000 vectors ≤ 10 s; recall at 0.95 ≥ 0.99."]
    lines.append("Missed: " + "; ".join(f["missed"]) if f["missed"] else "All targets met.")
    return "\n" + "\n".join(lines) + "\n"


def embed_encoding() -> str:
    d = _results.load("embed_encoding")
    f = d["figures"]
    sec, vs = f["seconds"], f["vs_before"]
    n = f["sentences"]
    before = sec["before"]

    def row(name: str, label: str) -> str:
        v = vs[name]
        return (
            f"| {label} | {n / sec[name]:.0f} | {sig(before / sec[name])}× | {v['cos_median']:.4f} / "
            f"{v['cos_min']:.4f} | {v['max_abs_diff']:.1g} | {v['pairs_0.95_found']} of {v['pairs_0.95']} "
            f"(+{v['pairs_0.95_extra']}); {v['pairs_0.9_found']} of {v['pairs_0.9']} (+{v['pairs_0.9_extra']}) "
            f"| {v['same_decisions_0.95']:,} / {v['same_decisions_0.9']:,} of {n:,} |"
        )

    lines = [
        f"Measured {d['date']} by `bench_embed.py --encoding-only` on {d['cpus']} CPUs ({f['threads']} torch "
        f"threads), load average {d['load_start']:.1f} at the start and {d['load_end']:.1f} at the end; "
        f"{', '.join(f'{k} {v}' for k, v in d['versions'].items())}. all-MiniLM-L6-v2 on the CPU embeds {n:,} "
        f"sentences ({f['words_avg']:.0f} words on average) per side; median of {f['runs']} runs a side, in an "
        "order that rotates from run to run. Checks against before's vectors: cosine of each text's vector to before's (median / "
        "lowest), the largest change of a component, the pairs at cosine ≥ 0.95 and ≥ 0.9 found again (and "
        "new ones), and the texts `embed_dedup` decides alike at 0.95 / 0.9.",
        "",
        "| side | sentences/s | ÷ before | cosine to before | largest change | pairs ≥ 0.95; ≥ 0.9 | same decisions |",
        "|---|---|---|---|---|---|---|",
        f"| before: one `encode` call, batch 64 | {n / before:.0f} | 1× | | | | |",
        row("after", f"now: `factory.embeddings.encode`, CPU batch {f['cpu_batch']}"),
        row("batch_128", "batch 128"),
        row("batch_256", "batch 256"),
        row("int8", f"dynamic int8 quantization (`quantize_dynamic`), batch {f['cpu_batch']}"),
        "",
        "Targets: now within 5 % of before's time, and the same vectors (no component changed by more than 1e-5).",
        "Missed: " + "; ".join(f["missed"]) if f["missed"] else "All targets met.",
    ]
    return "\n" + "\n".join(lines) + "\n"


def embed_case(kind: str = "2,000 topics") -> tuple[dict[str, Any], dict[str, Any]]:
    d = _results.load("embed")
    return d, next(c for c in d["figures"]["dedup"] if c["kind"] == kind)


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


def cluster_ingest() -> str:
    d, f, v = _cluster()
    per = v["local (one process)"]["store_bytes"] / f["seeds"]
    return (
        f"{f0(f['ingest']['rows_per_s'])} records a second on one core, and the store took {per:.0f} bytes a "
        f"record for the short records of `benchmarks/bench_cluster.py` ({d['date'][:10]})"
    )


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


# ------------------------------------------------------------------------ rows of README.md's speed table


def local_speed_rows() -> list[list[str]]:
    """Near-duplicate dedup against datasketch, embedding dedup against sentence-transformers."""
    x = dedup_figures()
    ed, c = embed_case()
    _, u = embed_case("uniform")
    return [
        [f"near-duplicate dedup, whole filter (MinHash + LSH, 128 perms, exact check), {x['n']} records",
         f"{x['ours']} records/s (CPU), recall {x['recall']}, precision {x['precision']}",
         f"datasketch, same shingles, bands and check, `MinHash.bulk`: {x['ds']} records/s",
         f"{x['ratio']}× (CPU), {x['ratio_wall']}× (wall)", f"`bench_dedup.py`, {x['when']}; medians of {x['runs']}"],
        [f"embedding dedup, {c['peer_vectors']:,} vectors (in 2,000 topics / uniform)",
         f"{c['ours_peer_s']:.2f} / {u['ours_peer_s']:.2f} s",
         f"sentence-transformers `paraphrase_mining_embeddings`: {c['mining_s']:.2f} / {u['mining_s']:.2f} s",
         f"{sig(c['mining_s'] / c['ours_peer_s'])} / {sig(u['mining_s'] / u['ours_peer_s'])}×",
         f"`bench_embed.py`, {when(ed)}; medians of {ed['figures']['runs']}"],
    ]  # fmt: skip
