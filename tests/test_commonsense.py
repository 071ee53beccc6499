"""The commonsense (Symbolic Knowledge Distillation) recipe: tail and event parsing, the events stage feeding
the tails stage, sample indices, concurrency, config errors, template safety; a scripted run through the
runner into a real store; and the demo path on the embedded teacher (slow)."""

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
from factory.seeds import Seed
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from factory.types import Completion, Request
from recipes.commonsense import CommonsenseParams, parse_event, parse_tail, prepare, process

HEAD = "PersonX goes to the store"


def _state(**params):
    return prepare(CommonsenseParams(**params), Path)


def _rel(state, name):
    return next(r for r in state.relations if r.name == name)


def _query(req: Request) -> str:
    """The last line of the prompt: the relation phrasing the tail completes (tails stage)."""
    return req.messages[-1]["content"].rsplit("\n", 1)[1]


def _run(state, seed_data, answer, seed_id="s1"):
    """process() with a fake generate: ``answer(request) -> text``; returns (drafts, requests)."""
    calls: list[Request] = []

    async def generate(req, *, teacher="default"):
        calls.append(req)
        return Completion(text=answer(req), finish_reason="stop", key=f"k{len(calls)}")

    return asyncio.run(process(Seed(seed_id, seed_data), state, generate)), calls


# -- parsing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "tail", "reject"),
    [
        ("to buy some milk.", "to buy some milk", None),
        ('"Happy."', "happy", None),
        ("  \n- Proud\n", "proud", None),
        ("1. to find a wallet\n2. to get the car keys\n3. to write a list", "to find a wallet", None),
        (f"{HEAD}. Before that, PersonX needed to get the car keys.", "to get the car keys", None),
        ("Before that, PersonX needed: a shopping bag", "a shopping bag", None),
        ("Answer: to get cash", "to get cash", None),
        ("PersonX needed to find the list", "to find the list", None),
        ("PersonX's wallet", "PersonX's wallet", None),
        (f"{HEAD}. Before that, PersonX needed\nto find a parking spot", "to find a parking spot", None),
        ("---\n* Cheerful", "cheerful", None),
        ("PersonX gets tired", "PersonX gets tired", None),
        ("personx's car breaks down", "PersonX's car breaks down", None),
        ("TV remote", "TV remote", None),
        ("New York traffic", "New York traffic", None),
        ("I am hungry", "I am hungry", None),
        ("I'm hungry", "I'm hungry", None),
        ("A nap", "a nap", None),
        ("Satisfied PersonY", "satisfied PersonY", None),
        ("", "", "empty completion"),
        ("   \n\n  ", "", "empty completion"),
        ("None.", "none", "tail is 'none'"),
        ("n/a", "n/a", "tail is 'n/a'"),
        ("1.", "", "no tail left after stripping numbering, labels, quotes and punctuation"),
        ("?? ...", "??", "no words in the tail"),
        ("PersonX goes to the store.", HEAD, "tail repeats the head"),
        (" ".join(["word"] * 13), " ".join(["word"] * 13), "tail too long (13 words > 12)"),
    ],
)
def test_parse_tail(text, tail, reject):
    state = _state()
    assert parse_tail(Completion(text, "stop"), HEAD, _rel(state, "xNeed"), 12) == (tail, reject)


def test_partial_echo_of_the_relation_phrasing_is_stripped():
    state = _state()
    done = Completion("PersonX feels proud.", "stop")
    assert parse_tail(done, HEAD, _rel(state, "xReact"), 12) == ("proud", None)
    assert (
        parse_tail(Completion("As a result, PersonX gets tired"), HEAD, _rel(state, "xEffect"), 12)[0]
        == "gets tired"
    )
    assert parse_tail(Completion("PersonX."), HEAD, _rel(state, "xEffect"), 12)[1].startswith("no tail left")


def test_tail_cut_off_at_max_tokens_is_rejected_but_a_finished_first_line_is_not():
    rel = _rel(_state(), "xWant")
    assert (
        parse_tail(Completion("to go home and", "length"), HEAD, rel, 12)[1] == "tail cut off at max_tokens"
    )
    assert parse_tail(Completion("to go home\nand then", "length"), HEAD, rel, 12) == ("to go home", None)


