"""`minhash_dedup`: planted near-duplicates at measured Jaccard, clusters, thresholds from stored scores,
signatures persisted and reused, across runs, and a run end to end on a real store."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys

import numpy as np
import orjson
import pytest
from conftest import write_config
from pydantic import ValidationError

from factory import api
from factory.errors import ConfigError
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from filters import get_filter
from filters import minhash_dedup as mh
from filters.base import Context, Row
from filters.exact_dedup import normalise

FILTER = get_filter("minhash_dedup")


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = normalise(text).split()
    return {tuple(w)} if len(w) < n else {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def corpus(seed: int = 3, originals: int = 150) -> list[str]:
    """Random 40-word texts, then near-copies of them: words added or cut at the ends (high Jaccard),
    words replaced inside (lower), surface changes only (Jaccard 1 after normalising)."""
    rng = random.Random(seed)
    vocab = [
        f"{rng.choice('bcdfglmnprst')}{rng.choice('aeiou')}{rng.choice('klmnrst')}{i}" for i in range(3000)
    ]
    texts = [" ".join(rng.choices(vocab, k=40)) + "." for _ in range(originals)]
    for k in range(originals):
        w = texts[rng.randrange(len(texts))].rstrip(".").split()
        kind = k % 4
        if kind == 0:
            w = w[rng.randint(1, 4) :] + rng.choices(vocab, k=rng.randint(0, 3))
        elif kind == 1:
            w = rng.choices(vocab, k=rng.randint(1, 8)) + w
        elif kind == 2:
            for _ in range(rng.randint(1, 3)):
                w[rng.randrange(len(w))] = rng.choice(vocab)
        else:
            w = [x.upper() if rng.random() < 0.3 else x for x in w]
        texts.append(", ".join(w) + "!")
    return texts


def rows_of(texts: list[str], prefix: str = "r") -> list[Row]:
    return [Row(f"{prefix}{k}", "s", f"seed{k}", 0, t, {}) for k, t in enumerate(texts)]


def score(rows: list[Row], ctx: Context | None = None, **params: object) -> list:
    ctx = ctx or Context(run_id="run", recipe="prompt")
    return asyncio.run(FILTER.score(rows, FILTER.params.model_validate(params), ctx))


def best_earlier(texts: list[str]) -> list[tuple[float, int]]:
    """Each text's exact highest Jaccard to an earlier text, and that text (the earliest on ties)."""
    sets = [shingles(t) for t in texts]
    out = []
    for k, a in enumerate(sets):
        j, i = max(((len(a & sets[i]) / len(a | sets[i]), -i) for i in range(k)), default=(0.0, 1))
        out.append((j, -i))
    return out


def test_planted_near_duplicates_are_found_with_their_exact_jaccard():
    texts = corpus()
    truth = best_earlier(texts)
    assert sum(j >= 0.8 for j, _ in truth) > 60 and sum(0.3 < j < 0.8 for j, _ in truth) > 20
    scored = score(rows_of(texts))
    params = FILTER.params()
    for k, (s, (j, _)) in enumerate(zip(scored, truth, strict=True)):
        keep, reason = FILTER.decide(s, params)
        assert keep == (j < 0.8), (k, j, s)
        assert s.score <= j + 1e-9  # the best candidate's exact Jaccard, never above the best pair's
        if j >= 0.7:  # from lsh_threshold up, every pair is a candidate (p ≥ 0.9998 at 32 bands of 4)
            assert s.score == pytest.approx(j, abs=1e-6)
            assert s.detail["jaccard"] == pytest.approx(j, abs=1e-4)
            assert abs(s.detail["estimated_jaccard"] - j) < 0.16  # 4.5 standard errors at 128 permutations
        if j >= 0.8:
            assert reason == "near duplicate"
            assert jaccard(texts[k], texts[int(s.detail["duplicate_of"][1:])]) == pytest.approx(j)


def test_estimates_alone_find_the_clear_cases():
    texts = corpus()
    truth = best_earlier(texts)
    scored = score(rows_of(texts), verify=False)
    clear = [k for k, (j, _) in enumerate(truth) if j >= 0.9]
    far = [k for k, (j, _) in enumerate(truth) if j < 0.6]
    assert all(scored[k].score >= 0.8 for k in clear)
    assert all(scored[k].score < 0.8 for k in far)
    assert all("jaccard" not in (scored[k].detail or {}) for k in clear)


