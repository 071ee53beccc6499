"""What the cache's key index costs DuckDB, per row, for several designs of the key column.

    python benchmarks/bench_key_index.py [--rows 1000000] [--batch 4096] [--lookups 7] [--designs a,b,c,d,e]

Each design gets a fresh DuckDB file in its own interpreter. Rows of random 32-character hex keys (as
factory.keys makes them) and a short answer go in by commits of ``--batch`` rows, as a run commits them,
with the run's checkpoint threshold; after each commit DuckDB's own count of the index memory
(``duckdb_memory()``, tag ART_INDEX) is read, and its largest value over the rows is the figure (DuckDB
loads an index whole to insert into it and keeps it until the next checkpoint). The process's peak RSS is
reported too (DuckDB's memory limit set as a run sets it: 80 MB of page cache, plus 128 bytes a row for
a design with an index). Then the store is reopened (as a resume does) and a look-up of 1,024 keys, half of them
stored, is timed: the first one (cold) and the median of ``--lookups`` more.

Designs: (a) VARCHAR key, PRIMARY KEY (today); (b) the 16 key bytes as UHUGEINT, PRIMARY KEY; (c) an
int64 prefix of the key with a plain index, the full key compared on look-up; (d) VARCHAR key, no index
(look-ups scan); (e) no index, an int64 prefix column that look-ups join on before comparing the key.
Writes `benchmarks/results/key_index.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import context, save  # noqa: E402

DESIGNS = {
    "a": "VARCHAR key, primary key",
    "b": "UHUGEINT key, primary key",
    "c": "int64 prefix, plain index",
    "d": "VARCHAR key, no index",
    "e": "int64 prefix, no index",
}
INDEXED = ("a", "b", "c")
MASK = 2**63 - 1


def prefix(key: str) -> int:
    """The key's first 64 bits as a signed int64."""
    v = int(key[:16], 16)
    return v - 2**64 if v > MASK else v


def schema(design: str) -> str:
    if design == "a":
        return "CREATE TABLE cache (key VARCHAR PRIMARY KEY, text VARCHAR)"
    if design == "b":
        return "CREATE TABLE cache (key UHUGEINT PRIMARY KEY, text VARCHAR)"
    if design == "c":
        return "CREATE TABLE cache (kp BIGINT NOT NULL, key VARCHAR NOT NULL, text VARCHAR); CREATE INDEX cache_kp ON cache (kp)"
    if design == "d":
        return "CREATE TABLE cache (key VARCHAR NOT NULL, text VARCHAR)"
    return "CREATE TABLE cache (kp BIGINT NOT NULL, key VARCHAR NOT NULL, text VARCHAR)"


def frame(design: str, keys: list[str]) -> Any:
    import pyarrow as pa

    text = pa.array([f"answer {k[:6]}" for k in keys])
    if design in ("a", "d"):
        return pa.table({"key": pa.array(keys), "text": text})
    if design == "b":
        return pa.table({"hi": pa.array([int(k[:16], 16) for k in keys], pa.uint64()),
                         "lo": pa.array([int(k[16:], 16) for k in keys], pa.uint64()), "text": text})  # fmt: skip
    return pa.table(
        {"kp": pa.array([prefix(k) for k in keys], pa.int64()), "key": pa.array(keys), "text": text}
    )


INSERT = {
    "a": "INSERT INTO cache SELECT key, text FROM f",
    "b": "INSERT INTO cache SELECT (hi::UHUGEINT << 64) | lo::UHUGEINT, text FROM f",
    "c": "INSERT INTO cache SELECT kp, key, text FROM f",
    "d": "INSERT INTO cache SELECT key, text FROM f",
    "e": "INSERT INTO cache SELECT kp, key, text FROM f",
}
LOOKUP = {
    "a": "SELECT c.key, c.text FROM cache c SEMI JOIN f ON c.key = f.key",
    "b": "SELECT c.key, c.text FROM cache c SEMI JOIN (SELECT (hi::UHUGEINT << 64) | lo::UHUGEINT AS k FROM f) f "
    "ON c.key = f.k",
    "c": "SELECT c.key, c.text FROM cache c JOIN f ON c.kp = f.kp AND c.key = f.key",
    "d": "SELECT c.key, c.text FROM cache c SEMI JOIN f ON c.key = f.key",
    "e": "SELECT c.key, c.text FROM cache c JOIN f ON c.kp = f.kp AND c.key = f.key",
}