@pytest.mark.parametrize(
    ("text", "event", "reject"),
    [
        ("1. PersonX buys a new car.", "PersonX buys a new car", None),
        ("Event: Person X walks PersonY's dog\nPersonX sleeps", "PersonX walks PersonY's dog", None),
        ('"PersonX paints the kitchen"', "PersonX paints the kitchen", None),
        ("Here's a new event: PersonX adopts a cat.", "PersonX adopts a cat", None),
        ("Here is one: 2. PersonX sells the old piano", "PersonX sells the old piano", None),
        ("Here's a new event for the list:\n6. PersonX repairs the roof", "PersonX repairs the roof", None),
        ("The dog barks at night.", "The dog barks at night", "event does not mention PersonX"),
        ("", "", "empty completion"),
        ("none", "none", "event is 'none'"),
    ],
)
def test_parse_event(text, event, reject):
    assert parse_event(Completion(text, "stop"), 20) == (event, reject)


# -- the stages ----------------------------------------------------------------------------------------
def test_tails_for_seed_event_every_draft_kept_with_reasons():
    state = _state(relations=["xNeed", "xReact"], samples=3)
    answers = {
        ("Before that, PersonX needed", 0): "to get the car keys.",
        ("Before that, PersonX needed", 1): "None",
        ("Before that, PersonX needed", 2): "",
        ("Afterwards, PersonX feels", 0): "1. Satisfied\n2. tired",
        ("Afterwards, PersonX feels", 1): "PersonX goes to the store",
        ("Afterwards, PersonX feels", 2): "---",
    }
    drafts, calls = _run(
        state, {"event": HEAD + "."}, lambda r: answers[_query(r).split(". ", 1)[1], r.sample_index]
    )
    assert len(calls) == len(drafts) == 6
    assert [d.stage for d in drafts] == ["tails"] * 6
    assert [d.sample_index for d in drafts] == list(range(6))
    got = [(d.payload["relation"], d.payload["sample"], d.payload["tail"], d.reject) for d in drafts]
    assert got == [
        ("xNeed", 0, "to get the car keys", None),
        ("xNeed", 1, "none", "tail is 'none'"),
        ("xNeed", 2, None, "empty completion"),
        ("xReact", 0, "satisfied", None),
        ("xReact", 1, HEAD, "tail repeats the head"),
        ("xReact", 2, None, "no tail left after stripping numbering, labels, quotes and punctuation"),
    ]
    first = drafts[0]
    assert first.payload["head"] == HEAD and first.payload["head_source"] == "seed"
    assert (
        first.payload["head_sample_index"] is None and first.payload["completion"] == "to get the car keys."
    )
    assert first.text == f"{HEAD}. Before that, PersonX needed to get the car keys."
    assert first.request_keys == ("k1",) and first.score is None and first.parent_ids == ()
    # sampling: tails temperature; the request's sample index is the sample within the pair; every request
    # draws its own noise (seed from base seed, prompt, sample), the same on a re-run, another with another base
    assert {r.sampling.temperature for r in calls} == {0.9}
    assert [r.sample_index for r in calls] == [0, 1, 2] * 2
    seeds = [r.sampling.seed for r in calls]
    assert len(set(seeds)) == 6
    again = _run(state, {"event": HEAD}, lambda r: "x")[1]
    assert [r.sampling.seed for r in again] == seeds
    other = _run(_state(relations=["xNeed", "xReact"], samples=3, seed=1), {"event": HEAD}, lambda r: "x")[1]
    assert not set(seeds) & {r.sampling.seed for r in other}