def test_distinct_texts_are_kept():
    texts = corpus(seed=5)[:150]  # the originals only
    scored = score(rows_of(texts))
    assert all(FILTER.decide(s, FILTER.params())[0] for s in scored)
    assert max(s.score for s in scored) < 0.3


def test_the_earliest_of_a_cluster_is_kept_and_the_others_name_an_earlier_member():
    base = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat all day long"
    other = "an entirely different sentence about rivers and mountains and the long road to the sea at dawn"
    cluster = [base, "So " + base, base + " again", other, base.upper() + "!"]
    scored = score(rows_of(cluster))
    assert scored[0].score == 0 and scored[0].detail is None
    assert scored[3].score < 0.3
    for k in (1, 2, 4):
        assert scored[k].score >= 0.8
        assert int(scored[k].detail["duplicate_of"][1:]) < k
    assert (
        scored[4].detail["duplicate_of"] == "r0" and scored[4].score == 1.0
    )  # the most similar, then earliest


def test_thresholds_re_decide_stored_scores_and_stay_above_the_lsh_threshold():
    texts = corpus()
    scored = score(rows_of(texts))
    dropped = {
        t: sum(not FILTER.decide(s, FILTER.params(threshold=t))[0] for s in scored) for t in (0.7, 0.8, 0.95)
    }
    truth = best_earlier(texts)
    assert dropped == {t: sum(j >= t for j, _ in truth) for t in dropped}
    assert dropped[0.7] > dropped[0.8] > dropped[0.95] > 0
    assert FILTER.thresholds == ("threshold",)
    assert FILTER.version(FILTER.params(threshold=0.9)) == FILTER.version(FILTER.params())
    assert FILTER.version(FILTER.params(lsh_threshold=0.6)) != FILTER.version(FILTER.params())
    with pytest.raises(ValidationError, match="lsh_threshold"):
        FILTER.params(threshold=0.5)
    FILTER.params(threshold=0.5, lsh_threshold=0.5)


