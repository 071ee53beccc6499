"""On a machine with NVIDIA GPUs and vLLM's CUDA build (`make install-gpu`): the vLLM teacher starts with
the GPU's engine options, refuses parallel sizes the visible GPUs cannot hold, and on two GPUs a cluster run
whose engine spans both runs inside its worker's placement group. Skipped elsewhere."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from factory import api
from factory.errors import ConfigError
from factory.teachers import build_teacher
from factory.teachers import vllm_options as vo
from factory.types import Completion, Request, Sampling


def cuda_gpus() -> int:
    if shutil.which("nvidia-smi") is None:  # no driver: no need to import torch to know
        return 0
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:
        return 0


GPUS = cuda_gpus()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(GPUS == 0, reason="needs a CUDA device"),
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def cuda_vllm():
    pytest.importorskip("vllm")
    if vo.current_device() != "cuda":
        pytest.skip("vLLM's CUDA build is not installed here (make install-gpu)")


def greedy(prompt: str) -> Request:
    return Request.chat(prompt, sampling=Sampling(temperature=0.0, max_tokens=16))


def test_the_engine_starts_with_the_gpus_options(cuda_vllm, embedded_dir):
    async def go():
        t = build_teacher(f"vllm:{embedded_dir}", {"max_model_len": 1024})
        try:
            out = await t.complete([greedy("Name three fruits."), greedy("What is 2 + 3?")])
            return out, t.describe()
        finally:
            await t.aclose()

    out, described = asyncio.run(go())
    assert all(isinstance(c, Completion) and c.text.strip() for c in out), out
    assert described["device"] == "cuda"
    assert described["engine_options"] == vo.BY_DEVICE["cuda"]
    assert described["settings"].startswith("cuda: enforce_eager=False, gpu_memory_utilization=0.9")


def test_parallel_sizes_over_the_visible_gpus_are_refused_at_start(cuda_vllm, embedded_dir):
    async def go():
        t = build_teacher(f"vllm:{embedded_dir}", {"tensor_parallel_size": GPUS + 1})
        try:
            return await t.complete([greedy("hi")])
        finally:
            await t.aclose()

    with pytest.raises(ConfigError, match=rf"tensor_parallel_size \({GPUS + 1}\) × pipeline_parallel_size"):
        asyncio.run(go())


@pytest.mark.skipif(GPUS < 2, reason="needs two CUDA devices")
def test_a_cluster_worker_runs_a_two_gpu_engine_in_its_placement_group(cuda_vllm, embedded_dir, tmp_path):
    pytest.importorskip("ray")
    n = 6
    (tmp_path / "seeds.jsonl").write_text(
        "".join(json.dumps({"id": f"s{i}", "text": f"Say a word about {i}."}) + "\n" for i in range(n))
    )
    cfg = tmp_path / "run.yaml"
    # SmolLM2-135M has 9 attention heads, so two GPUs split its 30 layers (pipeline), not its heads
    cfg.write_text(
        "name: pp\nrecipe: prompt\nseeds: seeds.jsonl\nstore: pp.duckdb\nparams: {max_tokens: 8}\n"
        f"teacher: {{spec: 'vllm:{embedded_dir}', "
        "options: {pipeline_parallel_size: 2, max_model_len: 1024}}\n"
        "executor: {kind: ray, shard_seeds: 3, workers: 1}\n"
    )
    res = api.run(cfg)
    assert res.status == "done", (res.error, res.progress)
    assert res.progress.seeds_done == n and res.progress.requests_sent == n
