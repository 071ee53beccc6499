"""The vLLM engine options that depend on the machine: defaults chosen by the device when the engine starts,
and the parallel sizes (tensor and pipeline) with the GPUs they need.

A teacher option left unset (``enforce_eager``, ``gpu_memory_utilization``; ``enable_prefix_caching`` and
``enable_chunked_prefill`` through ``engine_args``) takes its device's value from :data:`BY_DEVICE` when the
engine starts; one the config sets always wins. A device not listed there keeps vLLM's own defaults. None
of these options is keyed (see :mod:`factory.teachers.local`): the device changes the speed, not the answer.

The functions here are pure (the device and the GPU count are passed in), except :func:`current_device` and
:func:`visible_gpus`, which ask vLLM and Ray on the engine thread.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from factory.errors import ConfigError

BY_DEVICE: dict[str, dict[str, Any]] = {
    # A GPU of its own: CUDA graphs, most of its memory, the shared few-shot prefix computed once, long
    # prompts prefilled in chunks beside the decoding ones.
    "cuda": {
        "enforce_eager": False,
        "gpu_memory_utilization": 0.9,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
    },
    "cpu": {
        # CUDA graphs do not exist there, and the share is of the memory vLLM's CPU backend plans for.
        "enforce_eager": True,
        "gpu_memory_utilization": 0.3,
        # vLLM's CPU runner fails a whole batch ("CPU Generator does not use offset") when a seeded
        # request's prompt is prefilled in chunks; whole prompts per step avoid it.
        "enable_chunked_prefill": False,
    },
}
CHOSEN = ("enforce_eager", "gpu_memory_utilization", "enable_prefix_caching", "enable_chunked_prefill")
PARALLEL = ("tensor_parallel_size", "pipeline_parallel_size")


def engine_options(device: str, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The device's defaults under the options the config sets (``explicit``: no None values)."""
    return {**BY_DEVICE.get(device, {}), **explicit}


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"the vllm teacher option {name} must be a positive whole number, not {value!r}")
    return value


def fraction(name: str, value: Any) -> float | None:
    """``gpu_memory_utilization``: None (by device) or a number in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(
            f"the vllm teacher option {name} must be a share of the device's memory in (0, 1], not {value!r}"
        )
    return float(value)


def flag(name: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"the vllm teacher option {name} must be true or false, not {value!r}")
    return value


def parallel_sizes(options: Mapping[str, Any], engine_args: Any) -> tuple[int, int]:
    """(tensor, pipeline) parallel sizes from the teacher options, or from ``engine_args`` where only they
    name one; the same size in both with two values is refused. ``engine_args`` not a mapping: the
    caller's own check refuses it."""
    sizes = []
    for name in PARALLEL:
        value = positive_int(name, options[name])
        if isinstance(engine_args, Mapping) and name in engine_args:
            other = positive_int(f"engine_args.{name}", engine_args[name])
            if name in options and options[name] != 1 and other != value:
                raise ConfigError(
                    f"the vllm teacher option {name} is {value} and engine_args.{name} is {other}: "
                    f"set it in one place"
                )
            value = other
        sizes.append(value)
    return sizes[0], sizes[1]


def check_parallel(tensor: int, pipeline: int, gpus: int) -> None:
    """A GPU engine needs ``tensor * pipeline`` GPUs; ``gpus`` is how many this process may use."""
    need = tensor * pipeline
    if need <= gpus:
        return
    seen = f"{gpus} GPU is" if gpus == 1 else f"{gpus} GPUs are"
    raise ConfigError(
        f"the vllm teacher options tensor_parallel_size ({tensor}) × pipeline_parallel_size ({pipeline}) "
        f"need {need} GPUs and {seen} visible here (CUDA_VISIBLE_DEVICES, or the Ray worker's placement "
        f"group): lower tensor_parallel_size or pipeline_parallel_size so their product is at most {gpus}, "
        f"or run where {need} GPUs are visible"
    )


def summary(device: str | None, options: Mapping[str, Any], tensor: int, pipeline: int) -> str:
    """One line for logs and the run's teacher line: the device and what the engine runs with. Before the
    engine starts (``device`` None) only what the config sets is known."""
    shown = {k: options[k] for k in CHOSEN if k in options}
    if tensor != 1 or pipeline != 1 or device is not None:
        shown.update(tensor_parallel_size=tensor, pipeline_parallel_size=pipeline)
    body = ", ".join(f"{k}={v}" for k, v in shown.items())
    if device is None:
        return "engine options by device at start" + (f"; set: {body}" if body else "")
    return f"{device}: {body}"


# -- what the engine thread asks -----------------------------------------------------------------------------
def current_device() -> str:
    """``cuda`` (also ROCm), ``cpu``, or vLLM's name for another device; ``unknown`` when vLLM cannot say."""
    try:
        from vllm.platforms import current_platform

        if current_platform.is_cuda_alike():
            return "cuda"
        if current_platform.is_cpu():
            return "cpu"
        return str(current_platform.device_type or "unknown")
    except Exception:  # an engine that cannot say: leave vLLM's defaults alone
        return "unknown"


def placement_gpus() -> int | None:
    """The GPU bundles of the Ray placement group this process runs in, or None outside one."""
    if "ray" not in sys.modules:  # a Ray worker has imported ray long before a teacher starts its engine
        return None
    import ray

    if not ray.is_initialized():
        return None
    group = ray.util.get_current_placement_group()
    if group is None:
        return None
    return sum(1 for bundle in group.bundle_specs if bundle.get("GPU", 0) >= 1)


def visible_gpus() -> int:
    """The GPUs an engine started here may use: a placement group's, else the ones the platform sees."""
    in_group = placement_gpus()
    if in_group is not None:
        return in_group
    try:
        from vllm.platforms import current_platform

        return int(current_platform.device_count())
    except Exception:
        return 0
