"""The LLM critic: parsing judgements, re-asking on malformed output, judging only what earlier filters kept,
and paying for each judgement once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from conftest import write_config
from test_curation import _teacher

from factory import api
from factory.errors import ConfigError
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from filters.critic import parse_judgement


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ('{"score": 8, "reason": "clear"}', (8.0, "clear")),
        ('Sure! {"score": "7.5", "reason": "ok"} Hope that helps.', (7.5, "ok")),
        ("Score: 7/10 - mostly right", (7.0, "")),
        ("I'd give it 9 out of 10.", (9.0, "")),
        ('{"score": 11, "reason": "wow"}', None),
        ('{"score": true}', None),
        ("great work", None),
        ("", None),
    ],
)
def test_parse_judgement(text, want):
    assert parse_judgement(text) == want


class Judge(ScriptedTeacher):
    """Scores by the record's answer: the right answer 9, a wrong one 3; the first ask of every third record
    is malformed (then re-asked), and one question never gets a readable score."""

    def __init__(self):
        super().__init__("scripted:judge", "judge", {"fn": self.answer})

    def answer(self, req):
        prompt = req.messages[1]["content"] if len(req.messages) > 1 else req.messages[0]["content"]
        if "A pizza is cut into 8 slices" in prompt:
            return "I refuse to use numbers."
        if req.sample_index == 0 and len(prompt) % 3 == 0:
            return "This looks fine to me."
        good = "Off by one" not in prompt
        return json.dumps({"score": 9 if good else 3, "reason": "right" if good else "wrong answer"})


def _cfg(tmp_path, seeds_file, min_score=6):
    return write_config(
        tmp_path,
        f"name: judged\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        "teacher: scripted:x\nteachers: {judge: 'scripted:judge'}\nparams: {k: 3}\n"
        f"filters:\n  - exact_dedup\n  - critic: {{teacher: judge, min_score: {min_score}}}\n",
    )


def test_the_critic_judges_survivors_once_and_records_failures(tmp_path, seeds_file):
    judge = Judge()
    prep = api.prepare(_cfg(tmp_path, seeds_file))
    res = asyncio.run(api.run_async(prep, teachers={"default": _teacher(seeds_file), "judge": judge}))
    f = res.curation.funnel
    critic = f["filters"][1]
    assert critic["in"] == 16  # duplicates were dropped before any judge was paid
    firsts = [c for c in judge.calls if c.sample_index == 0]
    assert len(firsts) == 16 and len(judge.calls) > 16  # malformed first answers were re-asked
    reasons = {r["reason"]: r["records"] for r in critic["top_reasons"]}
    assert reasons.get("no readable score after 3 attempts") == 2  # the question that never gets a score
    assert reasons.get("critic score below 6") == 7  # the wrong answers of the other seven questions
    assert f["curated"] == 7
    # the same pass again, forced: every judgement comes from the request cache
    again = Judge()
    with Store(tmp_path / "s.duckdb") as st:
        from factory.curation import apply_filters

        asyncio.run(apply_filters(st, res.run_id, prep.filters, teachers={"default": again, "judge": again},
                                  force=True))  # fmt: skip
    assert not again.calls


def test_a_new_min_score_needs_no_judge(tmp_path, seeds_file):
    prep = api.prepare(_cfg(tmp_path, seeds_file))
    asyncio.run(api.run_async(prep, teachers={"default": _teacher(seeds_file), "judge": Judge()}))
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        cached = st.count_cache()
    out = subprocess.run(
        [sys.executable, "-m", "factory.cli", "filter", "judged", "--store", str(tmp_path / "s.duckdb"),
         "--set", "critic.min_score=2", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["scored"]["critic"] == 0 and s["funnel"]["curated"] == 14  # wrong answers (3 ≥ 2) come back
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        assert st.count_cache() == cached


def test_a_critic_role_missing_from_the_config_is_a_config_error(tmp_path, seeds_file):
    cfg = write_config(
        tmp_path,
        f"name: j\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\nteacher: scripted:x\n"
        "filters:\n  - critic: {teacher: judge}\n",
    )
    with pytest.raises(ConfigError, match=r"critic: teacher role 'judge' is not defined"):
        api.prepare(cfg)
