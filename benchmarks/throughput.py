"""One throughput client run against the fault server, in its own process; prints one JSON line.

Clients: `raw` (a bare aiohttp loop: the ceiling on this machine), `openai` (the stock AsyncOpenAI SDK with
its connection pool opened to the same limit), `factory` (the whole runner: prompt recipe, request keys,
cache look-ups, journal and DuckDB commits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import orjson


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# Steady state: CPU and count when a tenth and when nine tenths of the requests are done, so one-time costs
# (imports, first pyarrow conversion, store open; the drain, the final commit and checkpoint on close) are
# left out of the per-request slope. The whole-run figures include them.
MARK: dict[str, float] = {}
END: dict[str, float] = {}


def _mark(done: int, n: int) -> None:
    if not MARK and done >= n // 10:
        MARK.update(cpu=_cpu_s(), done=done, t=time.perf_counter())
    elif MARK and not END and done >= n * 9 // 10:
        END.update(cpu=_cpu_s(), done=done, t=time.perf_counter())


def _bodies(n: int, tag: str) -> list[dict]:
    return [
        {"model": "m", "messages": [{"role": "user", "content": f"{tag} prompt number {i}: say something"}],
         "temperature": 0.7, "max_tokens": 32, "seed": i}
        for i in range(n)
    ]  # fmt: skip


async def raw(url: str, n: int, c: int, tag: str) -> int:
    import aiohttp

    sem = asyncio.Semaphore(c)
    ok = 0
    conn = aiohttp.TCPConnector(limit=c, limit_per_host=c)
    async with aiohttp.ClientSession(connector=conn, headers={"Content-Type": "application/json"}) as s:

        async def one(body: dict) -> None:
            nonlocal ok
            async with sem, s.post(url + "/chat/completions", data=orjson.dumps(body)) as r:
                doc = orjson.loads(await r.read())
                ok += bool(doc["choices"][0]["message"]["content"])
                _mark(ok, n)

        await asyncio.gather(*(one(b) for b in _bodies(n, tag)))
    return ok


async def sdk(url: str, n: int, c: int, tag: str) -> int:
    import httpx
    import openai

    client = openai.AsyncOpenAI(
        base_url=url, api_key="bench", max_retries=2, timeout=httpx.Timeout(600.0, connect=120.0),
        http_client=openai.DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=c, max_keepalive_connections=c)),
    )  # fmt: skip
    sem = asyncio.Semaphore(c)
    ok = 0

    async def one(body: dict) -> None:
        nonlocal ok
        async with sem:
            try:
                r = await client.chat.completions.create(**body)
            except openai.APIError:  # counted as not ok; the run goes on
                return
            ok += bool(r.choices[0].message.content)
            _mark(ok, n)

    await asyncio.gather(*(one(b) for b in _bodies(n, tag)))
    await client.close()
    return ok


def factory_run(url: str, n: int, c: int, tag: str, workdir: Path) -> int:
    from factory import api

    seeds = workdir / "seeds.jsonl"
    seeds.write_text("".join(orjson.dumps({"id": f"s{i}", "text": f"{tag} prompt number {i}: say something"}).decode() + "\n"
                             for i in range(n)))  # fmt: skip
    cfg = workdir / "bench.yaml"
    cfg.write_text(
        f"name: bench\nrecipe: prompt\nseeds: {seeds}\nstore: {workdir / 'bench.duckdb'}\n"
        f"params: {{max_tokens: 32}}\nteacher: {{spec: 'openai:m@{url}', max_in_flight: {c}}}\n"
    )
    res = api.run(cfg, on_progress=lambda p: _mark(p.requests_sent, n))
    assert res.status == "done", res
    return res.progress.records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("client", choices=["raw", "openai", "factory"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--c", type=int, default=64)
    ap.add_argument("--tag", default="t")
    ap.add_argument("--workdir")
    ap.add_argument(
        "--uvloop", action="store_true", help="raw/openai clients on uvloop (ours picks it itself)"
    )
    a = ap.parse_args()
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="factory-bench-"))
    # Import first: start-up is not what is measured (each client pays its own once per process).
    if a.client == "raw":
        import aiohttp  # noqa: F401
    elif a.client == "openai":
        import httpx  # noqa: F401
        import openai  # noqa: F401
    else:
        import factory.api
        import factory.teachers.openai  # noqa: F401
        import recipes.prompt  # noqa: F401
    cpu0, t0 = _cpu_s(), time.perf_counter()
    run = asyncio.run
    if a.uvloop:
        import uvloop

        run = uvloop.run
    if a.client == "raw":
        ok = run(raw(a.url, a.n, a.c, a.tag))
    elif a.client == "openai":
        ok = run(sdk(a.url, a.n, a.c, a.tag))
    else:
        ok = factory_run(a.url, a.n, a.c, a.tag, workdir)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steady = {}
    if MARK and END and END["done"] > MARK["done"]:
        steady = {"steady_cpu_us": (END["cpu"] - MARK["cpu"]) / (END["done"] - MARK["done"]) * 1e6,
                  "steady_rps": (END["done"] - MARK["done"]) / (END["t"] - MARK["t"])}  # fmt: skip
    json.dump(
        {
            "client": a.client,
            "c": a.c,
            "n": a.n,
            "ok": ok,
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_mb": peak_mb,
            **steady,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
