"""What an auto-labeling run is asked to do (:class:`AutolabelOptions`) and what it did (:class:`AutolabelSummary`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ...io.images import DEFAULT_MAX_PIXELS
from .model_process import DEFAULT_IMAGE_TIMEOUT_S

MODES = ("new", "resume", "overwrite")
# Who writes the PNGs and segment rows (docs/outputs.md "Running on a cluster").
WRITES = ("auto", "workers", "driver")
# Retries of a batch after its model process died: a transient death (the OS reclaiming memory
# under a neighbour's peak) rarely repeats twice, while each retry of a poisoned image costs one
# model load (docs/outputs.md "Bounded retries and worker_lost").
DEFAULT_MAX_WORKER_RETRIES = 2

# The option groups, in the order and with the titles of the CLI's argument groups
# (pipelines/autolabel.py builds one argparse group per entry).
OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "inputs and outputs": ("dataset", "out_dir", "mode", "retry_errors"),
    "model": ("model", "config", "config_overrides", "checkpoint", "vocabulary"),
    "labels": ("min_score", "max_side", "max_pixels"),
    "cluster": (
        "batch_size", "workers", "gpus_per_worker", "torch_threads", "worker_resources", "ray_address", "num_cpus",
        "wait_for_workers_s", "ship_code", "max_worker_retries", "model_timeout_s",
    ),
    "commits": ("rows_per_part", "commit_interval_s", "durable", "show_progress", "writes"),
}


class AutolabelError(RuntimeError):
    """A run that cannot start or finish (bad source, config mismatch on resume, lost rows)."""


@dataclass
class AutolabelOptions:
    """Everything a run needs; the CLI maps its flags one to one onto these fields, group by group
    (:data:`OPTION_GROUPS`).

    Inputs and outputs:
        dataset: source (see :func:`~possam_label.engine.autolabel.inputs.list_inputs`).
        out_dir: output directory; nothing is written outside it.
        mode: "new" | "resume" | "overwrite".
        retry_errors: with ``mode="resume"``, label again the images whose committed row is an error.

    Model:
        model: a predictor registered in :data:`possam_label.predictors.PREDICTOR_REGISTRY`:
            "possam" (default) or "sam-clip", the training-free two-stage baseline (SAM automatic
            mask generator, then CLIP on every mask; ``config.baseline`` settings).
        config: PosSAM YAML config (None: the shipped default config).
        config_overrides: nested mapping merged over the config (e.g. ``{"baseline": {"points_per_side": 8}}``).
        checkpoint: PosSAM head weights overriding the config's; with ``model="sam-clip"``, a full
            SAM checkpoint overriding ``config.sam.checkpoint``.
        vocabulary: "coco", "ade20k", a file or "cat,dog,..." (None: the config's vocabulary).

    Labels (the output settings; a resumed run must use the same ones):
        min_score: segments with a lower MASE score are dropped (their pixels become void).
        max_side: decode stage downscales so that the longest side is at most this (None: the
            model's input size, ``config.sam.img_size``; 0: never downscale).
        max_pixels: images with more pixels are refused as decompression bombs.

    Cluster:
        batch_size: images per model call (and per decode/encode task).
        workers: model actors (None: one per GPU, or 1 without GPUs).
        gpus_per_worker: GPUs per actor (None: 1 when the cluster has GPUs, else 0 = CPU).
        torch_threads: CPU inference threads per actor (None: ``default_torch_threads``, i.e.
            (cluster CPUs - 1) / workers; ignored on GPU).
        worker_resources: custom Ray resources each model actor requires (e.g. ``{"labeler": 1}``
            with ``ray start --resources='{"labeler": 1}'`` on the nodes that should run the model).
        ray_address: existing cluster ("auto", "host:port", "ray://..."); None with no
            ``RAY_ADDRESS`` in the environment starts a local Ray with ``num_cpus``.
        num_cpus: CPUs of the local Ray (None: all).
        wait_for_workers_s: wait this long for every model actor to be up before labeling starts
            (work then spreads over all of them from the first batch), and fail with a clear error
            when the cluster cannot host ``workers`` actors in that time; 0 starts on the first
            ready actor and waits for the rest silently. None (default): 0 when the cluster's
            resources can host all the actors now (images are then decoded while the model
            loads), else ``DEFAULT_WAIT_FOR_WORKERS_S`` (autoscaling or busy clusters).
        ship_code: send the ``possam_label`` package to the workers (``runtime_env.py_modules``)
            for clusters whose nodes do not have it installed.
        max_worker_retries: how many times a model batch is retried when the model process
            dies on it (the OS killing it, a native crash). Each model actor runs its model in a
            child process (:mod:`.model_process`) and starts a new one after a death. A batch
            still without a result is then bisected (its halves rerun with the same retry budget,
            recursively, down to single images) so one poisoned image cannot fail its
            neighbours; an image on which the process died ``max_worker_retries + 1`` times alone
            is recorded as error ``worker_lost``. The run always ends. >= 0 (0: no retry, bisect
            at once).
        model_timeout_s: seconds per image a model batch may take before its model process
            counts as hung: killed, and the batch retried and bisected as after a death (> 0).

    Commits:
        rows_per_part: images per committed part (the unit of loss on a crash).
        commit_interval_s: commit a smaller part when this much time passed since the last one
            (driver writes only: when workers write, a part is one encode batch of
            ``rows_per_part`` images, committed as soon as it arrives).
        durable: fsync every committed file.
        show_progress: tqdm progress bar (to stderr).
        writes: who writes the PNGs and segment rows. "workers": the encode tasks stage them in
            ``out_dir`` and the driver only renames them into place and writes the images part
            (the driver's main thread does 2.4x less per image, docs/outputs.md "Driver cost";
            ``out_dir`` must be on a filesystem
            every Ray node sees at the same path). "driver": every result travels to the driver,
            which writes everything (any cluster). "auto" (default): workers on a local Ray this
            run starts, driver on an existing cluster (pass "workers" when its nodes share
            ``out_dir``).
    """

    # inputs and outputs
    dataset: str
    out_dir: str
    mode: str = "new"
    retry_errors: bool = False
    # model
    model: str = "possam"
    config: Optional[str] = None
    config_overrides: Optional[dict[str, Any]] = None
    checkpoint: Optional[str] = None
    vocabulary: Optional[str] = None
    # labels
    min_score: float = 0.0
    max_side: Optional[int] = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    # cluster
    batch_size: int = 4
    workers: Optional[int] = None
    gpus_per_worker: Optional[float] = None
    torch_threads: Optional[int] = None
    worker_resources: Optional[dict[str, float]] = None
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None
    wait_for_workers_s: Optional[float] = None
    ship_code: bool = False
    max_worker_retries: int = DEFAULT_MAX_WORKER_RETRIES
    model_timeout_s: float = DEFAULT_IMAGE_TIMEOUT_S
    # commits
    rows_per_part: int = 64
    commit_interval_s: float = 30.0
    durable: bool = True
    show_progress: bool = True
    writes: str = "auto"

    def output_settings(self) -> dict[str, Any]:
        """Settings that change the labels; a resumed run must use the same ones."""
        return {name: getattr(self, name) for name in OPTION_GROUPS["labels"]}

    def group(self, title: str) -> dict[str, Any]:
        """The options of one group of :data:`OPTION_GROUPS`."""
        return {name: getattr(self, name) for name in OPTION_GROUPS[title]}

    def check(self, model_kinds: tuple[str, ...]) -> None:
        """Raise ValueError for inconsistent options."""
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.rows_per_part < 1:
            raise ValueError("rows_per_part must be >= 1")
        if isinstance(self.max_worker_retries, bool) or not isinstance(self.max_worker_retries, int) or self.max_worker_retries < 0:
            raise ValueError(f"max_worker_retries must be an integer >= 0, got {self.max_worker_retries!r}")
        if not self.model_timeout_s > 0:
            raise ValueError(f"model_timeout_s must be > 0, got {self.model_timeout_s!r}")
        if self.model not in model_kinds:
            raise ValueError(f"model must be one of {', '.join(model_kinds)}, got {self.model!r}")
        if self.writes not in WRITES:
            raise ValueError(f"writes must be one of {', '.join(WRITES)}, got {self.writes!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be new, resume or overwrite, got {self.mode!r}")
        if self.retry_errors and self.mode != "resume":
            raise ValueError("retry_errors needs mode='resume' (--retry-errors goes with --resume)")


@dataclass
class AutolabelSummary:
    """What a run did (this invocation; ``already_done`` counts earlier attempts' images).

    Throughput: ``images_per_second`` = ``processed`` over the time from submitting the Ray
    pipeline (after ``ray.init``) to the last commit, so it includes starting the actors and
    loading the model (``startup_seconds``: submit to the first actor ready).
    ``steady_images_per_second`` excludes that start-up: ``processed`` over the time from the
    first model actor being ready to the last commit.
    """

    run_id: str
    out_dir: str
    inputs: int
    duplicates_dropped: int
    already_done: int
    processed: int
    ok: int
    errors: int
    segments: int
    seconds: float
    images_per_second: float
    steady_images_per_second: float = 0.0
    startup_seconds: float = 0.0
    max_result_lag_seconds: float = 0.0  # longest delay from a model output to its arrival at the driver
    # Summed over model actors: seconds inside the model's predict. Against the steady wall time
    # this tells a starved model (idle between batches) from a slowed one (CPU contention).
    model_seconds: float = 0.0
    # The driver's CPU seconds from its first result to its last commit (process, all threads;
    # and its main thread taking and committing results), over the ``driver_measured_images``
    # images received after the first result: their ratio is the driver's cost per image, which
    # caps the images/s one driver can commit (docs/outputs.md "Driver cost").
    driver_cpu_seconds: float = 0.0
    driver_loop_cpu_seconds: float = 0.0
    driver_measured_images: int = 0
    driver_measured_seconds: float = 0.0  # wall length of that window
    error_reasons: dict[str, int] = field(default_factory=dict)
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
