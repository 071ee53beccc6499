import pytest

from factory.errors import ConfigError
from factory.keys import KEY_FORMAT, REQUEST_KEY_VERSION, canonical_json, record_id, request_key
from factory.teachers import build_teacher
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


# -- the key format is a contract: these values are pinned --------------------------------------------------
# Keys of plain API requests, computed with the code before extra_body was keyed (key format 1): they
# must never change, or every user pays again for answers already in their store.
API_URL = "http://127.0.0.1:8000/v1"
GOLDEN_PLAIN = {
    "plain": "62287645cb5c6ed9d547d3bd22c06bb4",
    "seeded_with_stop": "b526a6d48b04f18913fb6c347beb3a89",
    "schema_and_logprobs": "db5b5ed8f4c5bc6e02cc369c5e77c6fe",
}
GOLDEN_EXTRA_BODY = "eb4cc19cde0b23b3b18cb87af38a25eb"  # the plain request sent with extra_body {top_k: 5}
GOLDEN_LOCAL = "313c2eebe7783437289c4216515c99bb"  # a vllm identity of format 2 (see below)


def _golden_bodies() -> dict[str, dict]:
    return {
        "plain": Request.chat("What is 2+2?").body(),
        "seeded_with_stop": Request.chat(
            "Name a colour.",
            system="Be brief.",
            sampling=Sampling(temperature=0.0, max_tokens=32, seed=7, stop=("\n",)),
            sample_index=2,
        ).body(),
        "schema_and_logprobs": Request.chat(
            "Give JSON.", json_schema={"type": "object", "properties": {"a": {"type": "integer"}}}, logprobs=3
        ).body(),
    }


def test_golden_keys_of_plain_api_requests_are_stable():
    teacher = build_teacher(f"openai:gpt-4o-mini@{API_URL}")
    # an empty extra_body and every setting that only changes speed leave the identity as it was
    tuned = build_teacher(
        f"openai:gpt-4o-mini@{API_URL}",
        {
            "extra_body": {},
            "max_in_flight": 3,
            "max_retries": 1,
            "request_timeout_s": 5.0,
            "backoff_base_s": 2,
        },
    )
    assert (
        teacher.identity()
        == tuned.identity()
        == {"backend": "openai", "model": "gpt-4o-mini", "base_url": API_URL}
    )
    for name, body in _golden_bodies().items():
        assert request_key(teacher.identity(), body) == GOLDEN_PLAIN[name], name
        assert request_key(tuned.identity(), body) == GOLDEN_PLAIN[name], name


def test_golden_keys_of_extra_body_and_local_identities():
    body = _golden_bodies()["plain"]
    t = build_teacher(f"openai:gpt-4o-mini@{API_URL}", {"extra_body": {"top_k": 5}})
    assert request_key(t.identity(), body) == GOLDEN_EXTRA_BODY
    local = {
        "backend": "vllm",
        "weights": "0" * 32,
        "options": {"dtype": "auto", "max_model_len": 2048, "seed": 0},
    }
    assert request_key(local, body) == GOLDEN_LOCAL
    assert (
        REQUEST_KEY_VERSION == "rk1" and KEY_FORMAT == 2
    )  # a new format updates the store (m003, keyformat)


def test_extra_body_is_keyed_once_and_order_free():
    body = Request.chat("hi").body()

    def key(extra):
        return request_key(build_teacher(f"openai:m@{API_URL}", {"extra_body": extra}).identity(), body)

    plain = key({})
    variants = [
        {"reasoning_effort": "low"},
        {"reasoning_effort": "high"},
        {"top_k": 5},
        {"top_k": 6},
        {"chat_template_kwargs": {"enable_thinking": False}},
        {"chat_template_kwargs": {"enable_thinking": True}},
    ]
    keys = [key(v) for v in variants]
    assert plain not in keys and len(set(keys)) == len(variants)
    assert key({"a": 1, "b": {"y": 2, "x": 1}}) == key({"b": {"x": 1, "y": 2}, "a": 1})
    # what the payload sends is what is keyed: extra_body reaches the payload, the key in the identity
    t = build_teacher(f"openai:m@{API_URL}", {"extra_body": {"top_k": 5}})
    assert t.payload(Request.chat("hi"))["top_k"] == 5 and "top_k" not in body


def test_every_payload_field_from_the_request_is_in_the_body():
    t = build_teacher(f"openai:m@{API_URL}")
    base = Request.chat("hi")
    variants = [
        Request.chat("hi", logprobs=2),
        Request.chat("hi", json_schema={"type": "object"}),
        Request.chat("hi", sampling=Sampling(top_p=0.5)),
        Request.chat("hi", sampling=Sampling(max_tokens=9)),
        Request.chat("hi", sampling=Sampling(stop=("x",))),
    ]
    for v in variants:
        assert t.payload(v) != t.payload(base)
        assert request_key(t.identity(), v.body()) != request_key(t.identity(), base.body()), v


def test_extra_body_that_json_cannot_hold_is_a_config_error():
    for bad in (["top_k", 5], {1: "x"}, {"x": object()}):
        with pytest.raises(ConfigError, match="extra_body"):
            build_teacher(f"openai:m@{API_URL}", {"extra_body": bad})
