import asyncio

import pytest

from factory.seeds import Seed
from factory.types import Completion
from recipes.rationale_answers import normalize_answer, parse_completion
from recipes.rationales import RationalesParams, prepare, process


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("4 x 6 = 24, minus 15 is 9. The answer is 9.", "9"),
        ("We get 1,200 apples. The answer is $1,200.", "1200"),
        ("Half of 7 is 3.5. The final answer is 3.50", "3.5"),
        ("Step one... #### 42", "42"),
        ("So 5 + 5 = 10 and then 10 * 2 = 20", "20"),
        ("Answer: Paris.", "paris"),
        ("I do not know.", None),
        ("4 x 6 = 24. The answer is 24.\n\nQuestion: a new one? The answer is 7.", "24"),
    ],
)
def test_parse_completion(text, answer):
    assert parse_completion(text)[1] == answer


def test_normalize_answer():
    assert normalize_answer("28.0") == "28" == normalize_answer(28)
    assert normalize_answer(" 1,000. ") == "1000"


def _run(params, answers, seed_data):
    state = prepare(RationalesParams(**params), lambda p: __import__("pathlib").Path(p))

    async def generate(req):
        return Completion(text=answers[req.sample_index], key=f"k{req.sample_index}")

    return asyncio.run(process(Seed("s1", seed_data), state, generate))


def test_gold_marks_positive_and_negative_and_keeps_both():
    drafts = _run(
        {"k": 3},
        ["2+2=4. The answer is 4.", "The answer is 5.", "no idea"],
        {"question": "2+2?", "answer": "4"},
    )
    labels = [d.payload["label"] for d in drafts]
    assert labels == ["positive", "negative", "negative"]
    assert drafts[2].reject == "no answer found in the completion"
    assert drafts[0].reject is None and drafts[0].request_keys == ("k0",)
    assert drafts[1].reject == "empty rationale"


def test_without_gold_majority_vote_and_share():
    drafts = _run(
        {"k": 4, "gold_field": None},
        ["a. The answer is 7.", "b. The answer is 7.", "c. The answer is 8.", "d. The answer is 7."],
        {"question": "?"},
    )
    assert {d.payload["majority_answer"] for d in drafts} == {"7"}
    assert [d.payload["vote_share"] for d in drafts] == [0.75, 0.75, 0.25, 0.75]
    assert [d.payload["agrees_with_majority"] for d in drafts] == [True, True, False, True]
    assert all(d.payload["label"] is None for d in drafts)


def test_seed_text_with_template_syntax_stays_text():
    from recipes.rationales import build_requests

    state = prepare(RationalesParams(k=1), lambda p: __import__("pathlib").Path(p))
    req = build_requests(Seed("x", {"question": "What is {{ 7*7 }} and {0}?"}), state)[0]
    assert "What is {{ 7*7 }} and {0}?" in req.messages[-1]["content"]


@pytest.mark.parametrize(
    "text, rationale, answer",
    [
        ("84 points in 2 rounds. The answer is (84 / 2).", "84 points in 2 rounds.", "42"),
        ("Add them. The answer is ((17 + 15) + 2).", "Add them.", "34"),
        # an expression that is not the whole sentence: its first number, as before
        ("The answer is 84 / 2 = 42.", "", "84"),
        ("Split it. The answer is (3 / 0).", "Split it.", "(3 / 0)"),  # no value: the line as text
        ("It fits. So the answer is (d) Math problem.", "It fits.", "math problem"),
    ],
)
def test_arithmetic_and_choice_answers(text, rationale, answer):
    assert parse_completion(text) == (rationale, answer)