def test_new_events_feed_the_tails_stage():
    state = _state(relations=["xWant", "oReact"], samples=2, new_events=3, seed=10)
    new_events = {
        0: "1. PersonX buys a new umbrella.",
        1: "PersonX goes to the store",
        2: "PersonX buys a new umbrella",
    }

    def answer(req):
        if "Write one new event" in req.messages[-1]["content"]:
            return new_events[req.sample_index]
        return f"tail {req.sample_index}"

    drafts, calls = _run(state, {"event": HEAD}, answer)
    events = [d for d in drafts if d.stage == "events"]
    tails = [d for d in drafts if d.stage == "tails"]
    assert [(d.sample_index, d.payload["event"], d.reject) for d in events] == [
        (0, "PersonX buys a new umbrella", None),
        (1, HEAD, "repeats the seed event"),
        (2, "PersonX buys a new umbrella", "repeats events sample 0"),
    ]
    assert all(d.payload["seed_event"] == HEAD for d in events)
    # only the accepted new event becomes a head: (seed + 1 new event) x 2 relations x 2 samples
    assert len(tails) == 8 and len(calls) == 3 + 8
    generated = [d for d in tails if d.payload["head_source"] == "generated"]
    assert len(generated) == 4
    assert {d.payload["head"] for d in generated} == {"PersonX buys a new umbrella"}
    assert {d.payload["head_sample_index"] for d in generated} == {0}
    # head slot 1 + events sample 0 -> indices (1*2 + r)*2 + s
    assert sorted(d.sample_index for d in generated) == [4, 5, 6, 7]
    for stage in ("events", "tails"):
        idx = [d.sample_index for d in drafts if d.stage == stage]
        assert len(idx) == len(set(idx))
    assert all(d.payload["sample_index"] == d.sample_index for d in tails)
    ev_req = [r for r in calls if "Write one new event" in r.messages[-1]["content"]]
    assert [(r.sample_index, r.sampling.temperature) for r in ev_req] == [(0, 1.0), (1, 1.0), (2, 1.0)]
    # successive samples show different example events (variety), all after the seed event
    prompts = [r.messages[-1]["content"] for r in ev_req]
    assert len(set(prompts)) == 3 and all(f"1. {HEAD}\n" in p for p in prompts)


def test_a_new_event_that_copies_an_example_is_rejected_and_gets_no_tails():
    state = _state(relations=["xNeed"], samples=1, new_events=1)
    drafts, _ = _run(
        state,
        {"event": HEAD},
        lambda r: "PersonX paints the fence." if r.sampling.temperature == 1.0 else "x",
    )
    assert [(d.stage, d.reject) for d in drafts] == [("events", "copies an example event"), ("tails", None)]


