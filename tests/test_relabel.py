"""The relabel recipe: parsing, voting, escalation and critique with exact outputs; then through the real
runner with several scripted teachers; then once for real on the embedded teacher (slow)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, write_config

from factory import api
from factory.errors import ConfigError, TeacherUnavailable
from factory.keys import request_key
from factory.seeds import Seed
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from factory.types import Completion, Request
from recipes.relabel import Label, RelabelParams, _LabelSpec, parse_label, prepare, process, sampling_seed

LABELS = ROOT / "data" / "seeds" / "support_labels.yaml"
CRITIQUE = "Re-read the text and your answer; reply with the final label only."


class Fake:
    """A generate with exact outputs by (role, sample index); records every call."""

    def __init__(self, answers: dict[tuple[str, int], str], fail: set[str] = frozenset()):
        self.answers = answers
        self.fail = fail
        self.calls: list[tuple[str, Request]] = []

    async def __call__(self, req: Request, *, teacher: str = "default") -> Completion:
        self.calls.append((teacher, req))
        await asyncio.sleep(0.01 * req.sample_index)  # answers arrive out of order
        if teacher in self.fail:
            raise TeacherUnavailable("down", kind="timeout")
        return Completion(text=self.answers[(teacher, req.sample_index)], key=f"{teacher}/{req.sample_index}")


def _state(**params):
    return prepare(RelabelParams(labels=str(LABELS), **params), Path)


def _label(answers, text="My card was charged twice.", **params):
    fake = Fake(answers)
    drafts = asyncio.run(process(Seed("s1", {"text": text}), _state(**params), fake))
    assert len(drafts) == 1 and drafts[0].stage == "label" and drafts[0].sample_index == 0
    return drafts[0], fake.calls


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("billing", "billing"),
        ("  Billing.\n", "billing"),
        ("Technical Issue", "technical_issue"),
        ("technical-issue", "technical_issue"),
        ("Label: account_access", "account_access"),
        ("The label is: feedback.", "feedback"),
        ('{"label": "other"}', "other"),
        ("I think this is billing, because of the charge.", "billing"),
        ("**technical_issue**", "technical_issue"),
        ("refund", None),  # a label outside the schema
        ("", None),  # an empty answer
        ("   ", None),
        ("billing or feedback", None),  # two labels: ambiguous
        ("another question", None),  # 'other' inside a word is no mention
        ("Labels:\n- billing: Charges, invoices,", None),  # the prompt's schema copied back
        ("- billing: Charges, in", None),
        ("billing: this text is about a charge", "billing"),
    ],
)
def test_parse_label(answer, label):
    assert parse_label(answer, _state().labels) == label


def test_a_name_inside_a_longer_name_is_not_a_second_mention():
    labels = [Label.of(_LabelSpec(name=n, description="d")) for n in ("account", "account_access")]
    assert parse_label("this is account access", labels) == "account_access"
    assert parse_label("account", labels) == "account"


def test_clear_majority():
    d, calls = _label({("a", 0): "billing", ("b", 1): "Billing.", ("c", 2): "technical_issue"},
                      voters=["a", "b", "c"], escalate_to="strong")  # fmt: skip
    p = d.payload
    assert p["label"] == "billing" and p["majority"] == "billing" and p["decided_by"] == "vote"
    assert p["confidence"] == d.score == pytest.approx(2 / 3)
    assert p["escalated"] is False and p["escalation"] is None and p["critique_used"] is False
    assert p["votes"][1] == {"role": "b", "answer": "Billing.", "label": "billing"}
    assert p["vote_counts"] == {"billing": 2, "technical_issue": 1} and p["valid_votes"] == 3
    assert d.reject is None and d.text == "My card was charged twice." == p["text"]
    assert d.request_keys == ("a/0", "b/1", "c/2") and [c[0] for c in calls] == ["a", "b", "c"]


def test_tie_escalates():
    d, calls = _label({("a", 0): "billing", ("b", 1): "feedback", ("strong", 2): "feedback"},
                      voters=["a", "b"], escalate_to="strong")  # fmt: skip
    p = d.payload
    assert p["label"] == "feedback" and p["escalated"] and p["decided_by"] == "escalation"
    assert p["escalation_reason"] == "tie between billing, feedback" and p["majority"] is None
    assert p["escalation"] == {"role": "strong", "answer": "feedback", "label": "feedback"}
    assert p["confidence"] == 0.5 and d.reject is None and len(d.request_keys) == 3
    esc = calls[-1][1]
    assert calls[-1][0] == "strong" and esc.sample_index == 2 and esc.sampling.temperature == 0.0
    assert esc.messages == calls[0][1].messages  # the same prompt as the voters'


def test_all_invalid_escalates_without_critique():
    d, calls = _label({("a", 0): "refund", ("a", 1): "", ("a", 2): "I am not sure.",
                       ("strong", 3): "Label: account_access"},
                      voters=["a", "a", "a"], escalate_to="strong", critique=True)  # fmt: skip
    p = d.payload
    assert p["label"] == "account_access" and p["escalation_reason"] == "no valid vote"
    assert [v["label"] for v in p["votes"]] == [None, None, None] and p["valid_votes"] == 0
    assert p["confidence"] == 0.0 and p["critique_used"] is False and len(calls) == 4


def test_without_escalation_undecided_texts_are_rejected():
    d, _ = _label({("a", 0): "billing", ("b", 1): "feedback"}, voters=["a", "b"])
    assert d.payload["label"] is None and d.reject == "tie between billing, feedback" and d.score == 0.0
    d, calls = _label({("a", 0): "refund", ("b", 1): ""}, voters=["a", "b"])
    assert d.payload["label"] is None and d.reject == "no valid vote" and len(calls) == 2


def test_an_invalid_escalation_answer_leaves_the_text_undecided():
    d, _ = _label(
        {("a", 0): "billing", ("b", 1): "feedback", ("s", 2): "hmm"}, voters=["a", "b"], escalate_to="s"
    )
    assert d.payload["label"] is None and d.payload["escalated"]
    assert d.reject == "tie between billing, feedback; the escalation teacher gave no valid label"


def test_critique_when_the_escalation_teacher_disagrees_with_the_majority():
    answers = {("a", 0): "billing", ("b", 1): "feedback", ("s", 2): "other", ("s", 3): "billing"}
    d, calls = _label(answers, voters=["a", "b"], escalate_to="s", critique=True)
    p = d.payload
    assert p["label"] == "billing" and p["decided_by"] == "critique" and p["critique_used"]
    assert p["escalation"]["label"] == "other" and p["critique"] == {
        "role": "s",
        "answer": "billing",
        "label": "billing",
    }
    role, second = calls[-1]
    first = calls[-2][1]
    assert role == "s" and second.sample_index == 3 and len(d.request_keys) == 4
    assert second.messages == (*first.messages, {"role": "assistant", "content": "other"},
                               {"role": "user", "content": CRITIQUE})  # fmt: skip


def test_critique_on_low_agreement_and_its_fallbacks():
    votes = {("a", 0): "billing", ("a", 1): "billing", ("a", 2): "feedback"}
    # 2 of 3 is below 1.0: escalated; the escalation teacher sides with the winner: no critique
    d, calls = _label({**votes, ("s", 3): "billing"}, voters=["a"] * 3, escalate_to="s", escalate_below=1.0,
                      critique=True)  # fmt: skip
    assert d.payload["escalation_reason"] == "agreement 0.67 below escalate_below 1.0"
    assert d.payload["label"] == "billing" and not d.payload["critique_used"] and len(calls) == 4
    # it disagrees and keeps its answer after re-reading
    d, _ = _label({**votes, ("s", 3): "other", ("s", 4): "other"}, voters=["a"] * 3, escalate_to="s",
                  escalate_below=1.0, critique=True)  # fmt: skip
    assert d.payload["label"] == "other" and d.payload["decided_by"] == "critique" and d.score == 0.0
    # the re-read answer does not parse: the first escalation answer stands
    d, _ = _label({**votes, ("s", 3): "feedback", ("s", 4): "..."}, voters=["a"] * 3, escalate_to="s",
                  escalate_below=1.0, critique=True)  # fmt: skip
    assert d.payload["label"] == "feedback" and d.payload["decided_by"] == "escalation"
    assert d.payload["confidence"] == pytest.approx(1 / 3)
    # neither parses: the voters' winner stands
    d, _ = _label({**votes, ("s", 3): "?", ("s", 4): "?"}, voters=["a"] * 3, escalate_to="s",
                  escalate_below=1.0, critique=True)  # fmt: skip
    assert d.payload["label"] == "billing" and d.payload["decided_by"] == "vote" and d.reject is None


def test_voters_on_one_role_send_distinct_requests():
    answers = {("default", i): "feedback" if i == 1 else "billing" for i in range(4)}
    _, calls = _label(answers, voters=["default"] * 3, voter_temperature=0.8, seed=10, escalate_to="default",
                      escalate_below=1.0)  # fmt: skip
    reqs = [r for _, r in calls]
    assert [r.sample_index for r in reqs] == [0, 1, 2, 3]
    assert [r.sampling.seed for r in reqs] == [sampling_seed(10, "s1", i) for i in range(4)]
    assert len({r.sampling.seed for r in reqs}) == 4
    # another text gets other seeds (votes do not correlate across texts); the same text the same ones
    assert sampling_seed(10, "s2", 0) != sampling_seed(10, "s1", 0) == reqs[0].sampling.seed
    assert [r.sampling.temperature for r in reqs] == [0.8, 0.8, 0.8, 0.0]
    keys = {request_key({"backend": "scripted", "model": "x"}, r.body()) for r in reqs}
    assert len(keys) == 4


def test_seed_text_with_template_syntax_stays_text():
    text = "What is {{ 7*7 }} and {0}? {% if x %}"
    d, calls = _label({("default", 0): "other"}, text=text)
    assert f"Text: {text}\n" in calls[0][1].messages[-1]["content"]
    assert "49" not in calls[0][1].messages[-1]["content"] and d.payload["text"] == text


def test_json_schema_offers_the_label_names():
    _, calls = _label({("default", 0): '{"label": "billing"}'}, json_schema=True)
    schema = calls[0][1].json_schema
    assert schema["properties"]["label"]["enum"] == ["billing", "technical_issue", "account_access",
                                                      "feedback", "other"]  # fmt: skip


def test_every_vote_finishes_before_a_failure_is_raised():
    fake = Fake({("a", 0): "billing", ("a", 2): "billing"}, fail={"b"})
    state = _state(voters=["a", "b", "a"])
    with pytest.raises(TeacherUnavailable):
        asyncio.run(process(Seed("s", {"text": "x"}), state, fake))
    assert [(t, r.sample_index) for t, r in fake.calls] == [("a", 0), ("b", 1), ("a", 2)]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[]", "holds an empty list"),
        ("- {name: billing, description: money}\n", "holds one label"),
        ("labels: []\n", "holds a dict"),
        (
            "- {name: a, description: x}\n- {name: b}\n",
            r"labels\[1\] \('b'\), field 'description': Field required",
        ),
        ("- {name: a, description: x}\n- {name: b, description: '  '}\n", r"labels\[1\].*'description'"),
        ("- {name: Billing, description: x}\n- {name: billing , description: y}\n", "duplicate label"),
        ("- {name: a_b, description: x}\n- {name: A B, description: y}\n", "duplicate label 'A B'"),
        ("- {name: a, description: x, colour: red}\n- {name: b, description: y}\n", "colour"),
        ("- {name: a, description: x}\n- {name: '__', description: y}\n", "no letters or digits"),
        ("- [unclosed\n", "cannot be read"),
    ],
)
def test_a_bad_labels_file_is_a_config_error_naming_it(tmp_path, content, match):
    bad = tmp_path / "labels.yaml"
    bad.write_text(content)
    with pytest.raises(ConfigError, match=match) as exc:
        prepare(RelabelParams(labels="labels.yaml"), lambda p: tmp_path / p)
    assert str(bad) in str(exc.value)


def test_labels_file_errors_and_json(tmp_path):
    with pytest.raises(ConfigError, match=r"params.labels: file .*nope.yaml not found"):
        prepare(RelabelParams(labels="nope.yaml"), lambda p: tmp_path / p)
    (tmp_path / "l.json").write_text(
        json.dumps([{"name": "yes", "description": "y"}, {"name": "no", "description": "n"}])
    )
    state = prepare(RelabelParams(labels="l.json"), lambda p: tmp_path / p)
    assert [x.name for x in state.labels] == ["yes", "no"]
    with pytest.raises(ConfigError, match=r"params\.critique needs params\.escalate_to"):
        prepare(RelabelParams(labels="l.json", critique=True), lambda p: tmp_path / p)


# -- through the runner --------------------------------------------------------------------------------
TEXTS = {
    "t1": "I was charged twice for March.",
    "t2": "The app is slow and I have an idea for it.",
    "t3": "Hello?",
    "t4": "Please refund my last payment.",
}
# (default idx 0, b idx 1, default idx 2) per text; strong answers by sample index (3: escalation, 4: critique)
VOTES = {
    "t1": ("billing", "billing", "billing"),
    "t2": ("billing", "feedback", "technical_issue"),  # a three-way tie
    "t3": ("no idea", "greeting", ""),  # nothing valid
    "t4": ("billing", "feedback", "Billing"),
}
STRONG = {("t2", 3): "other", ("t2", 4): "technical_issue", ("t3", 3): "other"}


def _which(req: Request) -> str:
    prompt = req.messages[1]["content"]
    return next(k for k, v in TEXTS.items() if f"Text: {v}\n" in prompt)


def _teachers():
    voter = lambda req: VOTES[_which(req)][req.sample_index]  # noqa: E731
    return {
        "default": ScriptedTeacher("scripted:a", "a", {"fn": voter}),
        "b": ScriptedTeacher("scripted:b", "b", {"fn": voter}),
        "strong": ScriptedTeacher("scripted:strong", "strong", {"fn": lambda r: STRONG[(_which(r), r.sample_index)]}),
    }  # fmt: skip


def _roles_config(tmp_path, teachers="{b: 'scripted:b', strong: 'scripted:strong'}", name="rl"):
    # commit_interval_s stays at its default (1 s), longer than these runs: one commit, at the end
    seeds = tmp_path / "texts.jsonl"
    seeds.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in TEXTS.items()))
    return write_config(
        tmp_path,
        f"name: {name}\nrecipe: relabel\nseeds: texts.jsonl\nstore: s.duckdb\nteacher: scripted:a\n"
        f"teachers: {teachers}\n"
        f"params: {{labels: {LABELS}, voters: [default, b, default], escalate_to: strong, critique: true}}\n",
        name=f"{name}.yaml",
    )


def test_several_teachers_through_the_runner(tmp_path):
    cfg = _roles_config(tmp_path)
    ts = _teachers()
    res = asyncio.run(api.run_async(api.prepare(cfg), teachers=ts))
    assert res.status == "done" and res.progress.records == 4
    assert sorted((_which(r), r.sample_index) for r in ts["default"].calls) == [
        (t, i) for t in sorted(TEXTS) for i in (0, 2)
    ]
    assert sorted(_which(r) for r in ts["b"].calls) == sorted(TEXTS)
    assert [r.sample_index for r in ts["b"].calls] == [1] * 4
    assert sorted((_which(r), r.sample_index) for r in ts["strong"].calls) == [
        ("t2", 3),
        ("t2", 4),
        ("t3", 3),
    ]
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        rows = {r["seed_id"]: r for r in st.records_table(res.run_id).to_pylist()}
        paid = {n: st.count_cache(f"scripted:{n}") for n in ("a", "b", "strong")}
        curated = st.curated_table(res.run_id).num_rows
    assert paid == {"a": 8, "b": 4, "strong": 3} and curated == 4
    got = {k: orjson.loads(r["payload"]) for k, r in rows.items()}
    assert {k: p["label"] for k, p in got.items()} == {"t1": "billing", "t2": "technical_issue", "t3": "other",
                                                        "t4": "billing"}  # fmt: skip
    assert {k: p["decided_by"] for k, p in got.items()} == {"t1": "vote", "t2": "critique", "t3": "escalation",
                                                             "t4": "vote"}  # fmt: skip
    assert got["t2"]["escalation_reason"] == "tie between billing, technical_issue, feedback"
    assert got["t4"]["confidence"] == pytest.approx(2 / 3) and rows["t1"]["text"] == TEXTS["t1"]
    assert len(rows["t2"]["request_keys"]) == 5 and rows["t2"]["stage"] == "label"
    # the same command again sends nothing
    again = _teachers()
    res2 = asyncio.run(api.run_async(api.prepare(cfg), teachers=again))
    assert res2.run_id == res.run_id and res2.progress.requests_sent == 0
    assert not any(t.calls for t in again.values())
    # another run name with the same requests: every answer from the cache, the same records
    cfg3 = _roles_config(tmp_path, name="rl3")
    third = _teachers()
    res3 = asyncio.run(api.run_async(api.prepare(cfg3), teachers=third))
    assert res3.progress.requests_sent == 0 and res3.progress.cache_hits == 15
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        rows3 = {r["seed_id"]: r["payload"] for r in st.records_table(res3.run_id).to_pylist()}
    assert rows3 == {k: r["payload"] for k, r in rows.items()}


def test_a_role_missing_from_teachers_is_a_config_error(tmp_path):
    cfg = _roles_config(tmp_path, teachers="{b: 'scripted:b'}")
    with pytest.raises(ConfigError, match=r"teacher role 'strong'.*teachers:"):
        api.prepare(cfg)
    out = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(cfg)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "'strong'" in out.stderr and not (tmp_path / "s.duckdb").exists()


def test_a_bad_role_name_in_params_is_a_config_error(tmp_path):
    cfg = _roles_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("voters: [default, b, default]", "voters: [default, Big]"))
    with pytest.raises(ConfigError, match=r"params.voters.1: .*'Big' is not a teacher role name"):
        api.prepare(cfg)


# -- for real -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_relabel_on_embedded_teacher_end_to_end(tmp_path):
    rows = (ROOT / "data" / "seeds" / "support_messages.jsonl").read_text().splitlines()[:4]
    (tmp_path / "texts.jsonl").write_text("\n".join(rows) + "\n")
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(
        f"name: rl-e2e\nrecipe: relabel\nseeds: texts.jsonl\nstore: s.duckdb\nteacher: embedded\n"
        f"params: {{labels: {LABELS}, voters: [default, default, default], voter_temperature: 0.8,\n"
        "  escalate_to: default, critique: true, max_tokens: 8}\n"
    )
    run = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(cfg), "--json"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    s = json.loads(run.stdout.strip().splitlines()[-1])
    assert s["status"] == "done" and s["records_added"] == 4 and 12 <= s["requests_sent"] <= 20
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        recs = st.records_table(s["run_id"]).to_pylist()
        paid = st.count_cache()
    assert len(recs) == 4 and paid == s["requests_sent"]
    names = {"billing", "technical_issue", "account_access", "feedback", "other"}
    for r in recs:
        p = orjson.loads(r["payload"])
        assert r["teacher"].startswith("embedded") and r["text"] == p["text"]
        assert len(p["votes"]) == 3 and all(v["role"] == "default" for v in p["votes"])
        assert p["label"] in names | {None} and 0.0 <= p["confidence"] <= 1.0
        assert p["escalated"] == (p["majority"] is None) and isinstance(p["critique_used"], bool)