def test_band_setup_finds_pairs_at_the_lsh_threshold():
    for t in (0.5, 0.7, 0.8, 0.9):
        b, r = mh.bands(t, 128)
        assert b * r <= 128 and 1 - (1 - t**r) ** b >= 0.99
        assert 1 - (1 - t ** (r + 1)) ** (128 // (r + 1)) < 0.99  # and no more rows than that allows
    assert mh.bands(0.7, 128) == (32, 4) and mh.bands(0.8, 128) == (21, 6)


def test_signatures_persist_and_are_reused(tmp_path):
    texts = corpus()
    ctx = Context(run_id="run", recipe="prompt", cache_dir=tmp_path)
    first = score(rows_of(texts), ctx)
    assert (
        ctx.work["minhash_dedup"]["computed"] == len(set(texts)) and ctx.work["minhash_dedup"]["reused"] == 0
    )
    shards = list((tmp_path / "minhash_dedup").rglob("*.sigs.npy"))
    assert len(shards) == 1
    again = score(rows_of(texts), ctx)
    assert ctx.work["minhash_dedup"]["computed"] == 0 and ctx.work["minhash_dedup"]["reused"] == len(
        set(texts)
    )
    assert [(s.score, s.detail) for s in again] == [(s.score, s.detail) for s in first]
    more = [*texts, "a brand new text that no earlier pass has seen, long enough to be five words"]
    score(rows_of(more), ctx)
    assert ctx.work["minhash_dedup"]["computed"] == 1
    # another shingling keeps its own signatures
    score(rows_of(texts), ctx, ngram=3)
    assert ctx.work["minhash_dedup"]["computed"] == len(set(texts))
    # without a cache folder every pass computes
    plain = Context(run_id="run", recipe="prompt")
    score(rows_of(texts), plain)
    assert plain.work["minhash_dedup"]["computed"] == len(texts)


def test_many_shards_are_merged_and_unfinished_ones_ignored(tmp_path):
    cache = mh.SignatureCache(tmp_path, 16)
    keys = mh.digests([f"text {k}" for k in range(40)])
    sigs = np.arange(40 * 16, dtype=np.uint32).reshape(40, 16)
    for k in range(20):
        cache.add(keys[2 * k : 2 * k + 2], sigs[2 * k : 2 * k + 2])
    (tmp_path / "0-unfinished.sigs.npy").write_bytes(b"partial")
    merged = mh.SignatureCache(tmp_path, 16)
    assert len(list(tmp_path.glob("*.keys.npy"))) == 1
    hit, got = merged.lookup(np.concatenate([keys, mh.digests(["unseen"])]))
    assert hit.tolist() == [True] * 40 + [False]
    assert (got[:40] == sigs).all() and not got[40].any()


def test_across_runs_names_the_earlier_record():
    texts = corpus()
    earlier = [(f"old-run/{k}", t) for k, t in enumerate(texts[:150])]
    ctx = Context(run_id="run", recipe="prompt", earlier_texts=lambda: earlier)
    mine = [texts[3], "So " + texts[7], "nothing like any earlier text at all, just new words here and there"]
    scored = score(rows_of(mine), ctx)
    assert scored[0].score == 1.0 and scored[0].detail["duplicate_of"] == "old-run/3"
    assert scored[1].score >= 0.8 and scored[1].detail["duplicate_of"] == "old-run/7"
    assert scored[2].score < 0.3
    alone = score(rows_of(mine), ctx, across_runs=False)
    assert [s.score for s in alone] == [0.0, 0.0, 0.0]


def test_shingles_follow_exact_dedup_normalisation():
    tricky = ["Hello, World!", "", "ﬁne ＡＢＣ full-width", "ΟΔΟΣ σίσυφος", "snake_case and__more", "emoji 😀x🎉y",
              "CJK 中文 𠀀𠀁", "e\u0301 combining", "tab\tnew\nline", "a\x00b c", "İstanbul ß", "Ⅻ ½", "\ud800 lone"]  # fmt: skip
    for shingle in ("word", "char"):
        units, off = mh._units(tricky, shingle)
        for k, t in enumerate(tricky):
            norm = normalise(t)
            want = len(norm.split()) if shingle == "word" else len(norm)
            assert off[k + 1] - off[k] == want, (shingle, t)
        if shingle == "char":
            assert "".join(map(chr, units.tolist())) == "".join(normalise(t) for t in tricky)
    # the same words hash the same wherever they stand
    a, _ = mh._units(["alpha beta"], "word")
    b, _ = mh._units(["x, y; ALPHA  beta!"], "word")
    assert a.tolist() == b[2:].tolist()
    variants = [
        "one two three four five six",
        "ONE two, three... four five six",
        "one two three four five six",
    ]
    sig = mh.signatures(variants)
    assert (sig[0] == sig[1]).all() and (sig[0] == sig[2]).all()


def test_char_shingles_tolerate_a_changed_word():
    a = ("the committee approved the annual budget after a long debate about roads and schools, "
         "then moved on to the question of parking near the market square and the new bus timetable")  # fmt: skip
    b = a.replace("annual", "yearly")
    rows = rows_of([a, b])
    assert score(rows)[1].score < 0.8  # one word in 32 breaks five of 28 word 5-grams
    assert score(rows, shingle="char", ngram=5)[1].score >= 0.8


# ------------------------------------------------------------------------------------- end to end


def _teacher(seeds_file):
    gold = {
        (r := orjson.loads(line))["question"]: r["answer"] for line in seeds_file.read_text().splitlines()
    }

    def answer(req):
        prompt = req.messages[-1]["content"]
        q, a = next((q, a) for q, a in gold.items() if f"Question: {q}" in prompt.split("\n\n")[-1])
        if req.sample_index == 1:
            return f"I read {q} and count again, off by one somewhere. The answer is {int(a) + 1}."
        text = f"Reading the question {q} we work through it step by step and find {a}. The answer is {a}."
        return ("Well, " + text) if req.sample_index == 2 else text  # a near-copy, not an exact one

    return ScriptedTeacher("scripted:x", "x", {"fn": answer})


def _cfg(tmp_path, seeds_file, filters):
    return write_config(
        tmp_path,
        f"name: near\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        f"teacher: scripted:x\nparams: {{k: 3}}\n{filters}",
        name="near.yaml",
    )


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_a_run_drops_near_copies_that_exact_dedup_keeps(tmp_path, seeds_file):
    filters = "filters:\n  - exact_dedup\n  - minhash_dedup: {threshold: 0.85}\n"
    res = asyncio.run(
        api.run_async(api.prepare(_cfg(tmp_path, seeds_file, filters)), teacher=_teacher(seeds_file))
    )
    f = res.curation.funnel
    steps = {s["filter"]: s for s in f["filters"]}
    assert (steps["exact_dedup"]["in"], steps["exact_dedup"]["kept"]) == (24, 24)
    assert (steps["minhash_dedup"]["in"], steps["minhash_dedup"]["kept"]) == (24, 16)
    assert steps["minhash_dedup"]["top_reasons"] == [{"reason": "near duplicate", "records": 8}]
    assert f["curated"] == 16
    store = str(tmp_path / "s.duckdb")
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        rows = st.curated_table(res.run_id, include_rejected=True).to_pylist()
        copy = next(r for r in rows if r["sample_index"] == 2)
        why = st.why(copy["id"])  # what `factory why` shows
    drop = next(v for v in why["verdicts"] if not v["keep"])
    detail = json.loads(drop["detail"])
    assert drop["filter"] == "minhash_dedup" and drop["reason"] == "near duplicate"
    assert detail["duplicate_of"] == next(
        r["id"] for r in rows if r["seed_id"] == copy["seed_id"] and r["sample_index"] == 0
    )
    assert 0.85 <= detail["jaccard"] < 1 and drop["score"] == pytest.approx(detail["jaccard"], abs=1e-4)
    # signatures were kept beside the store; a stricter threshold is decided again from them: the near
    # copies come back and no signature is computed again (no new shard)
    shards = sorted((tmp_path / "s.duckdb.filters" / "minhash_dedup").rglob("*.sigs.npy"))
    assert len(shards) == 1
    loose = _cli("filter", "near", "--store", store, "--set", "minhash_dedup.threshold=0.99", "--json")
    assert loose.returncode == 0, loose.stderr
    assert json.loads(loose.stdout)["funnel"]["curated"] == 24
    assert sorted((tmp_path / "s.duckdb.filters" / "minhash_dedup").rglob("*.sigs.npy")) == shards
    bad = _cli("filter", "near", "--store", store, "--set", "minhash_dedup.threshold=0.5")
    assert bad.returncode == 2 and "minhash_dedup.threshold" in bad.stderr and "lsh_threshold" in bad.stderr


def test_a_later_run_is_deduplicated_against_the_earlier_one_from_its_signatures(tmp_path, seeds_file):
    filters = "filters:\n  - minhash_dedup\n"
    asyncio.run(api.run_async(api.prepare(_cfg(tmp_path, seeds_file, filters)), teacher=_teacher(seeds_file)))
    folder = tmp_path / "s.duckdb.filters" / "minhash_dedup"
    shards = sorted(folder.rglob("*.sigs.npy"))
    later = write_config(
        tmp_path,
        _cfg(tmp_path, seeds_file, filters).read_text().replace("name: near", "name: later"),
        name="later.yaml",
    )
    res = asyncio.run(api.run_async(api.prepare(later), teacher=_teacher(seeds_file)))
    (step,) = res.curation.funnel["filters"]
    assert (step["in"], step["kept"]) == (24, 0)  # every text is in the earlier run (or a near copy of one)
    assert sorted(folder.rglob("*.sigs.npy")) == shards  # the same texts: every signature reused


def test_bad_params_are_config_errors(tmp_path, seeds_file):
    for filters, msg in [
        ("filters:\n  - minhash_dedup: {shingle: line}\n", "minhash_dedup.shingle"),
        ("filters:\n  - minhash_dedup: {threshold: 0.6}\n", "lsh_threshold"),
        ("filters:\n  - minhash_dedupe\n", "Did you mean 'minhash_dedup'"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            api.prepare(_cfg(tmp_path, seeds_file, filters))
