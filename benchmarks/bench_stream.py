"""Client CPU of long reasoning answers, streamed and plain: the openai teacher's streaming path (server-sent
events gathered by ``factory.teachers.sse``) against its plain path and against the stock ``AsyncOpenAI``
client streaming the same answers.

The fault server (its own process, uvloop) answers as a reasoning model (``reasoning_content``) with a trace
of ``--tokens`` tokens, streamed in chunks of 4 characters (one token an event, as real servers send them).
Each client asks the same ``--n`` distinct requests, ``--in-flight`` at once, in this process; its CPU time
(``time.process_time``) per answer is the figure, median of ``--repeats`` runs. The box is shared by others:
read the ratios, not the absolute times. After the timed runs, one more run of each client under
``tracemalloc`` gives the most memory its Python objects held at once (the answers in flight, their buffers),
per request in flight.

    .venv/bin/python benchmarks/bench_stream.py [--n 200] [--tokens 1000] [--in-flight 32] [--repeats 3]

Writes ``benchmarks/results/stream.json``. Exits 1 when our streamed path costs more CPU per answer than
the SDK's streaming (the target).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import context, save
from factory.teachers.openai import OpenAITeacher
from factory.testing.fault_server import start_subprocess
from factory.types import Completion, Request, Sampling


def _requests(n: int, tokens: int, salt: str) -> list[Request]:
    return [Request.chat(f"{salt} question {i}", sampling=Sampling(max_tokens=tokens * 2)) for i in range(n)]


async def _ours(url: str, reqs: list[Request], in_flight: int, stream: bool) -> int:
    t = OpenAITeacher(f"openai:m@{url}", f"m@{url}", {"stream": stream, "max_in_flight": in_flight})
    try:
        out = await t.complete(reqs)
    finally:
        await t.aclose()
    assert all(isinstance(c, Completion) and c.reasoning for c in out), out[:1]
    return sum(len(c.reasoning or "") for c in out if isinstance(c, Completion))


async def _sdk(url: str, reqs: list[Request], in_flight: int) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    sem = asyncio.Semaphore(in_flight)

    async def one(req: Request) -> int:
        async with sem:
            stream = await client.chat.completions.create(
                model="m", messages=list(req.messages), max_tokens=req.sampling.max_tokens,  # type: ignore[arg-type]
                temperature=req.sampling.temperature, stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            thought: list[str] = []
            async for chunk in stream:
                if chunk.choices:
                    piece = getattr(chunk.choices[0].delta, "reasoning_content", None)
                    if piece:
                        thought.append(piece)
            return len("".join(thought))

    try:
        sizes = await asyncio.gather(*(one(r) for r in reqs))
    finally:
        await client.close()
    assert all(sizes)
    return sum(sizes)


def _measure(kind: str, url: str, reqs: list[Request], in_flight: int) -> dict[str, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if kind == "sdk_stream":
        chars = asyncio.run(_sdk(url, reqs, in_flight))
    else:
        chars = asyncio.run(_ours(url, reqs, in_flight, stream=kind == "ours_stream"))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu_ms_per_answer": 1000 * cpu / len(reqs), "answers_per_s": len(reqs) / wall, "chars": chars}


def _peak_kb(kind: str, url: str, reqs: list[Request], in_flight: int) -> float:
    """The most memory the client's Python objects held at once during a run, per request in flight (KB)."""
    import tracemalloc

    tracemalloc.start()
    try:
        _measure(kind, url, reqs, in_flight)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / 1024 / min(in_flight, len(reqs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--tokens", type=int, default=1000, help="tokens of reasoning per answer")
    p.add_argument("--in-flight", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    ctx = context(["openai", "aiohttp", "httptools"])
    kinds = ["ours_plain", "ours_stream", "sdk_stream"]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    with start_subprocess(
        reasoning="reasoning_content", reasoning_tokens=args.tokens, stream_chunk_chars=4
    ) as srv:
        for r in range(args.repeats):
            for kind in kinds:  # each run asks new bodies: nothing is cached anywhere
                runs[kind].append(
                    _measure(kind, srv.base_url, _requests(args.n, args.tokens, f"{kind}{r}"), args.in_flight)
                )
        peaks = {
            kind: _peak_kb(kind, srv.base_url, _requests(args.n, args.tokens, f"{kind}-mem"), args.in_flight)
            for kind in kinds
        }
    figures: dict[str, Any] = {
        "n": args.n, "tokens": args.tokens, "in_flight": args.in_flight, "repeats": args.repeats,
        "events_per_answer": args.tokens + 30,
    }  # fmt: skip
    for kind in kinds:
        figures[kind] = {
            "cpu_ms_per_answer": round(statistics.median(x["cpu_ms_per_answer"] for x in runs[kind]), 3),
            "answers_per_s": round(statistics.median(x["answers_per_s"] for x in runs[kind]), 1),
            "peak_kb_per_request_in_flight": round(peaks[kind], 1),
        }
    ours, sdk, plain = (figures[k]["cpu_ms_per_answer"] for k in ("ours_stream", "sdk_stream", "ours_plain"))
    figures["stream_over_sdk_cpu"] = round(ours / sdk, 3)
    figures["stream_over_plain_cpu"] = round(ours / plain, 2)
    path = save("stream", ctx, figures)
    print("| client | CPU ms / answer | answers/s | peak KB / request in flight |\n|---|---|---|---|")
    for kind in kinds:
        f = figures[kind]
        print(
            f"| {kind} | {f['cpu_ms_per_answer']} | {f['answers_per_s']} | {f['peak_kb_per_request_in_flight']} |"
        )
    print(
        f"ours streamed / SDK streamed CPU: {figures['stream_over_sdk_cpu']}  (target < 1); written to {path}"
    )
    return 0 if ours < sdk else 1


if __name__ == "__main__":
    sys.exit(main())
