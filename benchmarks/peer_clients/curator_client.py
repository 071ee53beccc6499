"""bespokelabs-curator against the fault server; run inside its own venv (benchmarks/.cache/venvs/curator).

    python curator_client.py --url URL --n N --c C [--rpm R] [--e2e OUT_DIR]

Curator's online OpenAI backend (`backend="openai"`, aiohttp underneath), pointed at the fault server with
`base_url`. Its response cache is off (CURATOR_DISABLE_CACHE=1: a fresh working folder per run, nothing
reused) and so is its telemetry (TELEMETRY_ENABLED=false), set before the import. In flight is its
`max_concurrent_requests`. It paces itself by requests and tokens per minute, which it reads from a
provider's x-ratelimit headers; the fault server sends none, and left unset Curator would pace at its
defaults of 200 requests and 100,000 tokens a minute. So for the throughput runs both limits are set far
above anything reachable here, and for the rate-limit run `max_requests_per_minute` is the server's true
limit (`--rpm`), as the headers of a real provider would tell it. The model
name is one litellm knows (`gpt-4o-mini`), so its cost tables and token estimates work as they would for a
user; the fault server answers any model name.

--e2e: the end-to-end peer. The completions (a `datasets.Dataset`, as Curator returns them) are deduplicated
with datasketch (MinHash, 128 permutations, word 5-grams of the normalised text, MinHashLSH with the same
32 bands × 4 rows as ours, a record dropped when an earlier one estimates ≥ 0.8) and written with
pandas `to_parquet`; the time of each stage is reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ["CURATOR_DISABLE_CACHE"] = "1"
os.environ["TELEMETRY_ENABLED"] = "false"
os.environ.setdefault("OPENAI_API_KEY", "bench-dummy-key")
# No internet here: tiktoken reads cl100k_base from the copy litellm (a Curator dependency) ships.
_LITELLM = importlib.util.find_spec("litellm")
if _LITELLM is not None and _LITELLM.submodule_search_locations:
    os.environ.setdefault(
        "TIKTOKEN_CACHE_DIR",
        str(Path(_LITELLM.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers"),
    )

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import MAX_TOKENS, TEMPERATURE, Monitor, Stages, emit, prompts  # noqa: E402

MODEL = "gpt-4o-mini"
UNLIMITED = 1_000_000_000


def shingles(text: str, k: int = 5) -> set[str]:
    words = re.sub(r"[\W_]+", " ", text.lower()).split()
    return {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def dedup(texts: list[str]) -> list[bool]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=128, params=(32, 4))
    sigs: dict[int, MinHash] = {}
    keep = []
    for k, t in enumerate(texts):
        m = MinHash(num_perm=128)
        m.update_batch([s.encode() for s in shingles(t)])
        hits = lsh.query(m)
        dup = bool(hits) and max(m.jaccard(sigs[h]) for h in hits) >= 0.8
        keep.append(not dup)
        sigs[k] = m
        lsh.insert(k, m)
    return keep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--c", type=int, required=True)
    ap.add_argument("--rpm", type=float, default=None, help="tell Curator the server's limit")
    ap.add_argument("--e2e", default=None, help="folder for the end-to-end peer's parquet file")
    a = ap.parse_args()

    from bespokelabs import curator

    # Libraries imported before the clock starts, as for every client.
    for mod in ["pandas"] + (["datasketch"] if a.e2e else []):
        importlib.import_module(mod)

    params: dict = {"base_url": a.url, "max_concurrent_requests": a.c, "max_retries": 10, "request_timeout": 600,
                    "require_all_responses": False}  # fmt: skip
    if a.rpm:
        params["max_requests_per_minute"] = int(a.rpm)
    params.setdefault("max_requests_per_minute", UNLIMITED)
    params["max_tokens_per_minute"] = UNLIMITED
    work = tempfile.mkdtemp(prefix="curator-bench-")
    items = prompts(a.n)
    mon = Monitor(a.url, a.n).begin()
    stages = Stages()
    llm = curator.LLM(model_name=MODEL, backend="openai", backend_params=params,
                      generation_params={"temperature": TEMPERATURE, "max_tokens": MAX_TOKENS})  # fmt: skip
    res = llm(items, working_dir=work)
    ds = res.dataset if hasattr(res, "dataset") else res
    ok = sum(1 for r in ds["response"] if r)
    stages.done("generate")
    extra: dict = {}
    if a.e2e:
        keep = dedup(list(ds["response"]))
        stages.done("dedup")
        df = ds.to_pandas()[keep]
        out = Path(a.e2e)
        out.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out / "data.parquet", index=False)
        stages.done("export")
        extra = {"kept": int(sum(keep)), "rows": len(df)}
    extra.update(stages.out)
    emit(mon.finish(client="curator", c=a.c, ok=ok, **extra))


if __name__ == "__main__":
    main()
