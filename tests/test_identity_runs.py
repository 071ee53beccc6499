"""Through the runner: a changed setting that changes answers sends new requests; a setting that only changes
speed is served from the cache. Against the fault server on 127.0.0.1 (whose answer depends on the exact
body it receives, as a real model's does) and a tiny random Llama run by transformers."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import write_config

from factory import api
from factory.store import Store


def _seeds(tmp_path, n=4):
    p = tmp_path / "seeds.jsonl"
    p.write_text(
        "".join(json.dumps({"id": f"s{i}", "text": f"Say something about {i}."}) + "\n" for i in range(n))
    )
    return p


def _run(tmp_path, name, teacher_yaml, max_tokens=12):
    cfg = write_config(
        tmp_path,
        f"name: {name}\nrecipe: prompt\nseeds: '{_seeds(tmp_path)}'\nstore: '{tmp_path / 's.duckdb'}'\n"
        f"params: {{max_tokens: {max_tokens}}}\nteacher: {teacher_yaml}\nrunner: {{commit_interval_s: 0.05}}\n",
        name=f"{name}.yaml",
    )
    res = api.run(cfg)
    assert res.status == "done", res.error
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        texts = [
            r["text"] for r in sorted(st.records_table(res.run_id).to_pylist(), key=lambda r: r["seed_id"])
        ]
    return res.progress, texts


def test_extra_body_sends_new_requests_and_throughput_settings_do_not(tmp_path):
    from factory.testing.fault_server import FaultConfig, serve_in_thread

    with serve_in_thread(FaultConfig()) as srv:
        url = srv.base_url
        plain, plain_texts = _run(tmp_path, "plain", f"{{spec: 'openai:m@{url}'}}")
        assert plain.requests_sent == 4 and srv.stats()["requests"] == 4

        extra = f"{{spec: 'openai:m@{url}', options: {{extra_body: {{top_k: 5}}}}}}"
        first, extra_texts = _run(tmp_path, "extra", extra)
        assert first.requests_sent == 4 and first.cache_hits == 0 and srv.stats()["requests"] == 8
        assert extra_texts != plain_texts  # the server answered the other body otherwise

        other = f"{{spec: 'openai:m@{url}', options: {{extra_body: {{top_k: 6}}}}}}"
        assert _run(tmp_path, "other", other)[0].requests_sent == 4 and srv.stats()["requests"] == 12

        tuned = f"{{spec: 'openai:m@{url}', max_in_flight: 2, max_retries: 1, options: {{extra_body: {{top_k: 5}}}}}}"
        again, again_texts = _run(tmp_path, "tuned", tuned)
        assert again.requests_sent == 0 and again.cache_hits == 4 and again_texts == extra_texts

        back, back_texts = _run(
            tmp_path, "plain-again", f"{{spec: 'openai:m@{url}', options: {{extra_body: {{}}}}}}"
        )
        assert back.requests_sent == 0 and back.cache_hits == 4 and back_texts == plain_texts
        assert srv.stats()["requests"] == 12


@pytest.mark.timeout(300)
def test_local_settings_and_a_retrained_checkpoint_send_new_requests(tmp_path, tiny_llama, monkeypatch):
    pytest.importorskip("torch")
    import torch
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("FACTORY_DIGEST_CACHE", str(tmp_path / "digests.json"))
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)

    def spec(**options):
        opts = ", ".join(f"{k}: {v}" for k, v in {"dtype": "float32", **options}.items())
        return f"{{spec: 'transformers:{model}', options: {{{opts}}}}}"

    first, texts = _run(tmp_path, "a", spec(batch_size=4), max_tokens=4)
    assert first.requests_sent == 4
    tuned, tuned_texts = _run(tmp_path, "b", spec(batch_size=1, device="cpu"), max_tokens=4)
    assert tuned.requests_sent == 0 and tuned.cache_hits == 4 and tuned_texts == texts
    assert _run(tmp_path, "c", spec(max_model_len=256), max_tokens=4)[0].requests_sent == 4

    # retrained: the same config, the same tensor shapes and file size, other values
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    tensors = load_file(str(weights))
    torch.manual_seed(1)
    save_file(
        {k: torch.randn_like(v) * 0.3 for k, v in tensors.items()}, str(weights), metadata={"format": "pt"}
    )
    assert weights.stat().st_size == size
    retrained, retrained_texts = _run(tmp_path, "d", spec(batch_size=4), max_tokens=4)
    assert retrained.requests_sent == 4 and retrained.cache_hits == 0
    assert retrained_texts != texts
