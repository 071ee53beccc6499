"""`embed_dedup`: real all-MiniLM-L6-v2 on paraphrases written here, the search algorithms against brute force
on synthetic vectors, re-thresholding from stored scores, and the embedding cache."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from factory import embeddings
from factory.curation import parse_steps
from factory.errors import ConfigError
from filters import get_filter, vectors
from filters.base import Context, Row
from filters.embed_dedup import EmbedDedupParams, earlier_neighbours

FLT = get_filter("embed_dedup")

# (first, paraphrase written later): MiniLM cosine 0.91-0.99
PARAPHRASES = [
    ("How do I reset my password?", "How can I reset my password?"),
    (
        "I lost my credit card yesterday and need a new one.",
        "Yesterday I lost my credit card and I need a new one.",
    ),
    ("What is the capital of France?", "What's the capital city of France?"),
    ("Please cancel my subscription.", "Cancel my subscription, please."),
    ("Can you help me change my delivery address?", "Could you help me update my delivery address?"),
]
# distinct, several close in topic or words to one above (cosine 0.5-0.83): all kept
DISTINCT = [
    "Photosynthesis converts light into chemical energy.",
    "My order arrived damaged and I want a refund.",
    "The recipe needs two cups of flour and an egg.",
    "How do I reset my router?",
    "What is the capital of Germany?",
    "Please renew my subscription.",
    "I found my credit card yesterday.",
]


def _rows(texts: list[str]) -> list[Row]:
    return [Row(f"r{i}", "s", f"seed{i}", 0, t, {}) for i, t in enumerate(texts)]


def _run(rows, ctx, **params):
    p = EmbedDedupParams(**params)
    scored = asyncio.run(FLT.score(rows, p, ctx))
    return scored, [FLT.decide(s, p) for s in scored]


def _brute(x: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    sims = x @ x.T
    sims[np.triu_indices(len(x))] = -np.inf
    best, arg = sims.max(axis=1), sims.argmax(axis=1)
    return np.where(best >= floor, best, -np.inf), np.where(best >= floor, arg, -1)


def _planted(n: int, clusters: int, seed: int = 0, lo: float = 0.8, share: float = 0.05):
    """Unit vectors around random topic centres (within-topic cosine about 0.5) or uniform, and later records
    planted at a cosine in [lo, 1) to a random earlier one."""
    rng = np.random.default_rng(seed)
    d = 384
    x = rng.standard_normal((n, d)).astype(np.float32)  # no clusters: uniform on the sphere, the hard case
    if clusters:
        x += rng.standard_normal((clusters, d)).astype(np.float32)[rng.integers(0, clusters, n)]
    x = vectors.as_unit(x)
    m = int(n * share)
    dst = np.sort(rng.choice(np.arange(n // 10, n), m, replace=False))
    src = (rng.random(m) * dst).astype(np.int64)
    cos = rng.uniform(lo, 1.0, m).astype(np.float32)
    noise = rng.standard_normal((m, d)).astype(np.float32)
    noise -= (noise * x[src]).sum(1, keepdims=True) * x[src]
    x[dst] = cos[:, None] * x[src] + np.sqrt(1 - cos**2)[:, None] * vectors.as_unit(noise)
    return vectors.as_unit(x)


def test_minilm_catches_paraphrases_and_keeps_distinct_sentences(tmp_path):
    texts = [a for a, _ in PARAPHRASES] + DISTINCT + [b for _, b in PARAPHRASES]
    rows = _rows(texts)
    scored, verdicts = _run(rows, Context("run", "prompt", cache_dir=tmp_path), threshold=0.9)
    first = len(PARAPHRASES) + len(DISTINCT)
    dropped = [i for i, (keep, _) in enumerate(verdicts) if not keep]
    assert dropped == list(range(first, len(texts)))
    for k, i in enumerate(dropped):
        assert scored[i].detail == {"duplicate_of": f"r{k}"} and scored[i].score >= 0.9
        assert verdicts[i][1] == "near duplicate (cosine ≥ 0.9)"
    renew = scored[texts.index("Please renew my subscription.")]
    assert 0.8 <= renew.score < 0.9 and renew.detail == {"duplicate_of": "r3"}  # recorded, kept
    assert scored[0].score is None and scored[0].detail is None  # nothing earlier
    # at the default 0.95 only the closest paraphrases go, from the same stored scores
    strict = [FLT.decide(s, EmbedDedupParams()) for s in scored]
    assert {i for i, (k, _) in enumerate(strict) if not k} == {
        i for i in dropped if scored[i].score >= 0.95
    } and 0 < sum(not k for k, _ in strict) < len(dropped)


def test_decisions_do_not_depend_on_the_encoding_batch_size(tmp_path, monkeypatch):
    texts = [a for a, _ in PARAPHRASES] + DISTINCT + [b for _, b in PARAPHRASES]
    runs = []
    for batch in ("1", "64"):  # each run encodes afresh: its own cache folder
        monkeypatch.setenv(embeddings.ENV_BATCH, batch)
        runs.append(_run(_rows(texts), Context("run", "prompt", cache_dir=tmp_path / batch), threshold=0.9))
    (one, one_verdicts), (many, many_verdicts) = runs
    assert one_verdicts == many_verdicts and sum(not keep for keep, _ in one_verdicts) == len(PARAPHRASES)
    assert [s.detail for s in one] == [s.detail for s in many]
    assert np.allclose([s.score or 0.0 for s in one], [s.score or 0.0 for s in many], atol=1e-5)


def test_embeddings_persist_and_are_not_encoded_again(tmp_path, monkeypatch):
    texts = DISTINCT + DISTINCT[:2]  # a repeated text is encoded once
    calls = []
    real = embeddings.encode
    monkeypatch.setattr(embeddings, "encode", lambda t, **kw: calls.append(list(t)) or real(t, **kw))
    first, _ = _run(_rows(texts), Context("run", "prompt", cache_dir=tmp_path))
    assert calls == [DISTINCT]
    folder = tmp_path / "embeddings" / "all-MiniLM-L6-v2"
    assert len(list(folder.glob("*.keys.npy"))) == 1 and len(list(folder.glob("*.npy"))) == 2
    again, _ = _run(_rows(texts), Context("run2", "prompt", cache_dir=tmp_path))  # a later pass or run
    assert calls == [DISTINCT] and again == first
    ctx = Context("run3", "prompt", cache_dir=tmp_path)
    _run(_rows([*texts, "A brand new sentence."]), ctx)
    assert calls[-1] == ["A brand new sentence."] and ctx.work["embed_dedup"]["texts"] == len(texts) + 1
    assert len(list(folder.glob("*.keys.npy"))) == 2
    np.testing.assert_allclose(vectors.embed(DISTINCT, None, ctx), real(DISTINCT), atol=1e-5)


def test_cache_merges_shards_and_skips_torn_ones(tmp_path, monkeypatch):
    fake = lambda t, **kw: vectors.as_unit(np.random.default_rng(len(t)).random((len(t), 4)))  # noqa: E731
    monkeypatch.setattr(embeddings, "encode", fake)
    folder = tmp_path / "m"
    vectors.EmbeddingCache(folder, None).get(["text 0"])
    (folder / "zz-torn.npy").write_bytes(b"not numpy")  # vectors without a keys file: unfinished, unseen
    (folder / "zz-bad.keys.npy").write_bytes(b"junk")
    (folder / "zz-bad.npy").write_bytes(b"junk")
    cache = vectors.EmbeddingCache(folder, None)  # skips the bad shard, with a warning
    assert cache.get(["text 0"]).shape == (1, 4) and cache.encoded == 0
    for i in range(1, vectors.MAX_SHARDS + 1):
        vectors.EmbeddingCache(folder, None).get([f"text {i}"])
    cache = vectors.EmbeddingCache(folder, None)
    assert len(list(folder.glob("*.keys.npy"))) == 1  # merged into one shard (the bad one is gone)
    got = cache.get([f"text {i}" for i in range(vectors.MAX_SHARDS + 1)])
    assert got.shape == (vectors.MAX_SHARDS + 1, 4) and cache.encoded == 0


def test_exact_search_equals_brute_force():
    x = _planted(3000, 40)
    best, arg = earlier_neighbours(x, 0.8, search="exact")
    want_best, want_arg = _brute(x, 0.8)
    found = want_arg >= 0
    assert found.sum() > 100
    np.testing.assert_array_equal(arg, want_arg)
    np.testing.assert_allclose(best[found], want_best[found], atol=1e-5)
    assert np.isneginf(best[~found]).all()


@pytest.mark.parametrize("clusters", [40, 0])
def test_cell_search_recall_against_brute_force(clusters):
    x = _planted(8000, clusters)
    best, _ = earlier_neighbours(x, 0.8, search="ivf", probes=8)
    want, _ = _brute(x, 0.8)
    for threshold, recall in ((0.95, 0.99), (0.9, 0.97)):
        pos = want >= threshold
        assert pos.sum() > 50
        assert (best[pos] >= want[pos] - 1e-5).mean() >= recall
    assert not (best > want + 1e-5).any()  # never more similar than the truth: no invented pairs


def test_earlier_rows_only_serve_as_earlier_and_across_runs(tmp_path):
    earlier = [("old/r1", PARAPHRASES[0][0]), ("old/r2", DISTINCT[0])]
    ctx = Context("run", "prompt", earlier_texts=lambda: earlier, cache_dir=tmp_path)
    rows = _rows([PARAPHRASES[0][1], DISTINCT[2]])
    scored, verdicts = _run(rows, ctx, threshold=0.9)
    assert [k for k, _ in verdicts] == [False, True] and scored[0].detail == {"duplicate_of": "old/r1"}
    scored, verdicts = _run(rows, ctx, threshold=0.9, across_runs=False)
    assert [k for k, _ in verdicts] == [True, True]


def test_threshold_below_min_similarity_is_a_config_error():
    with pytest.raises(ConfigError, match=r"embed_dedup\.threshold: .*below min_similarity 0\.8"):
        parse_steps([{"embed_dedup": {"threshold": 0.7}}])
    (step,) = parse_steps([{"embed_dedup": {"threshold": 0.7, "min_similarity": 0.6}}])
    assert step.params.threshold == 0.7
    loose, strict = (parse_steps(["embed_dedup"], [f"embed_dedup.threshold={t}"])[0] for t in (0.9, 0.99))
    assert loose.version == strict.version  # a threshold: same scores
    assert parse_steps([{"embed_dedup": {"min_similarity": 0.7}}])[0].version != loose.version
