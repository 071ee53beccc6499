"""distilabel against the fault server; run inside its own venv (benchmarks/.cache/venvs/distilabel).

    python distilabel_client.py --url URL --n N --c C

A `Pipeline` of `LoadDataFromDicts` >> `TextGeneration(llm=OpenAILLM(base_url=URL, ...))`, the way its docs
build one. `TextGeneration` sends a batch's requests at once (`asyncio.gather`) and the next batch when the
slowest of them is back, so the in-flight limit is the batch size: both steps get `batch_size` /
`input_batch_size` = C (its default is 50). `OpenAILLM` builds its own `AsyncOpenAI`, whose connection
pool holds at most 1,000 connections: at 1,024 in flight the last 24 wait for a connection. The pipeline
and the step run with `use_cache=False` in a fresh cache folder (DISTILABEL_CACHE_DIR); each step runs in
a worker process, so CPU and memory are counted over the process tree.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENAI_API_KEY", "bench-dummy-key")
os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
WORK = tempfile.mkdtemp(prefix="distilabel-bench-")
os.environ["DISTILABEL_CACHE_DIR"] = WORK

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import MAX_TOKENS, TEMPERATURE, Monitor, emit, prompts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--c", type=int, required=True)
    ap.add_argument("--max-retries", type=int, default=6, help="OpenAILLM's default")
    a = ap.parse_args()

    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    logging.getLogger("distilabel").setLevel(logging.WARNING)
    rows = [{"instruction": p} for p in prompts(a.n)]
    mon = Monitor(a.url, a.n, children=True).begin()
    with Pipeline(name="peer-bench", cache_dir=WORK) as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=a.c)
        gen = TextGeneration(
            llm=OpenAILLM(model="m", base_url=a.url, max_retries=a.max_retries,
                          generation_kwargs={"temperature": TEMPERATURE, "max_new_tokens": MAX_TOKENS}),
            input_batch_size=a.c, use_cache=False,
        )  # fmt: skip
        load >> gen
    try:
        distiset = pipeline.run(use_cache=False)
    except Exception as exc:  # the run's failure is a result: the rows it delivered are none
        emit(
            mon.finish(client="distilabel", c=a.c, ok=0, rows=0, failure=f"{type(exc).__name__}: {exc}"[:300])
        )
        return
    ds = distiset["default"]["train"]
    ok = sum(1 for g in ds["generation"] if g)
    emit(mon.finish(client="distilabel", c=a.c, ok=ok, rows=len(ds)))


if __name__ == "__main__":
    main()
