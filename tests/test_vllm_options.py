"""The vLLM engine options chosen by the device, and the parallel sizes: pure functions with the device and
the GPU count passed in, and the teacher's engine arguments built without starting vLLM."""

from __future__ import annotations

import pytest

from factory.errors import ConfigError
from factory.keys import request_key
from factory.teachers import build_teacher
from factory.teachers import vllm_options as vo
from factory.types import Request


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_DIGEST_CACHE", str(tmp_path / "digests.json"))
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text('{"model_type": "llama"}')
    (m / "model.safetensors").write_bytes(b"0" * 16)
    return m


def engine_kwargs(folder, monkeypatch, *, device, gpus=0, group=None, **options):
    """The teacher's arguments for vllm.LLM on ``device`` with ``gpus`` visible (``group``: the GPU bundles
    of the Ray placement group it runs in), vLLM never imported: the dtype is given, the device probes
    are replaced."""
    monkeypatch.setattr(vo, "current_device", lambda: device)
    monkeypatch.setattr(vo, "placement_gpus", lambda: group)
    monkeypatch.setattr(vo, "visible_gpus", lambda: group if group is not None else gpus)
    t = build_teacher(f"vllm:{folder}", {"dtype": "bfloat16", **options})
    return t, t._engine_kwargs(folder)


def test_each_device_has_its_defaults_and_an_explicit_option_wins():
    cuda = vo.engine_options("cuda", {})
    assert cuda == {
        "enforce_eager": False,
        "gpu_memory_utilization": 0.9,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
    }
    cpu = vo.engine_options("cpu", {})
    assert cpu["enforce_eager"] is True and cpu["gpu_memory_utilization"] == 0.3
    assert cpu["enable_chunked_prefill"] is False and "enable_prefix_caching" not in cpu  # vLLM's own
    mine = {"enforce_eager": True, "gpu_memory_utilization": 0.5, "enable_prefix_caching": False}
    assert vo.engine_options("cuda", mine) == {**cuda, **mine}
    assert vo.engine_options("cpu", {"enable_chunked_prefill": True})["enable_chunked_prefill"] is True
    assert vo.engine_options("xpu", mine) == mine  # a device without defaults here: vLLM decides


def test_the_parallel_sizes_must_fit_the_visible_gpus():
    vo.check_parallel(1, 1, 1)
    vo.check_parallel(2, 2, 4)
    with pytest.raises(
        ConfigError, match=r"tensor_parallel_size \(4\) × pipeline_parallel_size \(1\) need 4 GPUs"
    ):
        vo.check_parallel(4, 1, 2)
    with pytest.raises(ConfigError, match=r"1 GPU is visible.*at most 1"):
        vo.check_parallel(1, 2, 1)


def test_parallel_sizes_and_device_options_are_validated(folder):
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ConfigError, match="tensor_parallel_size must be a positive whole number"):
            build_teacher(f"vllm:{folder}", {"tensor_parallel_size": bad})
    with pytest.raises(ConfigError, match=r"engine_args\.pipeline_parallel_size must be a positive"):
        build_teacher(f"vllm:{folder}", {"engine_args": {"pipeline_parallel_size": 0}})
    with pytest.raises(
        ConfigError, match=r"tensor_parallel_size is 2 and engine_args\.tensor_parallel_size is 4"
    ):
        build_teacher(
            f"vllm:{folder}", {"tensor_parallel_size": 2, "engine_args": {"tensor_parallel_size": 4}}
        )
    for bad in (0, 1.5, "0.5"):
        with pytest.raises(ConfigError, match=r"gpu_memory_utilization must be a share .* in \(0, 1\]"):
            build_teacher(f"vllm:{folder}", {"gpu_memory_utilization": bad})
    with pytest.raises(ConfigError, match="enforce_eager must be true or false"):
        build_teacher(f"vllm:{folder}", {"enforce_eager": "yes"})
    t = build_teacher(
        f"vllm:{folder}", {"engine_args": {"tensor_parallel_size": 2}, "pipeline_parallel_size": 3}
    )
    assert t.gpus_per_engine() == 6