def test_each_stage_sends_its_requests_at_once():
    state = _state(relations=["xNeed", "xIntent", "xWant"], samples=2, new_events=2)
    in_flight, peaks = 0, []

    async def generate(req, *, teacher="default"):
        nonlocal in_flight
        in_flight += 1
        peaks.append(in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        if "Write one new event" in req.messages[-1]["content"]:
            return Completion(f"PersonX learns skill {req.sample_index}")
        return Completion("to relax")

    drafts = asyncio.run(process(Seed("s", {"event": HEAD}), state, generate))
    assert len(drafts) == 2 + 3 * 3 * 2
    assert max(peaks[:2]) == 2 and max(peaks[2:]) == 18  # events stage, then every tail request together


def test_a_failed_request_is_raised_after_every_other_answer_arrived():
    state = _state(relations=["xNeed", "xIntent"], samples=2)
    finished = []

    async def generate(req, *, teacher="default"):
        if "needed" in _query(req) and req.sample_index == 0:
            raise TeacherUnavailable("boom", kind="timeout")
        await asyncio.sleep(0.01)
        finished.append(req)
        return Completion("to relax")

    with pytest.raises(TeacherUnavailable):
        asyncio.run(process(Seed("s", {"event": HEAD}), state, generate))
    assert len(finished) == 3


def test_seed_text_with_template_syntax_stays_text():
    state = _state(relations=["xNeed"], samples=1, new_events=1)
    event = "PersonX writes {{ 7*7 }} and {0} on the board"
    drafts, calls = _run(state, {"event": event}, lambda r: "PersonX erases {{ 7*7 }}")
    assert f"1. {event}\n" in calls[0].messages[-1]["content"]  # the events prompt
    assert calls[1].messages[-1]["content"].endswith(f"\n{event}. Before that, PersonX needed")
    assert not any("49" in r.messages[-1]["content"] for r in calls)
    assert drafts[0].payload["event"] == "PersonX erases {{ 7*7 }}"
    assert {d.payload["head"] for d in drafts if d.stage == "tails"} == {event, "PersonX erases {{ 7*7 }}"}


def test_event_field_and_no_system_message():
    state = _state(relations=["xAttr"], samples=1, event_field="text", system=None)
    drafts, calls = _run(state, {"text": "PersonX wins the race"}, lambda r: "Fast")
    assert [m["role"] for m in calls[0].messages] == ["user"]
    assert (
        drafts[0].payload["tail"] == "fast"
        and drafts[0].text == "PersonX wins the race. PersonX is seen as fast."
    )


# -- config ---------------------------------------------------------------------------------------------
def test_unknown_relation_names_the_field_and_lists_the_valid_ones():
    with pytest.raises(ConfigError) as exc:
        _state(relations=["xNeed", "xNed"])
    msg = str(exc.value)
    assert "params.relations" in msg and "'xNed'" in msg and "Did you mean 'xNeed'?" in msg
    assert all(name in msg for name in ("xIntent", "oReact", "HinderedBy", "isBefore"))


def test_relation_listed_twice_is_an_error():
    with pytest.raises(ConfigError, match="listed twice"):
        _state(relations=["xNeed", "xNeed"])


def test_default_is_every_shipped_relation_in_file_order():
    names = [r.name for r in _state().relations]
    assert names[:3] == ["xNeed", "xIntent", "xWant"] and len(names) == 12
    assert all(len(r.shots) >= 3 for r in _state().relations)


RELS = """relations:
  - name: causes
    description: What the event causes.
    prompt: "{{ head }}. This causes"
    examples:
      - {head: PersonX drops a glass, tail: a mess on the floor}
  - name: needs
    prompt: "To do this ({{ head }}), PersonX needs"
"""


def test_user_relations_file_and_version_follows_every_file(tmp_path):
    rels = tmp_path / "rels.yaml"
    rels.write_text(RELS)
    state = prepare(CommonsenseParams(relations_file="rels.yaml"), lambda p: tmp_path / p)
    assert [r.name for r in state.relations] == ["causes", "needs"]
    assert state.example_events == ("PersonX drops a glass",)
    drafts, calls = _run(state, {"event": HEAD}, lambda r: "something", seed_id="e1")
    assert (
        calls[0]
        .messages[-1]["content"]
        .endswith(f"PersonX drops a glass. This causes a mess on the floor.\n{HEAD}. This causes")
    )
    assert drafts[-1].text == f"To do this ({HEAD}), PersonX needs something."

    def version(**params):
        return prepare(CommonsenseParams(**params), lambda p: tmp_path / p).version

    base = version(relations_file="rels.yaml")
    rels.write_text(RELS.replace("a mess on the floor", "broken glass"))
    changed = version(relations_file="rels.yaml")
    (tmp_path / "t.j2").write_text("{{ query }}")
    (tmp_path / "e.j2").write_text("More: {{ event }}")
    assert (
        len({base, changed, version(), version(tails_template="t.j2"), version(events_template="e.j2")}) == 5
    )
    assert version() == _state().version  # stable for the same files


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("relations:\n  - {name: a, prompt: no head here}\n", r"prompt must contain \{\{ head \}\}"),
        ("relations:\n  - {name: a, prompt: '{{ head }'}\n", r"relations\[0\] \(a\)\.prompt"),
        ("relations:\n  - {name: a, prompt: '{{ head }}', colour: red}\n", "field 'relations.0.colour'"),
        ("relations:\n  - {name: 'x y', prompt: '{{ head }}'}\n", "field 'relations.0.name'"),
        (
            "relations:\n  - {name: a, prompt: '{{ head }}'}\n  - {name: a, prompt: '{{ head }}!'}\n",
            "defined twice",
        ),
        ("relations: [\n", "malformed YAML"),
        ("relations: []\n", "field 'relations'"),
    ],
)
def test_bad_relations_file_is_a_config_error(tmp_path, body, match):
    (tmp_path / "r.yaml").write_text(body)
    with pytest.raises(ConfigError, match=match):
        prepare(CommonsenseParams(relations_file="r.yaml"), lambda p: tmp_path / p)


def test_missing_files_and_bad_templates_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"params\.relations_file"):
        prepare(CommonsenseParams(relations_file="nope.yaml"), lambda p: tmp_path / p)
    (tmp_path / "bad.j2").write_text("{% for x in %}")
    with pytest.raises(ConfigError, match=r"params\.tails_template"):
        prepare(CommonsenseParams(tails_template="bad.j2"), lambda p: tmp_path / p)
    (tmp_path / "undef.j2").write_text("{{ nothing_like_this.attr }}")
    with pytest.raises(ConfigError, match=r"params\.events_template: template undef\.j2 cannot render"):
        prepare(CommonsenseParams(events_template="undef.j2"), lambda p: tmp_path / p)


