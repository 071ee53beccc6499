"""The entities recipe: parsing the teacher's JSON, spans, negatives and drops with exact outputs; the export
shapes and the entity P/R/F1 through the real runner, store and CLI on a scripted teacher; bad input; then
once against vLLM's OpenAI-compatible server running the embedded model (slow)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson
import pytest
from conftest import ROOT

from factory import api
from factory.seeds import Seed
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from factory.types import Completion, Request
from recipes.entities import EntitiesParams, bind, conversation, label_request, prepare, process
from recipes.entity_spans import find_spans, student_mentions, teacher_entities
from trainers.entity_eval import Passage, load_passages, score

TEXTS = {
    "a": "Ada Lovelace met Charles Babbage in London. London was foggy.",
    "b": "Paris is the capital of France.",
    "c": "Aspirin treats pain.",
    "d": "Nothing to see here.",
}
ANSWERS = {
    "a": '{"entities": [{"type": "person", "mentions": ["Ada Lovelace", "Charles Babbage", "Alan Turing"]},'
    ' {"type": "Location", "mentions": ["london"]}, {"type": "date", "mentions": []}]}',
    "b": 'Sure! {"city": ["Paris"], "country": ["France"]}',
    "c": '```json\n[{"type": "drug", "text": "Aspirin"}, {"type": "symptom", "text": "pain"}]\n```',
    "d": "I cannot find any entities.",
}


def _which(req: Request) -> str:
    return next(k for k, v in TEXTS.items() if f"Text: {v}\n" in req.messages[-1]["content"])


def _state(**params):
    return bind(prepare(EntitiesParams(**params), Path), [Seed(k, {"text": v}) for k, v in TEXTS.items()])


async def _fake(req: Request, *, teacher: str = "default") -> Completion:
    k = _which(req)
    return Completion(text=ANSWERS[k], key=f"key-{k}", finish_reason="stop")


def _record(sid: str, **params):
    drafts = asyncio.run(process(Seed(sid, {"text": TEXTS[sid]}), _state(**params), _fake))
    assert len(drafts) == 1 and drafts[0].stage == "label"
    return drafts[0]


# -- parsing -----------------------------------------------------------------------------------------------
def test_teacher_json_forms():
    assert teacher_entities(ANSWERS["b"]) == [("city", ["Paris"]), ("country", ["France"])]
    assert teacher_entities(ANSWERS["c"]) == [("drug", ["Aspirin"]), ("symptom", ["pain"])]
    assert teacher_entities('{"entities": {"Sports_Team": ["Real Valle", "Real Valle"]}}') == [
        ("sports team", ["Real Valle"])
    ]
    assert teacher_entities(ANSWERS["d"]) == "no JSON in the answer"
    assert teacher_entities('{"entities": [{"mentions": ["x"]}]}') == "an entity has no type"
    assert teacher_entities('["Paris", "France"]') == "the entity list holds something other than objects"
    assert (
        teacher_entities('{"person": {"age": 3}}')
        == "the mentions of type 'person' are not a list of strings"
    )
    assert teacher_entities("42") == "the JSON is not an object or a list of entities"


def test_spans_are_whole_words_exact_case_first():
    text = "Art and the party; art, ART."
    assert find_spans(text, "art") == [(19, 22)]  # exact case; never inside "party"
    assert find_spans(text, "aRt") == [(0, 3), (19, 22), (24, 27)]  # no exact case: any case
    assert find_spans("New  York is big", "New York") == [(0, 9)]
    assert find_spans("costs 5$ today", "5$") == [(6, 8)]
    assert find_spans("the partition", "part") == []


@pytest.mark.parametrize(
    ("answer", "mentions"),
    [
        ('["Ada Lovelace", "London"]', ["Ada Lovelace", "London"]),
        ("[]", []),
        ("None.", []),
        ('The answer is ["Paris"].', ["Paris"]),
        ('["Paris", "Paris", " Lyon "]', ["Paris", "Lyon"]),
        ('[{"text": "Paris"}]', ["Paris"]),
        ('{"mentions": ["Oslo"]}', ["Oslo"]),
        ('"Oslo"', ["Oslo"]),
        ("Paris and Lyon", None),
        ('["Paris", ["nested"]]', None),
    ],
)
def test_student_answers(answer, mentions):
    assert student_mentions(answer) == mentions


# -- records -------------------------------------------------------------------------------------------------
def test_record_keeps_spans_and_lists_what_it_dropped():
    d = _record("a")
    p = d.payload
    assert d.reject is None and d.score == 4.0
    assert p["entities"] == [{"type": "person", "mentions": ["Ada Lovelace", "Charles Babbage"]},
                             {"type": "location", "mentions": ["London"]}]  # fmt: skip
    assert p["spans"] == [
        {"start": 0, "end": 12, "type": "person", "text": "Ada Lovelace"},
        {"start": 17, "end": 32, "type": "person", "text": "Charles Babbage"},
        {"start": 36, "end": 42, "type": "location", "text": "London"},
        {"start": 44, "end": 50, "type": "location", "text": "London"},
    ]
    assert all(TEXTS["a"][s["start"] : s["end"]] == s["text"] for s in p["spans"])
    assert p["dropped"] == [{"type": "person", "mention": "Alan Turing", "reason": "not in the passage"},
                            {"type": "date", "mention": None, "reason": "no mention listed"}]  # fmt: skip
    # the own request first, then those of the passages the negatives come from
    assert d.request_keys[0] == "key-a" and len(d.request_keys) == 4


def test_negatives_come_from_other_passages_and_never_from_this_one():
    d = _record("a", negatives=3, negative_sources=3)
    p = d.payload
    assert sorted(p["negative_sources"]) == ["b", "c", "d"]
    # the types of b and c (d has none); person/location are this passage's own
    assert p["negatives"] == sorted(p["negatives"]) and len(p["negatives"]) == 3
    assert set(p["negatives"]) < {"city", "country", "drug", "symptom"}
    assert d.payload == _record("a", negatives=3, negative_sources=3).payload  # deterministic
    assert _record("a", negatives=0).payload["negatives"] == []
    assert len(_record("a", negatives=0).request_keys) == 1
    many = _record("a", negatives=10, negative_sources=3).payload["negatives"]
    assert many == ["city", "country", "drug", "symptom"]  # all there are


def test_a_passage_asks_the_same_request_its_sources_are_labeled_with():
    state = _state()
    asked: list[Request] = []

    async def spy(req: Request, *, teacher: str = "default") -> Completion:
        asked.append(req)
        return await _fake(req)

    asyncio.run(process(Seed("a", {"text": TEXTS["a"]}), state, spy))
    for req in asked[1:]:
        assert req == label_request(state, TEXTS[_which(req)])
    assert asked[0].json_schema is not None and asked[0].sampling.temperature == 0.0


def test_unreadable_and_empty_answers_are_rejected_with_a_reason():
    assert _record("d").reject == "no JSON in the answer"
    assert _record("d").payload["negatives"] == []

    async def cut(req: Request, *, teacher: str = "default") -> Completion:
        return Completion(text='{"entities": [{"type": "pers', key="k", finish_reason="length")

    d = asyncio.run(process(Seed("a", {"text": TEXTS["a"]}), _state(negatives=0), cut))[0]
    assert d.reject == "no JSON in the answer (the answer was cut at max_tokens)"

    async def absent(req: Request, *, teacher: str = "default") -> Completion:
        return Completion(text='{"person": ["Grace Hopper"]}', key="k")

    d = asyncio.run(process(Seed("a", {"text": TEXTS["a"]}), _state(negatives=0), absent))[0]
    assert d.reject == "no mention found in the passage"
    assert d.payload["dropped"] == [
        {"type": "person", "mention": "Grace Hopper", "reason": "not in the passage"}
    ]


def test_a_mention_that_is_the_whole_passage_is_dropped():
    async def copy(req: Request, *, teacher: str = "default") -> Completion:
        return Completion(text=json.dumps({"person": ["Ada Lovelace", TEXTS["a"].rstrip(".")]}), key="k")

    d = asyncio.run(process(Seed("a", {"text": TEXTS["a"]}), _state(negatives=0), copy))[0]
    assert d.payload["entities"] == [{"type": "person", "mentions": ["Ada Lovelace"]}]
    assert d.payload["dropped"] == [
        {"type": "person", "mention": TEXTS["a"].rstrip("."), "reason": "the whole passage"}
    ]


def test_max_types_keeps_the_teachers_first_types():
    d = _record("a", max_types=1, negatives=0)
    assert [e["type"] for e in d.payload["entities"]] == ["person"]
    assert {"type": "location", "mention": None, "reason": "over max_types (1)"} in d.payload["dropped"]


def test_conversation_asks_every_type_and_the_negatives():
    p = _record("a", negatives=2).payload
    msgs = conversation(p)["messages"]
    assert msgs[:2] == [{"role": "user", "content": f"Text: {TEXTS['a']}"},
                        {"role": "assistant", "content": "I've read this text."}]  # fmt: skip
    qa = {q["content"]: json.loads(a["content"]) for q, a in zip(msgs[2::2], msgs[3::2], strict=True)}
    want = {"What describes person in the text?": ["Ada Lovelace", "Charles Babbage"],
            "What describes location in the text?": ["London"],
            **{f"What describes {t} in the text?": [] for t in p["negatives"]}}  # fmt: skip
    assert qa == want and len(msgs) == 2 + 2 * 4
    assert conversation({**p, "entities": []}) is None


# -- scores ----------------------------------------------------------------------------------------------
def test_entity_precision_recall_f1_by_hand():
    gold = [
        Passage("1", "t1", {"person": ["Ada", "Bob"], "city": ["Oslo"], "drug": []}),
        Passage("2", "t2", {"person": ["Cy"], "date": ["1999"]}),
    ]
    pred = {
        0: {"person": ["Ada"], "city": ["Oslo", "Bergen"], "drug": ["x"]},  # tp 2, fp 2, fn 1
        1: {"person": ["Cy"], "org": ["Acme"]},  # tp 1, fp 1, fn 1 (date)
    }
    s = score(gold, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (3, 3, 2)
    assert s["precision"] == 0.5 and s["recall"] == 0.6 and s["f1"] == pytest.approx(0.5455, abs=1e-4)
    assert s["per_type_f1"] == {"city": 0.6667, "date": 0.0, "person": 0.8}  # person: P 2/2, R 2/3
    assert score(gold, {})["f1"] == 0.0 and score(gold, {})["fn"] == 5


# -- through the runner, the store, export and `factory eval` -------------------------------------------------
def _run(tmp_path: Path):
    seeds = tmp_path / "passages.jsonl"
    seeds.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in TEXTS.items()))
    cfg = tmp_path / "ent.yaml"
    cfg.write_text("name: ent\nrecipe: entities\nseeds: passages.jsonl\nstore: s.duckdb\nteacher: scripted:a\n"
                   "params: {negatives: 2, negative_sources: 2}\n")  # fmt: skip
    teacher = ScriptedTeacher("scripted:a", "a", {"fn": lambda r: ANSWERS[_which(r)]})
    res = asyncio.run(api.run_async(api.prepare(cfg), teachers={"default": teacher}))
    return res, teacher


def test_run_export_and_eval_through_the_cli(tmp_path, cli):
    res, teacher = _run(tmp_path)
    assert len(teacher.calls) == 4  # every source request came from the cache or an identical one in flight
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        recs = {r["seed_id"]: r for r in st.records_table(res.run_id).to_pylist()}
    assert set(recs) == set(TEXTS)
    out = cli("export", "ent", "--store", "s.duckdb", "--as", "conversation", "--out", "conv", "--format",
              "jsonl", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [
        orjson.loads(x)
        for f in sorted((tmp_path / "conv").glob("*.jsonl"))
        for x in f.read_text().splitlines()
    ]
    assert len(rows) == 3  # d was rejected: not exported
    texts = {r["messages"][0]["content"] for r in rows}
    assert texts == {f"Text: {TEXTS[k]}" for k in "abc"}
    out = cli("export", "ent", "--store", "s.duckdb", "--as", "spans", "--out", "spans", "--format", "jsonl",
              cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    spans = [
        orjson.loads(x)
        for f in sorted((tmp_path / "spans").glob("*.jsonl"))
        for x in f.read_text().splitlines()
    ]
    by_text = {r["text"]: r["spans"] for r in spans}
    assert by_text[TEXTS["b"]] == [{"start": 0, "end": 5, "type": "city", "text": "Paris"},
                                   {"start": 24, "end": 30, "type": "country", "text": "France"}]  # fmt: skip

    # the spans export is itself a predictions file: scored against a labeled file with `factory eval`
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"text": TEXTS["b"], "entities": {"city": ["Paris"], "country": ["France"]}}) + "\n"
                    + json.dumps({"text": TEXTS["c"], "entities": {"drug": ["Aspirin"], "symptom": []}}) + "\n")  # fmt: skip
    preds = sorted((tmp_path / "spans").glob("*.jsonl"))
    merged = tmp_path / "preds.jsonl"
    merged.write_text("".join(f.read_text() for f in preds))
    out = cli("eval", "--gold", str(gold), "--predictions", str(merged), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    m = rep["models"][0]["metrics"]
    assert (m["tp"], m["fp"], m["fn"]) == (3, 1, 0) and m["precision"] == 0.75 and m["recall"] == 1.0
    assert any("match no labeled passage" in n for n in rep["notes"])  # passage a is not in the gold file
    out = cli("eval", "--gold", str(gold), "--predictions", str(merged), cwd=tmp_path)
    assert out.returncode == 0 and "precision" in out.stdout and "0.75" in out.stdout


def test_shipped_gold_file_reads():
    gold = load_passages(ROOT / "data" / "seeds" / "entities_gold.jsonl", "--gold")
    assert len(gold) >= 10
    for g in gold:
        assert any(g.types.values()) and any(not v for v in g.types.values())  # each has a negative type
        for mentions in g.types.values():
            assert all(find_spans(g.text, m) for m in mentions), (g.id, mentions)
    assert score(gold, {i: g.types for i, g in enumerate(gold)})["f1"] == 1.0


def test_a_student_trains_on_the_conversation_and_is_scored_by_entity(tmp_path, cli, tiny_llama):
    from trainers.config import make_config
    from trainers.run import train

    _run(tmp_path)
    out = cli("export", "ent", "--store", "s.duckdb", "--as", "conversation", "--out", "conv", "--format",
              "jsonl", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    cfg = make_config({"export": tmp_path / "conv", "task": "sft", "student": str(tiny_llama), "out": tmp_path / "m",
                       "max_steps": 2, "batch_size": 2, "max_length": 160, "max_new_tokens": 12})  # fmt: skip
    res = train(cfg)
    assert res.status == "done"
    ev = res.metrics["eval"]  # the held-out passage, scored against the teacher's labels in the export
    assert ev["task"] == "entities" and ev["rows"] == 1 and ev["models"][0]["kind"] == "student"
    m = ev["models"][0]["metrics"]
    assert m["tp"] + m["fn"] >= 1 and 0.0 <= m["f1"] <= 1.0 and 0 <= m["unreadable_answers"] <= ev["inputs"]
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"text": TEXTS["c"], "entities": {"drug": ["Aspirin"], "person": []}}) + "\n")
    out = cli("eval", str(tmp_path / "m"), "--gold", str(gold), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["inputs"] == 2 and rep["models"][0]["metrics"]["fn"] + rep["models"][0]["metrics"]["tp"] == 1
    sample = rep["samples"][rep["models"][0]["name"]][0]
    assert (
        sample["type"] == "drug" and sample["reference"] == ["Aspirin"] and isinstance(sample["output"], str)
    )


# -- bad input -------------------------------------------------------------------------------------------
def _cli_run(tmp_path: Path, params: str, rows: int = 4):
    seeds = tmp_path / "p.jsonl"
    seeds.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in list(TEXTS.items())[:rows]))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"name: bad\nrecipe: entities\nseeds: p.jsonl\nstore: s.duckdb\nteacher: scripted:a\n"
                   f"params: {params}\n")  # fmt: skip
    return cfg


@pytest.mark.parametrize(
    ("params", "rows", "message"),
    [
        ("{negatives: -1}", 4, "negatives"),
        ("{max_types: 0}", 4, "max_types"),
        ("{negative: 2}", 4, "negative"),
        ("{negatives: 2}", 1, "params.negatives: negative types are drawn from other passages"),
    ],
)
def test_bad_params_exit_2_with_a_message(tmp_path, cli, params, rows, message):
    out = cli("run", str(_cli_run(tmp_path, params, rows)), cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_bad_eval_input_exit_2(tmp_path, cli):
    out = cli("eval", "--predictions", "p.jsonl", cwd=tmp_path)
    assert out.returncode == 2 and "--predictions needs --gold FILE" in out.stderr
    (tmp_path / "g.jsonl").write_text('{"text": "x", "entities": {"person": ["a"]}}\n{"text": "y"}\n')
    out = cli("eval", "--gold", "g.jsonl", "--predictions", "g.jsonl", cwd=tmp_path)
    assert out.returncode == 2 and "--gold" in out.stderr and "line 2: no field 'entities'" in out.stderr
    (tmp_path / "g.jsonl").write_text('{"text": "x", "entities": {"person": "a"}}\n')
    out = cli("eval", "--gold", "g.jsonl", cwd=tmp_path)
    assert out.returncode == 2 and "entities['person'] must be a list of strings" in out.stderr
    out = cli("eval", "--gold", "nope.jsonl", cwd=tmp_path)
    assert out.returncode == 2 and "--gold" in out.stderr and "no such file" in out.stderr


# -- a real OpenAI-compatible server ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_entities_on_vllms_openai_server(tmp_path, vllm_server):
    rows = (ROOT / "data" / "seeds" / "entities_passages.jsonl").read_text().splitlines()[:5]
    (tmp_path / "p.jsonl").write_text("\n".join(rows) + "\n")
    cfg = tmp_path / "ent.yaml"
    cfg.write_text(f"name: ent-vllm\nrecipe: entities\nseeds: p.jsonl\nstore: s.duckdb\n"
                   f"teacher: {{spec: 'openai:smol@{vllm_server}', max_in_flight: 8}}\n"
                   "params: {negatives: 2, negative_sources: 2, max_tokens: 160}\n")  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(cfg), "--json"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=800)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    s = json.loads(run.stdout.strip().splitlines()[-1])
    assert s["status"] == "done" and s["records_added"] == 5 and s["requests_sent"] == 5
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        recs = st.records_table(s["run_id"]).to_pylist()
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    reasons = dict(con.execute("SELECT record_id, reason FROM verdicts WHERE NOT keep").fetchall())
    con.close()
    for r in recs:
        p = orjson.loads(r["payload"])
        if not p["entities"]:  # dropped: the ledger says why
            assert reasons.get(r["id"]), (r["id"], p["completion"][:200])
            continue
        for e in p["entities"]:
            assert e["type"] and e["mentions"] and all(isinstance(m, str) for m in e["mentions"])
        for sp in p["spans"]:
            assert p["text"][sp["start"] : sp["end"]] == sp["text"]
        assert not set(p["negatives"]) & {e["type"] for e in p["entities"]}
        assert conversation(p) is not None
