"""How many Ray workers a cluster run starts and what each one reserves (a pure plan: no Ray here).

- API teachers only, or local engines on a cluster without GPUs: one CPU a worker, as many workers as
  the cluster has CPUs (or ``executor.workers``).
- Local engines on GPUs, one GPU an engine: one GPU a worker (``num_gpus=1``), one worker a GPU.
- An engine on k GPUs (a vLLM teacher with ``tensor_parallel_size * pipeline_parallel_size = k``): each
  worker reserves a placement group of k one-GPU bundles packed on one node (``STRICT_PACK``), the first
  bundle with one CPU for the worker itself, and runs in it; vLLM's own workers (one a GPU) go into the
  same group. ``GPUs // k`` workers.

A plan that cannot be placed (more workers than the GPUs hold, an engine on more GPUs than the cluster
has) is a ConfigError before any worker starts, not workers that wait for ever.
"""

from __future__ import annotations

from dataclasses import dataclass

from factory.errors import ConfigError

STRATEGY = "STRICT_PACK"


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    workers: int
    num_cpus: float  # what each worker asks for itself
    num_gpus: float
    # one placement group of these bundles per worker (empty: none), the worker in the first bundle
    bundles: tuple[dict[str, float], ...] = ()
    strategy: str = STRATEGY

    @property
    def gpus_per_worker(self) -> int:
        return int(self.num_gpus) + sum(int(b.get("GPU", 0)) for b in self.bundles)


def plan_workers(
    *,
    local: bool,
    gpus_per_engine: int,
    cluster_gpus: float,
    cluster_cpus: float,
    workers: int | None,
    shards: int,
) -> WorkerPlan:
    """The workers for ``shards`` pending shards. ``local``: a teacher runs an engine in the worker;
    ``gpus_per_engine``: the most GPUs one of its engines needs; ``workers``: ``executor.workers`` (None:
    as many as the cluster holds)."""
    if gpus_per_engine < 1:
        raise ValueError(f"gpus_per_engine must be at least 1, not {gpus_per_engine}")
    gpus = int(cluster_gpus)
    if not local or gpus < 1:
        n = workers or int(cluster_cpus) or 1
        return WorkerPlan(workers=_cap(n, shards), num_cpus=1, num_gpus=0)
    k = gpus_per_engine
    fits = gpus // k
    if fits < 1:
        raise ConfigError(
            f"the teacher's engine needs {k} GPUs (tensor_parallel_size × pipeline_parallel_size) and the "
            f"Ray cluster has {gpus}: lower tensor_parallel_size or pipeline_parallel_size, or add GPUs"
        )
    if workers is not None and workers > fits:
        raise ConfigError(
            f"executor.workers is {workers} and each worker needs {k} GPU{'s' if k > 1 else ''}, but the "
            f"Ray cluster has {gpus}: set executor.workers to at most {fits} (or leave it out)"
        )
    n = _cap(workers or fits, shards)
    if k == 1:
        return WorkerPlan(workers=n, num_cpus=0, num_gpus=1)
    bundles = ({"CPU": 1.0, "GPU": 1.0}, *({"GPU": 1.0} for _ in range(k - 1)))
    return WorkerPlan(workers=n, num_cpus=1, num_gpus=0, bundles=bundles)


def _cap(n: int, shards: int) -> int:
    return max(1, min(n, shards))
