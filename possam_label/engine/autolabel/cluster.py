"""Cluster sizing: connecting to Ray, and how many model actors of what kind a run gets."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .options import AutolabelError, AutolabelOptions

logger = logging.getLogger(__name__)

# Logical CPUs of a decode/encode task. These stages are light next to the model; a value
# different from the model actor's keeps Ray from fusing decoding into the model actor (fusion
# needs equal remote args), so decoding of the next batch overlaps inference of this one.
CPU_STAGE_CPUS = 0.5
DEFAULT_WAIT_FOR_WORKERS_S = 900.0


def default_torch_threads(cpus: int, workers: int) -> int:
    """CPU inference threads per model actor: one core is left to the decode/encode tasks and the
    driver, the rest is shared by the actors. Oversubscribing cores costs a lot with OpenMP (its
    threads spin while waiting): on a busy 2-core machine 2 threads ran 3x slower than 1."""
    return max(1, (cpus - 1) // max(1, workers))


def actor_pool_kwargs(size: int) -> dict[str, Any]:
    """Actor-pool sizing in the form the installed Ray prefers (``concurrency=`` in 2.9-2.50,
    ``compute=ActorPoolStrategy`` before and after; see ray-project/ray PR #57035)."""
    import ray.data

    major, minor = (int(x) for x in ray.__version__.split(".")[:2])
    if (major, minor) >= (2, 51) or (major, minor) < (2, 9):
        return {"compute": ray.data.ActorPoolStrategy(size=size)}
    return {"concurrency": size}


def init_ray(options: AutolabelOptions) -> bool:
    """Connect to or start Ray; returns True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env: dict[str, Any] = {}
    if options.ship_code:
        runtime_env["py_modules"] = [str(Path(__file__).resolve().parents[2])]
    address = options.ray_address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": False}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        logger.info("starting a local Ray with %s CPUs", options.num_cpus or os.cpu_count())
        # Loopback only: a local Ray otherwise binds the machine's network address.
        ray.init(num_cpus=options.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
    return True


def starts_local_ray(options: AutolabelOptions) -> bool:
    """Whether :func:`init_ray` will start a local Ray (no cluster address, Ray not running here)."""
    import ray

    return not ray.is_initialized() and not (options.ray_address or os.environ.get("RAY_ADDRESS"))


def resolve_writes(writes: str, local_ray: bool) -> str:
    """"workers" or "driver" for the ``writes`` option: "auto" lets the workers write only on a
    local Ray started by this run, the one case where every worker surely sees ``out_dir``."""
    if writes != "auto":
        return writes
    return "workers" if local_ray else "driver"


def ray_resources() -> dict[str, Any]:
    """What the connected cluster offers (recorded in run.json)."""
    import ray

    resources = ray.cluster_resources()
    return {
        "cluster_resources": {k: v for k, v in resources.items() if not k.startswith("node:")},
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
        "ray_version": ray.__version__,
    }


def actors_fit(resources: dict[str, float], workers: int, gpus_per_worker: float, worker_resources: Optional[dict[str, float]]) -> bool:
    """Whether the cluster's total resources (``ray.cluster_resources()``) can host ``workers``
    model actors (1 CPU each, plus their GPUs and custom resources) beside one CPU task."""
    needed: dict[str, float] = {"CPU": workers * 1.0 + CPU_STAGE_CPUS}
    if gpus_per_worker > 0:
        needed["GPU"] = workers * gpus_per_worker
    for name, amount in (worker_resources or {}).items():
        needed[name] = needed.get(name, 0.0) + workers * float(amount)
    return all(float(resources.get(name, 0.0)) >= amount for name, amount in needed.items())


@dataclass
class WorkerPlan:
    """The model actors of a run: how many, on what device, with which resources."""

    workers: int
    gpus_per_worker: float
    device: str
    torch_threads: Optional[int]
    wait_for_workers_s: float
    worker_resources: Optional[dict[str, float]] = None

    @classmethod
    def for_cluster(cls, options: AutolabelOptions, resources: dict[str, float]) -> "WorkerPlan":
        """The plan for ``options`` on a cluster with ``resources`` (``ray.cluster_resources()``)."""
        cluster_gpus = float(resources.get("GPU", 0.0))
        gpus = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if cluster_gpus > 0 else 0.0)
        if gpus > 0 and cluster_gpus <= 0:
            raise AutolabelError(f"--gpus-per-worker {gpus} asked for, but the Ray cluster has no GPU")
        if options.workers is not None:
            workers = options.workers
        elif gpus > 0:
            workers = max(1, int(cluster_gpus // gpus))
        else:
            workers = 1
        device = "cuda" if gpus > 0 else "cpu"
        threads = None
        if device == "cpu":
            threads = options.torch_threads or default_torch_threads(int(resources.get("CPU", os.cpu_count() or 1)), workers)
        wait_s = options.wait_for_workers_s
        if wait_s is None:
            # Ray Data's blocking wait for the actors also holds back the decode stage, so it is
            # only worth it when the actors may not fit yet.
            wait_s = 0.0 if actors_fit(resources, workers, gpus, options.worker_resources) else DEFAULT_WAIT_FOR_WORKERS_S
        return cls(workers, gpus, device, threads, wait_s, options.worker_resources)

    def actor_args(self) -> dict[str, Any]:
        """Ray remote arguments of a model actor. Restarts and task retries stay Ray Data's
        defaults (a dead actor is restarted and its batch retried): that covers the rare death of
        the actor process itself; deaths of its model process are bounded by the actor
        (``max_worker_retries``, :class:`~.stages.PanopticModelActor`)."""
        args: dict[str, Any] = {"num_cpus": 1}
        if self.gpus_per_worker > 0:
            args["num_gpus"] = self.gpus_per_worker
        if self.worker_resources:
            args["resources"] = dict(self.worker_resources)
        return args

    def record(self, batch_size: int) -> dict[str, Any]:
        """The ``execution`` entry of run.json."""
        return {
            "workers": self.workers, "gpus_per_worker": self.gpus_per_worker, "worker_resources": self.worker_resources,
            "device": self.device, "torch_threads": self.torch_threads, "batch_size": batch_size,
            "wait_for_workers_s": self.wait_for_workers_s,
        }
