"""`diversity`: k-center greedy against a naive greedy, the prefix property that makes `size` a threshold,
label quotas, the metrics, and one run end to end with `embed_dedup` and `diversity` in its config."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_config
from test_embed_dedup import DISTINCT, PARAPHRASES, _planted

from factory import api
from factory.curation import parse_steps
from factory.errors import ConfigError
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from filters import get_filter, vectors
from filters.base import Context, Row
from filters.diversity import DiversityParams, diversity_report, kcenter_order, shares

FLT = get_filter("diversity")


def _naive_covers(x: np.ndarray, picks: list[int]) -> tuple[list[float], list[float]]:
    """For each pick after the first: its largest cosine to the picks before it, and the smallest such value
    over every record not picked yet (what farthest-first must pick), in float64."""
    sims = x.astype(np.float64) @ x[picks].astype(np.float64).T
    cover = np.full(len(x), -np.inf)
    left = np.ones(len(x), dtype=bool)
    got, best = [], []
    for t, p in enumerate(picks):
        if t:
            got.append(cover[p])
            best.append(cover[left].min())
        np.maximum(cover, sims[:, t], out=cover)
        left[p] = False
    return got, best


@pytest.mark.parametrize("clusters", [12, 0])
def test_kcenter_is_farthest_first(clusters):
    x = _planted(1500, clusters, seed=3)
    order, at = kcenter_order(x, 600)
    assert sorted(order.tolist()) == list(range(1500))
    assert order[0] == int(np.argmax(x @ x.mean(axis=0))) and np.isneginf(at[0])
    got, best = _naive_covers(x, order[:600].tolist())
    np.testing.assert_allclose(got, best, atol=1e-5)  # each pick is the farthest record from those before
    np.testing.assert_allclose(at[1:600], got, atol=1e-5)
    # the records after the selection: by their distance to it, farthest first
    tail = (x[order[600:]] @ x[order[:600]].T).max(axis=1)
    np.testing.assert_allclose(at[600:], tail, atol=1e-5)
    assert (np.diff(at[600:]) >= 0).all()


def test_a_smaller_size_is_a_prefix_of_a_larger_one():
    x = _planted(2000, 20, seed=1)
    small, _ = kcenter_order(x, 50)
    large, _ = kcenter_order(x, 400)
    assert small[:50].tolist() == large[:50].tolist()
    rows = [Row(f"r{i}", "s", f"s{i}", 0, "", {}) for i in range(len(x))]
    ctx = Context("run", "prompt")
    ctx.work["embeddings:all-MiniLM-L6-v2"] = _FixedVectors(x, rows)
    scored = asyncio.run(FLT.score(rows, DiversityParams(size=400), ctx))
    by_rank = sorted(scored, key=lambda s: s.score)
    assert [int(s.record_id[1:]) for s in by_rank[:400]] == large[:400].tolist()
    for size in (0, 1, 50, 400, 2000):  # re-sizing from the stored ranks: the greedy selection of that size
        kept = [s.record_id for s in scored if FLT.decide(s, DiversityParams(size=size))[0]]
        assert sorted(kept) == sorted(f"r{i}" for i in large[:size].tolist())
    assert FLT.decide(by_rank[-1], DiversityParams(size=3)) == (False, "not selected for diversity")


class _FixedVectors(vectors.EmbeddingCache):
    """Synthetic vectors in place of the model: the filter looks embeddings up through ctx.work."""

    def __init__(self, x: np.ndarray, rows: list[Row]):
        super().__init__(None, None)
        self.by_id = {r.id: i for i, r in enumerate(rows)}
        self.x = x
        self.rows = rows

    def get(self, texts):
        assert len(texts) == len(self.rows)
        return self.x


def _labelled(counts: dict[str, int], seed: int = 0):
    n = sum(counts.values())
    x = _planted(n, 6, seed=seed)
    labels = [lab for lab, c in counts.items() for _ in range(c)]
    rows = [Row(f"r{i}", "s", f"s{i}", 0, "", {"intent": lab}) for i, lab in enumerate(labels)]
    ctx = Context("run", "prompt")
    ctx.work["embeddings:all-MiniLM-L6-v2"] = _FixedVectors(x, rows)
    return x, rows, labels, ctx


def test_balanced_quotas_split_the_size_round_robin():
    counts = {"b_card": 3, "a_refund": 40, "c_address": 25}
    assert shares(counts, 12) == {
        "a_refund": 5,
        "b_card": 3,
        "c_address": 4,
    }  # b runs out; a is first by name
    assert shares(counts, 100) == counts and shares(counts, 0) == dict.fromkeys(counts, 0)
    x, rows, labels, ctx = _labelled(counts)
    scored = asyncio.run(FLT.score(rows, DiversityParams(size=12, label_field="intent"), ctx))
    for size in (3, 12, 30):
        p = DiversityParams(size=size, label_field="intent")
        kept = [labels[i] for i, s in enumerate(scored) if FLT.decide(s, p)[0]]
        assert len(kept) == size and {k: kept.count(k) for k in counts} == shares(counts, size)
    # within a label, the picks are that label's own farthest-first order
    idx = [i for i, lab in enumerate(labels) if lab == "a_refund"]
    own, _ = kcenter_order(x[idx], 5)
    mine = sorted((s.detail["label_rank"], i) for i, s in enumerate(scored) if labels[i] == "a_refund")
    assert [i for _, i in mine[:5]] == [idx[k] for k in own[:5].tolist()]
    assert scored[0].detail["label"] == "b_card"


def test_quota_counts_per_label():
    _, rows, labels, ctx = _labelled({"a": 10, "b": 10, "c": 10}, seed=2)
    p = DiversityParams(label_field="intent", quotas={"a": 4, "c": 1, "zzz": 3})
    scored = asyncio.run(FLT.score(rows, p, ctx))
    verdicts = [FLT.decide(s, p) for s in scored]
    kept = [labels[i] for i, (k, _) in enumerate(verdicts) if k]
    assert sorted(kept) == ["a"] * 4 + ["c"]
    reasons = {labels[i]: r for i, (k, r) in enumerate(verdicts) if not k}
    assert reasons == {"a": "not selected for diversity", "b": "not selected for diversity: no quota for label 'b'",
                       "c": "not selected for diversity"}  # fmt: skip
    # new counts are re-derived from the stored label ranks
    more = DiversityParams(label_field="intent", quotas={"a": 10, "b": 2, "c": 0})
    kept = [labels[i] for i, s in enumerate(scored) if FLT.decide(s, more)[0]]
    assert sorted(kept) == ["a"] * 10 + ["b"] * 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, r"diversity\.size: .*size is required"),
        ({"size": -1}, r"diversity\.size: .*greater than or equal to 0"),
        ({"quotas": {"a": 1}}, r"diversity\.quotas: .*need label_field"),
        ({"label_field": "l", "quotas": {"a": 1}, "size": 3}, r"diversity\.size: .*either size or a count"),
        ({"label_field": "l", "quotas": {"a": -1}}, r"diversity\.quotas: .*0 or more"),
        ({"size": 3, "search": "ivf"}, r"unknown param 'search'"),
    ],
)
def test_bad_params_are_config_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        parse_steps([{"diversity": params}])


def test_size_and_quotas_are_thresholds():
    a, b = parse_steps([{"diversity": {"size": 3}}])[0], parse_steps([{"diversity": {"size": 30}}])[0]
    assert a.version == b.version
    c = parse_steps([{"diversity": {"size": 3, "label_field": "intent"}}])[0]
    assert c.version != a.version


def test_missing_label_field_names_the_field_and_the_fix():
    rows = [Row("r0", "s", "s0", 0, "hello there", {"label": "x"})]
    with pytest.raises(
        ConfigError, match=r"label_field 'intent': record r0 has no such payload field \(it has: label\)"
    ):
        asyncio.run(FLT.score(rows, DiversityParams(size=1, label_field="intent"), Context("run", "prompt")))


def test_minilm_selection_takes_one_of_each_topic(tmp_path):
    topics = [
        [
            "How do I reset my password?",
            "How can I reset my password?",
            "I forgot my password, how do I reset it?",
        ],
        [
            "What is the capital of France?",
            "What's the capital city of France?",
            "Which city is France's capital?",
        ],
        [
            "The recipe needs two cups of flour and an egg.",
            "You need two cups of flour and one egg for this recipe.",
        ],
    ]
    texts = [t for group in topics for t in group]
    rows = [Row(f"r{i}", "s", f"s{i}", 0, t, {}) for i, t in enumerate(texts)]
    scored = asyncio.run(
        FLT.score(rows, DiversityParams(size=3), Context("run", "prompt", cache_dir=tmp_path))
    )
    kept = [texts[i] for i, s in enumerate(scored) if FLT.decide(s, DiversityParams(size=3))[0]]
    assert sorted(next(k for k, g in enumerate(topics) if t in g) for t in kept) == [0, 1, 2]
    assert (tmp_path / "embeddings" / "all-MiniLM-L6-v2").is_dir()


def test_selection_does_not_depend_on_the_encoding_batch_size(tmp_path, monkeypatch):
    from factory import embeddings

    texts = [f"{what} {how}" for what in ("My card", "The parcel", "Our invoice", "A refund")
             for how in ("is late.", "never arrived, please help.", "was wrong twice this month.")]  # fmt: skip
    rows = [Row(f"r{i}", "s", f"s{i}", 0, t, {}) for i, t in enumerate(texts)]
    ranks = []
    for batch in ("1", "64"):  # each run encodes afresh: its own cache folder
        monkeypatch.setenv(embeddings.ENV_BATCH, batch)
        ctx = Context("run", "prompt", cache_dir=tmp_path / batch)
        ranks.append([s.score for s in asyncio.run(FLT.score(rows, DiversityParams(size=5), ctx))])
    assert ranks[0] == ranks[1] and sorted(ranks[0]) == list(range(len(texts)))


def test_diversity_report():
    texts = ["the cat sat", "the cat ran", "a dog"]
    rep = diversity_report(texts)
    # unigrams: the cat sat the cat ran a dog → 6 distinct of 8; bigrams: the-cat ×2, cat-sat, cat-ran, a-dog → 4/5
    assert rep == {
        "records": 3,
        "distinct_1": 0.75,
        "distinct_2": 0.8,
        "mean_pairwise_cosine": None,
        "labels": None,
    }
    x = _planted(300, 4, seed=5) * np.random.default_rng(0).uniform(0.5, 2, (300, 1))  # not unit: normalised
    sims = vectors.as_unit(x) @ vectors.as_unit(x).T
    brute = (sims.sum() - np.trace(sims)) / (300 * 299)
    rep = diversity_report(["x"] * 300, x, ["b"] * 100 + ["a"] * 150 + ["c"] * 50)
    assert rep["mean_pairwise_cosine"] == pytest.approx(brute, abs=1e-4)
    assert rep["labels"] == {"a": 150, "b": 100, "c": 50} and list(rep["labels"]) == ["a", "b", "c"]
    assert rep["distinct_1"] == round(1 / 300, 4) and rep["distinct_2"] == 0.0  # no bigrams
    assert diversity_report([])["records"] == 0
    same = diversity_report(["a b", "a b"], np.ones((2, 3)))
    assert same["mean_pairwise_cosine"] == pytest.approx(1.0)


# ---- end to end ------------------------------------------------------------------------------------

TOPICS = [f"topic {k}" for k in range(4)]


def _teacher():
    def answer(req):
        k = TOPICS.index(req.messages[-1]["content"].strip())
        return [PARAPHRASES[k][0], PARAPHRASES[k][1], DISTINCT[k]][req.sample_index]

    return ScriptedTeacher("scripted:x", "x", {"fn": answer})


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_run_with_embed_dedup_and_diversity(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"text": t}) + "\n" for t in TOPICS))
    store = tmp_path / "s.duckdb"
    cfg = write_config(
        tmp_path,
        f"name: div\nrecipe: prompt\nseeds: {seeds}\nstore: {store}\nteacher: scripted:x\nparams: {{n: 3}}\n"
        "filters:\n  - embed_dedup: {threshold: 0.9}\n  - diversity: {size: 4, label_field: prompt}\n",
    )
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=_teacher()))
    f = res.curation.funnel
    steps = {s["filter"]: s for s in f["filters"]}
    assert (steps["embed_dedup"]["in"], steps["embed_dedup"]["kept"]) == (12, 8)  # one paraphrase per topic
    assert steps["embed_dedup"]["top_reasons"] == [{"reason": "near duplicate (cosine ≥ 0.9)", "records": 4}]
    assert (steps["diversity"]["in"], steps["diversity"]["kept"], f["curated"]) == (8, 4, 4)
    assert steps["diversity"]["top_reasons"] == [{"reason": "not selected for diversity", "records": 4}]
    with Store(store, read_only=True) as st:
        four = st.curated_table(res.run_id).to_pylist()
    assert len({json.loads(r["payload"])["prompt"] for r in four}) == 4  # balanced: one per topic
    shards = store.with_name("s.duckdb.filters") / "embeddings" / "all-MiniLM-L6-v2"
    assert len(list(shards.glob("*.keys.npy"))) == 1
    # a smaller size: a new pass whose selection is a prefix of the last one; nothing is encoded again
    out = _cli("filter", "div", "--store", str(store), "--set", "diversity.size=2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["funnel"]["curated"] == 2
    with Store(store, read_only=True) as st:
        two = st.curated_table(res.run_id).to_pylist()
    assert {r["id"] for r in two} < {r["id"] for r in four}
    assert len(list(shards.glob("*.keys.npy"))) == 1  # every text came from the cache
    # a stricter dedup threshold keeps more (only the 0.992 paraphrase pair still goes), from stored scores
    out = _cli("filter", "div", "--store", str(store), "--set", "embed_dedup.threshold=0.99", "--json")
    steps = {x["filter"]: x for x in json.loads(out.stdout)["funnel"]["filters"]}
    assert steps["embed_dedup"]["kept"] == 11 and steps["diversity"]["kept"] == 4
    why = _cli("why", four[0]["id"], "--store", str(store), "--json")
    verdicts = {v["filter"]: v for v in json.loads(why.stdout)["verdicts"]}
    assert json.loads(verdicts["diversity"]["detail"])["label"] == json.loads(four[0]["payload"])["prompt"]
