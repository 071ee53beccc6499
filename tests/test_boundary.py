"""The boundary (PromptMix) recipe with a scripted teacher: parsing, relabel mapping, partners and ratios,
record layout, bad label sets. The class embeddings come from the real bundled model."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT

from factory.errors import ConfigError, TeacherRejected
from factory.seeds import Seed, load_seeds
from factory.types import Completion
from recipes.boundary import (
    GENERATE,
    RELABEL,
    BoundaryParams,
    bind,
    generation_request,
    match_label,
    mix_plan,
    parse_numbered_list,
    prepare,
    process,
    relabel_request,
)

INTENTS = ROOT / "data" / "seeds" / "intents.jsonl"
CANDS = ["card_lost", "card_not_arrived", "refund_request", "change_address"]


def _state(seeds: list[Seed] | None = None, **params):
    state = prepare(BoundaryParams(**params), Path)
    return bind(state, seeds if seeds is not None else load_seeds(INTENTS))


@pytest.fixture(scope="module")
def state():
    return _state()


class Teacher:
    """Scripted: generation prompts get ``lists[prompt_index]`` (or the default list); relabel prompts get
    ``labels[utterance]`` (default: the intended class, read back from the generation it came from)."""

    def __init__(self, lists=None, labels=None, default_list="1. one\n2. two\n3. three", finish=None):
        self.lists, self.labels, self.default_list = lists or {}, labels or {}, default_list
        self.finish = finish
        self.calls: list[tuple[str, object]] = []
        self.in_flight = self.peak = 0

    async def __call__(self, req, *, teacher="default"):
        self.calls.append((teacher, req))
        user = req.messages[-1]["content"]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0)
        self.in_flight -= 1
        if user.startswith("Which intent"):
            text = user.split("Message: ", 1)[1].split("\n", 1)[0]
            answer = self.labels.get(text, "")
            if isinstance(answer, Exception):
                raise answer
            return Completion(text=answer, key=f"r:{text}", finish_reason="stop")
        text = self.lists.get(req.sample_index, self.default_list)
        if isinstance(text, Exception):
            raise text
        return Completion(text=text, key=f"g{req.sample_index}", finish_reason=self.finish or "stop")


def _run(state, seed_id, teacher):
    seed = next(Seed(state.classes[lab].seed_id, {}) for lab in state.classes if lab == seed_id)
    return asyncio.run(process(seed, state, teacher))


# -- parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("1. I lost my card\n2. Refund please\n3. Where is it?", ["I lost my card", "Refund please", "Where is it?"]),
        ("1) a b\n2) c d", ["a b", "c d"]),
        ("- first\n- second", ["first", "second"]),
        ("* first\n(2) second\n3 - third", ["first", "second", "third"]),
        ('Here are 2 messages:\n\n1. "Quoted one"\n\n2. “Curly two”\n\nHope this helps!', ["Quoted one", "Curly two"]),
        ('1. "My card is gone" (75% card_lost)\n2. **Bold item**', ["My card is gone", "Bold item"]),
        ("1. same\n2. same\n3.   spaced   out  ", ["same", "same", "spaced out"]),
        ("Sure! I can write some messages about that.", []),
        ("1.5 million reasons\n12345", []),
        ("", []),
        ("1.\n2. \n-", []),
    ],
)  # fmt: skip
def test_parse_numbered_list(text, items):
    assert [t for t, _ in parse_numbered_list(text)] == items


def test_parse_flags_an_item_cut_off_at_max_tokens():
    text = "1. full one\n2. full two\n3. cut o"
    assert parse_numbered_list(text, "length") == [("full one", True), ("full two", True), ("cut o", False)]
    assert all(ok for _, ok in parse_numbered_list(text, "stop"))
    assert all(ok for _, ok in parse_numbered_list(text + "\nSome chatter", "length"))


# -- relabel mapping -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "label", "how"),
    [
        ("card_lost", "card_lost", "exact"),
        ("  refund_request\n", "refund_request", "exact"),
        ("Card Lost", "card_lost", "normalized"),
        ("CARD_NOT_ARRIVED.", "card_not_arrived", "normalized"),
        ('"change-address"', "change_address", "normalized"),
        ("Intent: refund_request", "refund_request", "normalized"),
        ('{"label": "card_lost"}', "card_lost", "normalized"),
        ("The message is about refund_request, not card_lost.", "refund_request", "substring"),
        ("refund", "refund_request", "substring"),
        ("card_lots", "card_lost", "close"),
    ],
)
def test_match_label(answer, label, how):
    assert match_label(answer, CANDS) == (label, how)


def test_match_label_by_description_and_word_order():
    desc = {"card_lost": "The card is lost or stolen.", "refund_request": "The customer wants money back."}
    assert match_label("The card is lost or stolen", CANDS, desc) == ("card_lost", "description")
    assert match_label("the customer wants their money back.", CANDS, desc) == (
        "refund_request",
        "description",
    )
    assert match_label("The customer is angry.", CANDS, desc)[0] is None
    assert match_label("Lost card", CANDS) == ("card_lost", "normalized")


def test_match_label_outside_the_candidates_and_empty():
    label, why = match_label("weather_forecast", CANDS)
    assert label is None
    assert why.startswith("answer 'weather_forecast' is not one of the candidates (card_lost, ")
    label, why = match_label("  \n", CANDS)
    assert label is None and why.startswith("empty answer")
    assert match_label("card", CANDS)[0] is None  # in two candidates: ambiguous, then not close enough


# -- partners and ratios ---------------------------------------------------------------------------
def test_alphas_are_deterministic_on_the_grid_and_partners_are_near(state):
    big = _state(alphas_per_class=64)
    seen_alphas = []
    for c in big.classes.values():
        plan = mix_plan(big, c)
        assert plan == mix_plan(big, c)  # deterministic
        pool = c.neighbours[: big.params.candidates - 1]
        for partner, alpha in plan:
            assert partner != c.label and partner in pool
            assert 0.5 <= alpha <= 1.0 and abs(alpha * 20 - round(alpha * 20)) < 1e-9
            seen_alphas.append(alpha)
        assert len({p for p, _ in plan}) == len(pool)  # every near class is drawn sometime
    mean = sum(seen_alphas) / len(seen_alphas)
    assert 0.82 < mean < 0.89  # 0.5 + 0.5 * E[Beta(5, 2)] = 0.857
    other = _state(alphas_per_class=64, seed=1)
    c = next(iter(big.classes.values()))
    assert mix_plan(other, c) != mix_plan(big, c)


def test_bind_ranks_itself_out_and_neighbours_by_meaning(state):
    assert state.classes["card_lost"].neighbours[0] == "card_not_arrived"
    assert state.classes["refund_request"].neighbours[0] == "duplicate_charge"
    for c in state.classes.values():
        assert c.label not in c.neighbours and len(c.neighbours) == len(state.classes) - 1


# -- process ---------------------------------------------------------------------------------------
def test_records_hold_intended_and_teacher_labels(state):
    t = Teacher(
        lists={0: "1. I lost my card and moved\n2. Block my card\n3. Block my card", 1: "no list at all"},
        labels={"I lost my card and moved": "change_address", "Block my card": "Card Lost"},
    )
    drafts = _run(state, "card_lost", t)
    gens = [d for d in drafts if d.stage == GENERATE]
    rels = [d for d in drafts if d.stage == RELABEL]
    assert len(gens) == 1 and gens[0].reject == "no numbered list in the completion"
    assert gens[0].payload["completion"] == "no list at all" and gens[0].sample_index == 1
    assert [d.text for d in rels] == ["I lost my card and moved", "Block my card", "Block my card"]
    first, second, dup = rels
    (partner, alpha) = mix_plan(state, state.classes["card_lost"])[0]
    assert first.payload == {
        "text": "I lost my card and moved", "label": "change_address", "intended_label": "card_lost",
        "partner": partner, "alpha": alpha, "candidates": first.payload["candidates"], "prompt_index": 0,
        "teacher_label": "change_address", "relabel_agreed": False, "item_index": 0, "items_listed": 3,
        "relabel_answer": "change_address", "relabel_match": "exact",
    }  # fmt: skip
    assert first.payload["candidates"][0] == "card_lost" and len(first.payload["candidates"]) == 5
    assert first.reject is None and first.request_keys == ("g0", "r:I lost my card and moved")
    assert second.payload["label"] == "card_lost" and second.payload["relabel_agreed"] is True
    assert second.payload["relabel_match"] == "normalized" and second.score == 1.0
    assert dup.reject == "duplicate of an earlier utterance of this class (sample 1)"
    # one relabel request per distinct utterance, at temperature 0, to the default role
    relabels = [r for _, r in t.calls if r.messages[-1]["content"].startswith("Which intent")]
    assert len(relabels) == 2 and all(r.sampling.temperature == 0 for r in relabels)
    gens_req = [r for _, r in t.calls if r not in relabels]
    assert [r.sampling.temperature for r in gens_req] == [1.0, 1.0]


def test_sample_index_unique_per_stage(state):
    t = Teacher(lists={1: "garbage"}, default_list="1. aa\n2. bb\n3. cc\n4. dd\n5. ee")
    for label in state.classes:
        drafts = _run(state, label, t)
        per_stage = Counter((d.stage, d.sample_index) for d in drafts)
        assert max(per_stage.values()) == 1
        assert {d.stage for d in drafts} == {GENERATE, RELABEL}


def test_rejections_carry_reasons():
    st = _state(n_per_prompt=3, alphas_per_class=1)
    t = Teacher(
        default_list="1. fine one\n2. outside one\n3. silent one\n4. extra one",
        labels={"fine one": "card_lost", "outside one": "weather"},
    )
    by = {d.text: d for d in _run(st, "card_lost", t)}
    assert all(d.stage == RELABEL for d in by.values())
    assert by["fine one"].reject is None
    assert by["outside one"].reject.startswith("answer 'weather' is not one of the candidates")
    assert by["outside one"].payload["teacher_label"] is None and by["outside one"].payload["label"] is None
    assert by["silent one"].reject.startswith("empty answer")
    assert "extra one" not in by and by["fine one"].payload["items_listed"] == 4  # cut to n_per_prompt
    assert len(t.calls) == 1 + 3
    t = Teacher(default_list="1. fine one\n2. cut o", labels={"fine one": "card_lost"}, finish="length")
    by = {d.text: d for d in _run(st, "card_lost", t)}
    assert by["fine one"].reject is None and by["cut o"].reject == "cut off at max_tokens"
    assert len(t.calls) == 1 + 1


def test_echoes_and_copies_are_not_relabelled():
    t = Teacher(
        default_list="1. card_lost:\n2. How do I block a card I've lost?\n3. 42.\n4. Card lost\n5. My card is gone\n"
        "6. See refund_request",
        labels={"My card is gone": "card_lost"},
    )
    by = {d.text: d for d in _run(_state(alphas_per_class=1, n_per_prompt=6), "card_lost", t)}
    assert by["card_lost:"].reject == "a heading or a class label, not an utterance"
    assert by["Card lost"].reject == "a heading or a class label, not an utterance"
    assert by["How do I block a card I've lost?"].reject == "copies a seed example"
    assert by["42."].reject == "not an utterance (no words)"
    assert by["See refund_request"].reject == "names the class label 'refund_request', not an utterance"
    assert by["My card is gone"].reject is None
    assert sum(r.messages[-1]["content"].startswith("Which") for _, r in t.calls) == 1


def test_relabel_role_requests_run_concurrently_and_failures_wait(state):
    st = _state(relabel_teacher="judge", alphas_per_class=1)
    t = Teacher(
        labels={"one": "card_lost", "two": TeacherRejected("prompt too long"), "three": RuntimeError("boom")}
    )
    with pytest.raises(RuntimeError, match="boom"):
        _run(st, "card_lost", t)
    roles = Counter(role for role, _ in t.calls)
    assert roles == {"default": 1, "judge": 3}  # every relabel was sent before the error surfaced
    assert t.peak == 3
    t.labels["three"] = "card_lost"
    rels = _run(st, "card_lost", t)
    assert rels[1].reject == "teacher rejected the relabel request: prompt too long"
    from recipes.boundary import RECIPE

    assert RECIPE.teacher_roles(st.params) == ["judge"] and RECIPE.teacher_roles(state.params) == []


def test_teacher_refusing_a_generation_is_a_rejected_record(state):
    st = _state(alphas_per_class=1)
    drafts = _run(st, "card_lost", Teacher(lists={0: TeacherRejected("content policy")}))
    assert len(drafts) == 1 and drafts[0].stage == GENERATE
    assert drafts[0].reject == "teacher rejected the generation request: content policy"


def test_seed_text_with_template_syntax_stays_text():
    seeds = [
        Seed(
            "a",
            {"label": "weird", "description": "Costs {{ 7*7 }} and {0}.", "examples": ["say {{ x }} {0}"]},
        ),
        Seed("b", {"label": "plain", "description": "Plain class.", "examples": ["hello"]}),
    ]
    st = _state(seeds)
    a = st.classes["weird"]
    gen = generation_request(st, a, "plain", 0.8, 0)
    prompt = gen.messages[-1]["content"]
    assert "Costs {{ 7*7 }} and {0}." in prompt and "say {{ x }} {0}" in prompt and "49" not in prompt
    assert "80% weird and 20% plain" in prompt
    rel = relabel_request(st, "what {{ 7*7 }} {0}", ["weird", "plain"]).messages[-1]["content"]
    assert "Message: what {{ 7*7 }} {0}" in rel and "- weird: Costs {{ 7*7 }} and {0}." in rel


def test_json_schema_relabel_lists_the_candidates(state):
    st = _state(relabel_json_schema=True, alphas_per_class=1)
    req = relabel_request(st, "hi", ["card_lost", "refund_request"])
    assert req.json_schema["properties"]["label"]["enum"] == ["card_lost", "refund_request"]
    assert '{"label": INTENT}' in req.messages[-1]["content"]


# -- bad label sets --------------------------------------------------------------------------------
def _seed(i, **over):
    row = {"label": f"class_{i}", "description": "A class.", "examples": ["one", "two"], **over}
    return Seed(f"s{i}", row)


@pytest.mark.parametrize(
    ("seeds", "params", "match"),
    [
        ([_seed(1), _seed(2, label="Class 1")], {}, r"row 2 \(id 's2'\): field 'label' repeats the label of row 1"),
        ([_seed(1)], {}, "holds 1 class in field 'label'.*at least 2"),
        ([_seed(1), _seed(2, examples=[])], {}, "row 2 .*field 'examples' must be a non-empty list"),
        ([_seed(1), _seed(2, examples=[" ", None])], {}, "field 'examples' must be a non-empty list"),
        ([_seed(1), _seed(2, description="")], {}, "field 'description' must be a non-empty string"),
        ([_seed(1), _seed(2, label="!!")], {}, "field 'label' must be a label"),
        ([_seed(1), _seed(2, intent="x")], {"label_field": "intent"}, "row 1 .*field 'intent'"),
    ],
)  # fmt: skip
def test_bad_label_set_is_a_config_error(seeds, params, match):
    with pytest.raises(ConfigError, match=match):
        bind(prepare(BoundaryParams(**params), Path), seeds)


def test_config_with_undefined_relabel_role_and_dry_run(tmp_path):
    from factory import api

    seeds = tmp_path / "s.jsonl"
    seeds.write_text("\n".join(INTENTS.read_text().splitlines()[:3]) + "\n")
    cfg = tmp_path / "c.yaml"
    base = "name: b\nrecipe: boundary\nseeds: s.jsonl\nstore: s.duckdb\nteacher: embedded\n"
    cfg.write_text(base + "params: {relabel_teacher: judge}\n")
    with pytest.raises(ConfigError, match="teacher role 'judge'"):
        api.prepare(cfg)
    cfg.write_text(base + "params: {alphas_per_class: 2, candidates: 3}\n")
    rep = api.dry_run(api.prepare(cfg))
    assert rep.requests == 6 and rep.seeds == 3 and "relabel" in rep.notes[0]
    assert not (tmp_path / "s.duckdb").exists()


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_boundary_on_embedded_teacher_end_to_end(tmp_path):
    """The pipeline for real on SmolLM2-135M (weak: the pipeline is asserted, not the quality)."""
    import json
    import subprocess
    import sys

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True,
                             cwd=tmp_path, timeout=900)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    (tmp_path / "intents.jsonl").write_text("\n".join(INTENTS.read_text().splitlines()[:3]) + "\n")
    (tmp_path / "b.yaml").write_text(
        "name: b-e2e\nrecipe: boundary\nseeds: intents.jsonl\nstore: s.duckdb\nteacher: embedded\n"
        "params: {alphas_per_class: 1, n_per_prompt: 2, max_tokens: 64, relabel_max_tokens: 16}\n"
    )
    s1 = json.loads(cli("run", "b.yaml", "--json").strip().splitlines()[-1])
    assert s1["status"] == "done" and s1["seeds_done"] == 3 and s1["records_added"] >= 3
    assert 3 <= s1["requests_sent"] <= 3 + 3 * 2
    s2 = json.loads(cli("run", "b.yaml", "--json").strip().splitlines()[-1])
    assert s2["requests_sent"] == 0 and s2["records_added"] == 0
    cli(
        "export",
        "b-e2e",
        "--store",
        "s.duckdb",
        "--out",
        "out",
        "--format",
        "jsonl",
        "--include-rejected",
        "--stage",
        "all",
    )
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == s1["records_added"]
    labels = {"card_lost", "card_not_arrived", "refund_request"}
    for r in rows:
        assert r["stage"] in (GENERATE, RELABEL) and r["teacher"].startswith("embedded")
        assert {
            "text",
            "label",
            "intended_label",
            "partner",
            "alpha",
            "teacher_label",
            "relabel_agreed",
        } <= set(r)
        assert r["intended_label"] in labels and r["partner"] in labels - {r["intended_label"]}
        assert 0.5 <= r["alpha"] <= 1.0 and r["label"] == r["teacher_label"]
        if r["stage"] == GENERATE:
            assert r["dropped_by"]  # a generation record exists only when it did not parse
        if r["label"] is not None:
            assert r["label"] in labels and r["relabel_agreed"] == (r["label"] == r["intended_label"])
        else:
            assert r["dropped_by"] and r["relabel_agreed"] is None