def test_the_engine_gets_the_devices_defaults_unless_the_config_sets_them(folder, monkeypatch):
    t, kw = engine_kwargs(folder, monkeypatch, device="cuda", gpus=1)
    assert kw["enforce_eager"] is False and kw["gpu_memory_utilization"] == 0.9
    assert kw["enable_prefix_caching"] is True and kw["enable_chunked_prefill"] is True
    assert kw["tensor_parallel_size"] == 1 and kw["pipeline_parallel_size"] == 1
    assert "distributed_executor_backend" not in kw
    assert t.describe()["device"] == "cuda"
    assert t.describe()["settings"] == (
        "cuda: enforce_eager=False, gpu_memory_utilization=0.9, enable_prefix_caching=True, "
        "enable_chunked_prefill=True, tensor_parallel_size=1, pipeline_parallel_size=1"
    )
    _, kw = engine_kwargs(folder, monkeypatch, device="cpu")
    assert kw["enforce_eager"] is True and kw["gpu_memory_utilization"] == 0.3
    assert kw["enable_chunked_prefill"] is False and "enable_prefix_caching" not in kw
    _, kw = engine_kwargs(
        folder, monkeypatch, device="cuda", gpus=1, enforce_eager=True, gpu_memory_utilization=0.4,
        engine_args={"enable_prefix_caching": False, "max_num_seqs": 8},
    )  # fmt: skip
    assert kw["enforce_eager"] is True and kw["gpu_memory_utilization"] == 0.4
    assert kw["enable_prefix_caching"] is False and kw["enable_chunked_prefill"] is True
    assert kw["max_num_seqs"] == 8


def test_describe_says_what_is_set_before_the_engine_starts(folder):
    d = build_teacher(f"vllm:{folder}", {"tensor_parallel_size": 2, "enforce_eager": True}).describe()
    assert d["device"] is None and d["engine_options"] == {"enforce_eager": True}
    assert d["settings"] == (
        "engine options by device at start; set: enforce_eager=True, tensor_parallel_size=2, "
        "pipeline_parallel_size=1"
    )
    assert build_teacher(f"vllm:{folder}").describe()["settings"] == "engine options by device at start"


def test_a_parallel_engine_is_checked_at_start_and_uses_its_ray_placement_group(folder, monkeypatch):
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        engine_kwargs(folder, monkeypatch, device="cuda", gpus=1, tensor_parallel_size=2)
    _, kw = engine_kwargs(folder, monkeypatch, device="cuda", gpus=2, tensor_parallel_size=2)
    assert kw["tensor_parallel_size"] == 2 and "distributed_executor_backend" not in kw
    # in a Ray worker's placement group: its bundles count, and vLLM's workers go into it
    with pytest.raises(ConfigError, match="need 4 GPUs and 2 GPUs are visible"):
        engine_kwargs(folder, monkeypatch, device="cuda", gpus=8, group=2, pipeline_parallel_size=4)
    _, kw = engine_kwargs(folder, monkeypatch, device="cuda", group=2, pipeline_parallel_size=2)
    assert kw["pipeline_parallel_size"] == 2 and kw["distributed_executor_backend"] == "ray"
    _, kw = engine_kwargs(
        folder, monkeypatch, device="cuda", group=2, tensor_parallel_size=2,
        engine_args={"distributed_executor_backend": "mp"},
    )  # fmt: skip
    assert kw["distributed_executor_backend"] == "mp"  # the config's word wins


def test_neither_the_device_nor_parallelism_changes_a_request_key(folder, monkeypatch):
    body = Request.chat("hi").body()
    base = request_key(build_teacher(f"vllm:{folder}").identity(), body)
    for options in (
        {"tensor_parallel_size": 2, "pipeline_parallel_size": 2},
        {"gpu_memory_utilization": 0.9, "enforce_eager": False},
        {"engine_args": {"enable_prefix_caching": True, "enable_chunked_prefill": True}},
    ):
        assert request_key(build_teacher(f"vllm:{folder}", options).identity(), body) == base, options
    for device in ("cuda", "cpu"):  # the identity is the same before and after the device chose
        t, _ = engine_kwargs(folder, monkeypatch, device=device, gpus=1)
        assert request_key(t.identity(), body) == request_key(
            build_teacher(f"vllm:{folder}", {"dtype": "bfloat16"}).identity(), body
        )


def test_the_runs_teacher_line_says_what_the_config_sets(folder, tmp_path, cli):
    (tmp_path / "seeds.jsonl").write_text('{"id": "a", "text": "hi"}\n')
    (tmp_path / "run.yaml").write_text(
        "name: tp\nrecipe: prompt\nseeds: seeds.jsonl\nstore: tp.duckdb\n"
        f"teacher: {{spec: 'vllm:{folder}', options: {{tensor_parallel_size: 2}}}}\n"
    )
    got = cli("run", "run.yaml", "--dry-run", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert (
        f"teacher vllm:{folder} → a local vllm engine (engine options by device at start; "
        "set: tensor_parallel_size=2, pipeline_parallel_size=1)"
    ) in got.stdout.splitlines()