def test_config_errors_through_the_api(tmp_path):
    seeds = tmp_path / "ev.jsonl"
    seeds.write_text('{"id": "a", "event": "PersonX sings"}\n')
    cfg = write_config(
        tmp_path, f"name: cs\nrecipe: commonsense\nseeds: {seeds}\nparams: {{relations: [xWhat]}}\n"
    )
    with pytest.raises(ConfigError, match=r"params.relations: unknown relation 'xWhat'"):
        api.prepare(cfg)
    cfg = write_config(tmp_path, f"name: cs\nrecipe: commonsense\nseeds: {seeds}\nparams: {{samples: 0}}\n")
    with pytest.raises(ConfigError, match=r"params\.samples"):
        api.prepare(cfg)
    seeds.write_text('{"id": "a", "event": "PersonX sings"}\n{"id": "b", "event": " . "}\n')
    cfg = write_config(tmp_path, f"name: cs\nrecipe: commonsense\nseeds: {seeds}\n")
    with pytest.raises(ConfigError, match="seed 'b': field 'event' holds no event text"):
        api.prepare(cfg)


# -- through the runner ------------------------------------------------------------------------------------
def test_scripted_run_stores_events_tails_and_parse_verdicts(tmp_path):
    seeds = tmp_path / "ev.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"e{i}", "event": e}) + "\n" for i, e in enumerate(
        ["PersonX sings a song", "PersonX fixes the bike"])))  # fmt: skip
    store = tmp_path / "s.duckdb"
    cfg = write_config(
        tmp_path,
        f"name: cs\nrecipe: commonsense\nseeds: {seeds}\nstore: {store}\nteacher: scripted:x\n"
        "params: {relations: [xNeed, xReact], samples: 2, new_events: 1}\nrunner: {commit_interval_s: 0.05}\n",
    )

    def fn(req):
        prompt = req.messages[-1]["content"]
        if "Write one new event" in prompt:
            return "PersonX plays the drums" if "sings" in prompt else "the bike is fixed"
        return "none" if req.sample_index else "Happy."

    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=ScriptedTeacher("scripted:x", "x", {"fn": fn})))
    assert res.status == "done"
    # e0: 1 event + (seed + new event) x 2 x 2 tails; e1: 1 rejected event + seed x 2 x 2 tails
    assert res.progress.records == 1 + 8 + 1 + 4
    with Store(store, read_only=True) as st:
        records = st.records_table(res.run_id).to_pylist()
        drops = dict(((f, r), n) for f, r, n in st.verdict_counts(res.run_id))
        curated = st.curated_table(res.run_id).to_pylist()
    assert drops == {
        ("commonsense.parse", "tail is 'none'"): 6,
        ("commonsense.parse", "event does not mention PersonX"): 1,
    }
    assert len(curated) == 14 - 7
    assert len({(r["stage"], r["seed_id"], r["sample_index"]) for r in records}) == len(records) == 14
    gen = [orjson.loads(r["payload"]) for r in records if r["stage"] == "tails" and r["sample_index"] >= 4]
    assert {(p["head"], p["head_source"], p["head_sample_index"]) for p in gen} == {
        ("PersonX plays the drums", "generated", 0)
    }


# -- the demo path, for real --------------------------------------------------------------------------------
@pytest.mark.slow
def test_commonsense_on_embedded_teacher_end_to_end(tmp_path):
    rows = (ROOT / "data" / "seeds" / "commonsense_events.jsonl").read_text().splitlines()[:3]
    (tmp_path / "seeds.jsonl").write_text("\n".join(rows) + "\n")
    cfg = tmp_path / "cs.yaml"
    cfg.write_text(
        "name: cs-e2e\nrecipe: commonsense\nseeds: seeds.jsonl\nstore: s.duckdb\n"
        "teacher: embedded\n"
        "params: {relations: [xNeed, xReact], samples: 2, new_events: 1, max_tokens: 24}\n"
    )
    run = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(cfg), "--json"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["seeds_done"] == 3 and summary["completion_tokens"] > 0
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        records = st.curated_table(summary["run_id"], include_rejected=True).to_pylist()
    rejected = {r["id"] for r in records if r["dropped_by"]}
    events = [r for r in records if r["stage"] == "events"]
    tails = [r for r in records if r["stage"] == "tails"]
    accepted_events = sum(r["id"] not in rejected for r in events)
    # 3 events; tails for each seed event and each accepted new event: 2 relations x 2 samples
    assert len(events) == 3 and len(tails) == (3 + accepted_events) * 4
    assert summary["records_added"] == len(records) and 0 < summary["requests_sent"] <= len(records)
    payloads = [orjson.loads(r["payload"]) for r in tails]
    assert {p["relation"] for p in payloads} == {"xNeed", "xReact"}
    assert all(p["completion"] is not None and p["head"] for p in payloads)
    assert all(r["teacher"].startswith("embedded") and r["template_version"] for r in records)
