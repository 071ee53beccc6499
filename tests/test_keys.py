from factory.keys import canonical_json, record_id, request_key
from factory.types import Request, Sampling

TEACHER = {"backend": "openai", "model": "m", "base_url": "http://x/v1"}


def test_canonical_json_is_order_independent_and_compact():
    assert canonical_json({"b": 1, "a": [1, 2], "é": "ü"}) == canonical_json({"é": "ü", "a": [1, 2], "b": 1})
    assert canonical_json({"a": 1}) == b'{"a":1}'


def test_request_key_changes_with_every_part():
    base = Request.chat("hi", sampling=Sampling(temperature=0.5, seed=1))
    k = request_key(TEACHER, base.body())
    assert k == request_key(dict(reversed(list(TEACHER.items()))), base.body())
    variants = [
        Request.chat("hi!", sampling=Sampling(temperature=0.5, seed=1)),
        Request.chat("hi", sampling=Sampling(temperature=0.6, seed=1)),
        Request.chat("hi", sampling=Sampling(temperature=0.5, seed=2)),
        Request.chat("hi", sampling=Sampling(temperature=0.5, seed=1), sample_index=1),
        Request.chat("hi", sampling=Sampling(temperature=0.5, seed=1), json_schema={"type": "object"}),
        Request.chat("hi", system="s", sampling=Sampling(temperature=0.5, seed=1)),
    ]
    keys = {request_key(TEACHER, v.body()) for v in variants}
    assert k not in keys and len(keys) == len(variants)
    assert request_key({**TEACHER, "model": "other"}, base.body()) != k


def test_record_id_is_deterministic():
    assert record_id("r", "s", "seed", 0) == record_id("r", "s", "seed", 0)
    assert record_id("r", "s", "seed", 0) != record_id("r", "s", "seed", 1)
