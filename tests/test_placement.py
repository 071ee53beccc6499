"""How many cluster workers a run starts and what each reserves: the plan as a pure function, then the
placement groups on a real local Ray that declares GPUs it does not have (Ray only counts them), with a
probe actor in place of the shard worker."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from factory import api
from factory.errors import ConfigError
from factory.placement import WorkerPlan, plan_workers


def plan(**kw) -> WorkerPlan:
    args = {
        "local": True,
        "gpus_per_engine": 1,
        "cluster_gpus": 0,
        "cluster_cpus": 4,
        "workers": None,
        "shards": 100,
    }
    return plan_workers(**{**args, **kw})


def test_api_teachers_and_gpu_less_clusters_get_one_cpu_a_worker():
    assert plan(local=False, cluster_gpus=8) == WorkerPlan(workers=4, num_cpus=1, num_gpus=0)
    assert plan(cluster_gpus=0, gpus_per_engine=2) == WorkerPlan(workers=4, num_cpus=1, num_gpus=0)
    assert plan(local=False, workers=2).workers == 2
    assert plan(local=False, shards=3).workers == 3  # never more workers than shards
    assert plan(local=False, cluster_cpus=0).workers == 1


def test_an_engine_on_one_gpu_gets_one_gpu_a_worker():
    p = plan(cluster_gpus=4)
    assert p == WorkerPlan(workers=4, num_cpus=0, num_gpus=1) and p.gpus_per_worker == 1
    assert plan(cluster_gpus=4, workers=2).workers == 2
    assert plan(cluster_gpus=4, shards=1).workers == 1


def test_an_engine_on_several_gpus_gets_a_packed_placement_group_a_worker():
    p = plan(cluster_gpus=8, gpus_per_engine=4)
    assert p.workers == 2 and p.num_gpus == 0 and p.num_cpus == 1  # the worker's CPU, from its first bundle
    assert p.bundles == ({"CPU": 1.0, "GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0})
    assert p.strategy == "STRICT_PACK" and p.gpus_per_worker == 4
    assert plan(cluster_gpus=7, gpus_per_engine=2).workers == 3  # the odd GPU is left over
    assert plan(cluster_gpus=8, gpus_per_engine=2, workers=1).workers == 1


def test_a_plan_the_cluster_cannot_place_is_refused():
    with pytest.raises(
        ConfigError, match=r"needs 4 GPUs .* the Ray cluster has 2: lower tensor_parallel_size"
    ):
        plan(cluster_gpus=2, gpus_per_engine=4)
    with pytest.raises(
        ConfigError, match=r"executor\.workers is 3 .* has 4: set executor\.workers to at most 2"
    ):
        plan(cluster_gpus=4, gpus_per_engine=2, workers=3)
    with pytest.raises(ConfigError, match=r"executor\.workers is 5"):
        plan(cluster_gpus=4, workers=5)


class Probe:
    """Stands in for the shard worker: says where it runs, and starts a one-GPU actor the way vLLM starts
    its workers (into a bundle of the current placement group)."""

    def where(self) -> dict:
        import ray

        from factory.teachers.vllm_options import placement_gpus

        group = ray.util.get_current_placement_group()
        return {
            "group": group.id.hex() if group else None,
            "bundles": group.bundle_specs if group else None,
            "resources": ray.get_runtime_context().get_assigned_resources(),
            "gpus": placement_gpus(),
            # the teacher asks from its engine thread, not the actor's
            "gpus_from_a_thread": ThreadPoolExecutor(1).submit(placement_gpus).result(),
        }

    def child_in_group(self, bundle: int) -> bool:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = ray.util.get_current_placement_group()
        child = (
            ray.remote(num_cpus=0, num_gpus=1)(Child)
            .options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=bundle
                )
            )
            .remote()
        )
        return ray.get(child.group_id.remote(), timeout=60) == group.id.hex()


class Child:
    def group_id(self) -> str | None:
        import ray

        group = ray.util.get_current_placement_group()
        return group.id.hex() if group else None


@pytest.mark.slow  # a Ray instance takes 5-15 s to start here
def test_workers_of_a_multi_gpu_engine_run_in_their_own_placement_groups(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    from factory.cluster import start_workers

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    monkeypatch.setenv("FACTORY_DIGEST_CACHE", str(tmp_path / "digests.json"))

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, object_store_memory=2**27,
             logging_level="warning", log_to_driver=False)  # fmt: skip
    try:
        p = plan(cluster_gpus=4, cluster_cpus=2, gpus_per_engine=2)
        actors, groups = start_workers(ray, p, Probe, ())
        assert len(actors) == 2 and len(groups) == 2
        seen = ray.get([a.where.remote() for a in actors], timeout=120)
        for s in seen:
            assert s["bundles"] == [{"CPU": 1.0, "GPU": 1.0}, {"GPU": 1.0}]
            assert s["gpus"] == s["gpus_from_a_thread"] == 2  # what the vllm teacher checks its sizes against
            assert s["resources"].get("CPU") == 1.0 and not s["resources"].get("GPU")
        assert all(ray.get([a.child_in_group.remote(1) for a in actors], timeout=120))
        assert [s["group"] for s in seen] == [g.id.hex() for g in groups]  # each worker in its own group
        # every GPU is held by the groups: nothing is left for a fifth GPU request
        assert ray.available_resources().get("GPU", 0) == 0
        for g in groups:
            ray.util.remove_placement_group(g)
        # a one-GPU engine: no group, one GPU a worker
        actors, groups = start_workers(ray, plan(cluster_gpus=4, cluster_cpus=2, workers=2), Probe, ())
        seen = ray.get([a.where.remote() for a in actors], timeout=120)
        assert groups == [] and all(s["bundles"] is None and s["resources"]["GPU"] == 1.0 for s in seen)
        assert all(s["gpus"] is None and s["gpus_from_a_thread"] is None for s in seen)
        # a run whose engine needs more GPUs than the cluster has is refused before its store exists
        model = tmp_path / "m"
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "llama"}')
        (model / "model.safetensors").write_bytes(b"0" * 16)
        (tmp_path / "seeds.jsonl").write_text('{"id": "a", "text": "hi"}\n')
        cfg = tmp_path / "run.yaml"
        cfg.write_text(
            "name: pg\nrecipe: prompt\nseeds: seeds.jsonl\nstore: pg.duckdb\nexecutor: {kind: ray}\n"
            f"teacher: {{spec: 'vllm:{model}', "
            "options: {tensor_parallel_size: 4, pipeline_parallel_size: 2}}\n"
        )
        with pytest.raises(ConfigError, match=r"needs 8 GPUs .* the Ray cluster has 4"):
            api.run(cfg)
        assert not (tmp_path / "pg.duckdb").exists()
    finally:
        ray.shutdown()
