"""The `traces` filter: loops, mixed scripts and token bounds of reasoning traces, on real text and on the
failures reasoning models show."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from filters.base import Context, Row
from filters.traces import FILTER, TracesParams, foreign_share, repeated_share, tail_period

SVAMP = Path("/work/shared/data/palm_rationales/svamp_train.jsonl")


def _natural() -> str:
    """A long trace of real reasoning: PaLM 540B rationales, one after the other."""
    if not SVAMP.is_file():
        pytest.skip("the PaLM rationales are not here")
    lines = SVAMP.read_text(encoding="utf-8").splitlines()[:80]
    return "\n\n".join(json.loads(line)["teacher_rationale"] for line in lines)


def _decide(text: str, payload: dict[str, object] | None = None, **params: object) -> tuple[bool, str | None]:
    p = TracesParams(**params)
    (s,) = asyncio.run(
        FILTER.score([Row("r", "trace", "s", 0, text, payload or {})], p, Context("run", "reasoning"))
    )
    return FILTER.decide(s, p)


def test_real_reasoning_passes() -> None:
    text = _natural()
    assert len(text.split()) > 1500
    assert repeated_share(text) < 0.3 and tail_period(text, 8) is None and foreign_share(text) == 0.0
    assert _decide(text) == (True, None)


def test_a_trace_that_ends_in_a_loop_is_dropped() -> None:
    text = _natural() + "\nWait, let me check again. " * 30
    assert repeated_share(text) < 0.5  # most of it is fine: the repeating tail gives it away
    assert tail_period(text, 8) == len("\nWait, let me check again. ")
    ok, why = _decide(text)
    assert not ok and why is not None and why.startswith("ends in a loop")


def test_a_trace_that_keeps_repeating_itself_is_dropped() -> None:
    block = "So the total is the sum of the first part and the second part, which we computed above. "
    text = "Let me think. " + " ".join(f"Step {i}: {block}" for i in range(40)) + "Done."
    ok, why = _decide(text)
    assert not ok and why is not None and why.startswith("repeats itself")


def test_mixed_scripts_are_dropped_but_greek_mathematics_is_not() -> None:
    assert _decide("The angle θ is π/2, so sin θ = 1 and the answer is 1.") == (True, None)
    mixed = "First we add the numbers. 然后我们把结果除以二。 The answer is 4."
    ok, why = _decide(mixed)
    assert not ok and why is not None and why.startswith("mixes scripts")
    assert _decide(mixed, script=None) == (True, None)


def test_token_bounds_read_the_answer_s_token_count() -> None:
    assert _decide("short", {"completion_tokens": 12}, min_tokens=20) == (False, "shorter than 20 tokens")
    assert _decide("long", {"completion_tokens": 5000}, max_tokens=4096) == (False, "longer than 4096 tokens")
    assert _decide("fine", {"completion_tokens": 100}, min_tokens=20, max_tokens=4096) == (True, None)


def test_thresholds_do_not_change_the_version_but_measured_settings_do() -> None:
    base = FILTER.version(TracesParams())
    assert FILTER.version(TracesParams(max_repeated_share=0.9, max_tokens=10)) == base
    assert FILTER.version(TracesParams(min_tail_repeats=4)) != base
