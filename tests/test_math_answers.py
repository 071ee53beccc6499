"""Final answers of traces and answers compared as mathematics (recipes/math_answers.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from recipes.math_answers import MAX_CHARS, equivalent, final_answer
from recipes.rationale_answers import answers_agree

TABLE = Path(__file__).parent / "data" / "math_answer_pairs.jsonl"
ROWS = [json.loads(line) for line in TABLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_table_holds_both_kinds_of_pair() -> None:
    assert sum(r["same"] for r in ROWS) >= 30 and sum(not r["same"] for r in ROWS) >= 20


@pytest.mark.parametrize("row", ROWS, ids=[r["note"] for r in ROWS])
def test_every_pair_of_the_table_both_ways(row: dict[str, object]) -> None:
    a, b = str(row["a"]), str(row["b"])
    assert equivalent(a, b) is row["same"]
    assert equivalent(b, a) is row["same"]


def test_the_number_check_alone_misses_what_mathematics_sees() -> None:
    # what the rationales recipe's check gets wrong and this one gets right
    assert not answers_agree(r"\frac{1}{2}", "0.5") and equivalent(r"\frac{1}{2}", "0.5")
    assert not answers_agree("1,000", "1000") and equivalent("1,000", "1000")


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"First $x = 2$, so the total is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{1} was wrong; redo: \boxed{2}", "2"),
        (r"\boxed{\{1, \{2\}\}}", r"\{1, \{2\}\}"),
        ("Adding them gives 12. The answer is 42.", "42"),
        ("Thus the final answer is $x=3$. Done.", "x=3"),
        ("So, Answer: (1, 2)", "(1, 2)"),
        ("The answer is 3.5.", "3.5"),
        ("I could not finish the computation", None),
        ("", None),
        (None, None),
        (r"so it is \boxed{\frac{1}{", None),  # cut off inside the box
    ],
)
def test_final_answer(text: str | None, answer: str | None) -> None:
    assert final_answer(text) == answer


def test_empty_and_missing_answers_are_never_equal() -> None:
    assert not equivalent(None, "1") and not equivalent("1", None) and not equivalent("", "")
    assert not equivalent(" ", " ")


def test_long_answers_are_compared_as_text_only() -> None:
    long_a = "+".join(["x"] * (MAX_CHARS // 2 + 1))
    assert equivalent(long_a, long_a)
    assert not equivalent(long_a, long_a.replace("x", "y", 1))


def test_a_thread_that_is_not_the_main_one_compares_too() -> None:
    # Math-Verify's time-out alarm works in the main thread only; elsewhere the comparison runs without it
    got: list[bool] = []
    t = threading.Thread(
        target=lambda: got.extend([equivalent(r"2\sqrt{2}", r"\sqrt{8}"), equivalent("x", "y")])
    )
    t.start()
    t.join(60)
    assert got == [True, False]


def test_a_comparison_that_overruns_is_cut_off_in_any_thread() -> None:
    # SymPy would take minutes on this power tower; it is counted as different after the time-out, and the
    # next comparison still works (in another thread: after the helper process was replaced)
    for_thread: list[bool] = []

    def compare() -> None:
        for_thread.extend([equivalent("9^{9^{9}}", "2"), equivalent(r"\frac{1}{2}", "0.5")])

    t = threading.Thread(target=compare)
    t.start()
    t.join(120)
    assert for_thread == [False, True]
    assert equivalent("9^{9^{9}}", "2") is False and equivalent(r"\frac{1}{2}", "0.5") is True
