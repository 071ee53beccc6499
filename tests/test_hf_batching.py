"""The transformers teacher batches requests of any seed and sampling together, each row sampled and ended
on its own: on a tiny random float32 Llama (tests/conftest.py) on the CPU, a request gets the same text
alone and in any batch, greedy or sampled, with its own max_tokens and stop strings; a seeded run puts
many seeds' samples into few generate calls."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from conftest import write_config

from factory import api
from factory.errors import ConfigError
from factory.store import Store
from factory.teachers import build_teacher
from factory.types import Completion, Request, Sampling

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

PROMPTS = (
    "Hello there.",
    "What is two plus two? Answer briefly, please.",
    "Name a colour",
    "Tell me a story",
)


def req(prompt: str, temperature: float = 0.0, seed: int | None = None, **kw) -> Request:
    sampling = Sampling(temperature=temperature, seed=seed, **{"max_tokens": 10, **kw})
    return Request.chat(prompt, sampling=sampling)


@pytest.fixture(scope="module")
def hf(tiny_llama):
    """One transformers teacher on the tiny Llama, its model loaded once for the module."""
    t = build_teacher(f"transformers:{tiny_llama}")
    yield t
    asyncio.run(t.aclose())


def complete(t, reqs: list[Request], batch_size: int = 16) -> list[Completion]:
    t.batch_size = batch_size
    out = asyncio.run(t.complete(reqs))
    assert all(isinstance(c, Completion) for c in out), out
    return out


def test_the_draw_follows_each_rows_probabilities_temperature_and_nucleus():
    from factory.teachers.hf_rows import draw

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]] * 4))
    ones = torch.ones(4, dtype=torch.float64)
    u = torch.tensor([0.1, 0.6, 0.75, 0.95], dtype=torch.float64)
    assert draw(logits, ones, ones, u).tolist() == [0, 1, 1, 2]  # cumulative 0.5, 0.8, 1.0
    # top_p 0.5 keeps the first token only (the mass before the second is already 0.5)
    assert draw(logits, ones, ones * 0.5, u).tolist() == [0, 0, 0, 0]
    # top_p 0.7 keeps two: u scales their mass 0.8, so 0.6 × 0.8 = 0.48 is token 0, 0.75 × 0.8 token 1
    assert draw(logits, ones, ones * 0.7, u).tolist() == [0, 0, 1, 1]
    # a very low temperature is (nearly) greedy, whatever u
    assert draw(logits, ones * 1e-3, ones, u).tolist() == [0, 0, 0, 0]
    # rows of other temperatures and top_p in one call: each as it is alone
    mixed = draw(logits, torch.tensor([1.0, 1e-3, 1.0, 1.0]), torch.tensor([1.0, 1.0, 0.5, 0.7]), u)
    assert mixed.tolist() == [0, 0, 0, 1]
    # a token of probability 0 is never drawn, even at u just under 1
    masked = torch.tensor([[0.0, 0.0, float("-inf")]])
    assert draw(masked, ones[:1], ones[:1], torch.tensor([1 - 2**-52], dtype=torch.float64)).tolist() == [1]


def test_a_request_gets_the_same_text_alone_and_in_any_batch(hf):
    reqs = [req(p) for p in PROMPTS]  # greedy
    reqs += [req(p, 1.0, seed=11 + i) for i, p in enumerate(PROMPTS)]  # sampled, a seed each
    reqs += [req(PROMPTS[1], 0.8, seed=5, top_p=0.9), req(PROMPTS[1], 1.3, seed=6, top_p=0.5)]
    alone = [complete(hf, [r])[0].text for r in reqs]
    together = [c.text for c in complete(hf, reqs)]
    backwards = [c.text for c in complete(hf, reqs[::-1], batch_size=3)][::-1]
    assert together == alone
    assert backwards == alone
    sampled = alone[4:8]
    assert len(set(sampled)) > 1 and sampled != alone[:4]  # the seeds sample, and not greedily
    again = complete(hf, [req(PROMPTS[0], 1.0, seed=11), req(PROMPTS[0], 1.0, seed=12)])
    assert again[0].text == alone[4] and again[1].text != alone[4]


def test_rows_end_by_their_own_max_tokens_and_stop_strings(hf):
    full = complete(hf, [req(p, max_tokens=16) for p in PROMPTS[:2]])
    for c in full:
        assert c.finish_reason == "length" and c.completion_tokens == 16, c  # random weights: no EOS soon
    stop = full[1].text[len(full[1].text) // 2 :][:2]
    rows = [
        req(PROMPTS[0], max_tokens=3),
        req(PROMPTS[1], max_tokens=16, stop=(stop,)),
        req(PROMPTS[0], max_tokens=16),
        req(PROMPTS[1], 1.0, seed=3, max_tokens=5, stop=("zzzz-never",)),
    ]
    short, stopped, long, sampled = complete(hf, rows)
    assert short.completion_tokens == 3 and short.finish_reason == "length"
    assert full[0].text.startswith(short.text) and len(short.text) < len(full[0].text)
    assert stopped.finish_reason == "stop" and stopped.text == full[1].text[: full[1].text.find(stop)]
    assert stopped.text.strip() and 0 < stopped.completion_tokens < 16
    assert long.text == full[0].text and long.completion_tokens == 16  # its neighbours ended; it went on
    assert sampled.completion_tokens == 5 and sampled.finish_reason == "length"
    assert sampled.text == complete(hf, [rows[3]])[0].text


def test_a_token_budget_splits_batches_and_changes_no_text(hf):
    reqs = [req(p, 1.0, seed=i) for i, p in enumerate(PROMPTS)]
    whole = complete(hf, reqs)
    before = hf.batches
    second_shortest = sorted(c.prompt_tokens for c in whole)[1]
    hf.batch_tokens = 2 * (second_shortest + 10) - 1  # no two rows fit in one batch
    try:
        split = complete(hf, reqs)
    finally:
        hf.batch_tokens = 32768
    assert hf.batches - before == len(reqs)
    assert [c.text for c in split] == [c.text for c in whole]
    with pytest.raises(ConfigError, match="batch_tokens"):
        build_teacher(f"transformers:{hf.model_dir()}", {"batch_tokens": 0})


def test_a_seeded_run_puts_many_seeds_into_few_generate_calls(tmp_path, tiny_llama):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "text": f"Say something about {i}."}) + "\n"
                             for i in range(8)))  # fmt: skip
    cfg = write_config(
        tmp_path,
        f"name: seeded\nrecipe: prompt\nseeds: '{seeds}'\nstore: '{tmp_path / 's.duckdb'}'\n"
        "params: {n: 4, temperature: 1.0, max_tokens: 6}\n"
        f"teacher: {{spec: 'transformers:{tiny_llama}'}}\nrunner: {{commit_interval_s: 0.05}}\n",
    )
    teacher = build_teacher(f"transformers:{tiny_llama}", {"batch_size": 16})
    try:
        res = api.run(cfg, teacher=teacher)
    finally:
        asyncio.run(teacher.aclose())
    assert res.status == "done", res.error
    assert teacher.attempts == 32  # 8 seeds × 4 samples, each sample its own seed
    assert teacher.batches <= 4, teacher.batches  # grouped by identical seed, this was 32 calls
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        texts = [r["text"] for r in st.records_table(res.run_id).to_pylist()]
    assert len(texts) == 32 and len(set(texts)) > 16  # the samples differ: each drew from its own seed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rows_sample_and_end_on_their_own_on_a_gpu(tiny_llama):
    t = build_teacher(f"transformers:{tiny_llama}", {"device": "cuda"})
    try:
        reqs = [req(p, 1.0, seed=i, max_tokens=4 + i) for i, p in enumerate(PROMPTS)] + [req(PROMPTS[0])]
        first = complete(t, reqs)
        assert [c.text for c in complete(t, reqs)] == [c.text for c in first]  # the same batch repeats
        assert [c.completion_tokens for c in first[:4]] == [4, 5, 6, 7]
        assert len({c.text for c in first[:4]}) > 1
        assert t.describe()["loaded"] and t._model.device.type == "cuda"
    finally:
        asyncio.run(t.aclose())