def child(design: str, rows: int, batch: int, lookups: int, path: Path) -> dict[str, float]:
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("SET checkpoint_threshold = '32MB'")
    # as a run sets it: a page cache of 80 MB, and room for an index (when there is one) of 128 B a row
    room = 128 * rows if design in INDEXED else 0
    con.execute("SET memory_limit = ?", [f"{(80 * 2**20 + room) // 2**10}KiB"])
    for stmt in schema(design).split("; "):
        con.execute(stmt)
    rss0 = 0  # after the first commit: imports and DuckDB's start are not the rows' memory
    art_peak, sample = 0, []
    t0 = time.perf_counter()
    done = 0
    while done < rows:
        keys = [secrets.token_hex(16) for _ in range(min(batch, rows - done))]
        sample.extend(keys[: -(-1024 * batch // rows)])  # about 1,024 kept, spread over the rows
        f = frame(design, keys)
        con.execute("BEGIN TRANSACTION")
        con.register("f", f)
        con.execute(INSERT[design])
        con.unregister("f")
        con.execute("COMMIT")
        done += len(keys)
        rss0 = rss0 or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        art = con.execute(
            "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'ART_INDEX'"
        ).fetchone()
        art_peak = max(art_peak, int(art[0]) if art else 0)
    insert_s = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    con.close()
    con = duckdb.connect(str(path))
    con.execute("SET memory_limit = ?", [f"{(80 * 2**20 + room) // 2**10}KiB"])
    times = []
    for i in range(lookups + 1):
        ask = sample[i * 37 % max(1, len(sample) - 512) :][:512] + [secrets.token_hex(16) for _ in range(512)]
        f = frame(design, ask)
        t = time.perf_counter()
        con.register("f", f)
        found = con.execute(LOOKUP[design]).fetchall()
        con.unregister("f")
        times.append(time.perf_counter() - t)
        if len(found) != len(set(ask[:512])):
            raise SystemExit(f"design {design}: look-up found {len(found)} of {len(set(ask[:512]))}")
    con.close()
    return {
        "index_bytes_per_row": round(art_peak / rows, 1),
        "rss_growth_bytes_per_row": round((rss - rss0) * 1024 / rows, 1),
        "peak_rss_mb": round(rss / 1024, 1),
        "inserts_per_s": round(rows / insert_s),
        "lookup_cold_ms": round(times[0] * 1000, 2),
        "lookup_ms": round(statistics.median(times[1:]) * 1000, 2),
        "file_mb": round(path.stat().st_size / 2**20, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lookups", type=int, default=7)
    ap.add_argument("--designs", default=",".join(DESIGNS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        design, path = args.child.split(":", 1)
        print(json.dumps(child(design, args.rows, args.batch, args.lookups, Path(path))))
        return 0
    ctx = context(["duckdb", "pyarrow"])
    out: dict[str, object] = {"rows": args.rows, "batch": args.batch, "lookup_keys": 1024, "designs": {}}
    print(
        f"{'design':<28} {'index B/row':>11} {'RSS B/row':>10} {'inserts/s':>10} {'look-up ms':>10} {'cold ms':>8}"
    )
    with tempfile.TemporaryDirectory(prefix="factory-bench-keys-") as tmp:
        for d in args.designs.split(","):
            path = Path(tmp, f"{d}.duckdb")
            cmd = [sys.executable, __file__, "--rows", str(args.rows), "--batch", str(args.batch),
                   "--lookups", str(args.lookups), "--child", f"{d}:{path}"]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if res.returncode:
                raise SystemExit(res.stderr[-2000:])
            r = json.loads(res.stdout.strip().splitlines()[-1])
            out["designs"][d] = {"design": DESIGNS[d], **r}  # type: ignore[index]
            print(f"{d}) {DESIGNS[d]:<25} {r['index_bytes_per_row']:>11,.1f} {r['rss_growth_bytes_per_row']:>10,.1f} "
                  f"{r['inserts_per_s']:>10,} {r['lookup_ms']:>10.2f} {r['lookup_cold_ms']:>8.2f}", flush=True)  # fmt: skip
    print(f"wrote {save('key_index', ctx, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
