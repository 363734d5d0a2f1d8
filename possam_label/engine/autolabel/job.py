"""The auto-labeling job: set-up, the Ray Data pipeline, the driver's commit loop and the end.

:func:`run_autolabel` prepares the run (config, vocabulary, inputs, run.json), runs the stages of
:mod:`.stages` on Ray, commits finished images part by part (:mod:`.commit`: the driver writes the
files, or renames what the workers staged) and writes ``panoptic.json`` from the committed parts at
the end.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ...io.coco_panoptic_writer import segment_info_entry, write_coco_panoptic_json
from ...io.output_store import OutputStore, utc_now
from ...io.tables import SEGMENT_INFO_COLUMNS, STATUS_OK
from .commit import PartCommitter, PipelineStats, ResultCommitter, StagedCommitter, committed_counts, iter_rows
from .cluster import CPU_STAGE_CPUS, WorkerPlan, actor_pool_kwargs, init_ray, ray_resources, resolve_writes, starts_local_ray
from .inputs import list_inputs, unique_inputs
from .options import AutolabelError, AutolabelOptions, AutolabelSummary
from .run_record import RunRecord, check_resume_compatible, read_previous_run
from .stages import DecodeImages, EncodeOutputs, PanopticModelActor

logger = logging.getLogger(__name__)

MAX_INPUT_BLOCKS = 10_000


# ---------------------------------------------------------------------------------- set-up
@dataclass
class RunSetup:
    """What the driver resolved before labeling: config, checkpoint, vocabulary, inputs."""

    config_path: str
    config: Any
    checkpoint: Optional[str]
    vocabulary: Any
    max_side: Optional[int]
    inputs: list[dict[str, Any]]
    duplicates: int

    def model_record(self, kind: str) -> dict[str, Any]:
        """The ``model`` entry of run.json (what a resume must match)."""
        cfg = self.config
        return {
            "kind": kind,
            "config_path": self.config_path,
            "config": cfg.to_dict(),
            "checkpoint": self.checkpoint or (cfg.resolve_path(cfg.checkpoint) if kind == "possam" else None),
            "vocabulary_identity": self.vocabulary.identity(),
        }


def prepare_run(options: AutolabelOptions) -> RunSetup:
    """Load the config and vocabulary, check the checkpoint, list the inputs (before any Ray)."""
    from ...config import DEFAULT_CONFIG, find_config, load_config
    from ...vocab import load_vocabulary, resolve_vocabulary_spec

    config_path = str(find_config(options.config)) if options.config else str(DEFAULT_CONFIG)
    try:
        cfg = load_config(config_path, options.config_overrides)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        raise AutolabelError(f"bad config: {exc}") from exc
    checkpoint = os.path.abspath(options.checkpoint) if options.checkpoint else None
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise AutolabelError(f"checkpoint {checkpoint} does not exist")
    if options.model == "possam" and checkpoint is None:
        check_config_heads(cfg, config_path)
    try:
        vocabulary = load_vocabulary(options.vocabulary if options.vocabulary is not None else resolve_vocabulary_spec(cfg.vocabulary, cfg.resolve_path))
    except (ValueError, OSError) as exc:
        raise AutolabelError(f"bad vocabulary {options.vocabulary or cfg.vocabulary!r}: {exc}") from exc
    max_side = cfg.sam.img_size if options.max_side is None else (options.max_side or None)
    inputs, duplicates = unique_inputs(list_inputs(options.dataset))
    if duplicates:
        logger.warning("%d duplicate paths in %s were dropped (each image is labeled once)", duplicates, options.dataset)
    return RunSetup(config_path, cfg, checkpoint, vocabulary, max_side, inputs, duplicates)


def check_config_heads(cfg: Any, config_path: str) -> None:
    """Refuse a PosSAM run whose config cannot give it trained heads (no ``--checkpoint``).

    A config that names no heads (``checkpoint: null``) would label with randomly initialised
    heads; that is only meant for configs whose backbones are random too (tests, speed runs).
    Heads come from ``pipelines.train`` (from the two-stage path's labels: docs/bootstrap.md).
    """
    if cfg.checkpoint is None:
        real_backbones = cfg.sam.checkpoint is not None or bool(cfg.clip.pretrained)
        if real_backbones:
            raise AutolabelError(
                f"{config_path} names no PosSAM head weights (checkpoint: null), so PosSAM would label with random heads: "
                "pass --checkpoint HEADS.safetensors (trained with pipelines.train; without any, bootstrap them from "
                "--model sam-clip labels as in docs/bootstrap.md) or label with --model sam-clip"
            )
        return
    heads = cfg.resolve_path(cfg.checkpoint)
    if not os.path.isfile(heads):
        raise AutolabelError(f"{config_path}: checkpoint {heads} (PosSAM head weights) does not exist; pass --checkpoint HEADS.safetensors or label with --model sam-clip")


def relative_to_cwd(path: Optional[str]) -> Optional[str]:
    """``path`` relative to the working directory when it lies inside it (for Ray's working_dir)."""
    if path is None:
        return None
    try:
        cwd = Path.cwd().resolve()
        return os.path.relpath(path, cwd) if Path(path).resolve().is_relative_to(cwd) else None
    except (ValueError, OSError):  # no usable cwd: workers fall back to the absolute path
        return None


# --------------------------------------------------------------------------------- the job
def run_autolabel(options: AutolabelOptions) -> AutolabelSummary:
    """Label every image of ``options.dataset`` into ``options.out_dir``.

    Returns:
        the run summary (also written to ``run.json`` and logged).

    Raises:
        OutputDirError: output directory not empty without resume/overwrite, or locked.
        AutolabelError: no inputs, a bad config/checkpoint/vocabulary, or a resume with a
            different model, vocabulary or output settings.
        ValueError: inconsistent options.
    """
    from ...predictors import PREDICTOR_REGISTRY

    options.check(tuple(PREDICTOR_REGISTRY))
    t_start = time.perf_counter()
    store = OutputStore(options.out_dir, durable=options.durable)
    # Refuse a non-empty directory before any expensive work (config, listing, Ray).
    if options.mode == "new" and [e for e in store.existing_entries() if e != ".lock"]:
        store.prepare("new")  # raises OutputDirError with the explanation
    setup = prepare_run(options)
    model_record = setup.model_record(options.model)
    store.prepare(options.mode)
    try:
        previous = read_previous_run(store) if options.mode == "resume" else None
        if previous is not None:
            check_resume_compatible(previous, model_record, options.output_settings(), store)
        if options.retry_errors:
            store.drop_error_rows()
        done_ids = store.committed_image_ids()
        pending = [row for row in setup.inputs if row["image_id"] not in done_ids]
        already_done = len(setup.inputs) - len(pending)
        if options.mode == "resume":
            logger.info("resume: %d of %d inputs already committed, %d to do", already_done, len(setup.inputs), len(pending))
        record = RunRecord.start(store, options, model_record, setup.vocabulary, setup.max_side, len(pending), previous)
        stats = label_pending(options, store, record, setup, pending) if pending else PipelineStats()
        complete = stats.processed == len(pending)
        if not complete:
            logger.error("%d of %d pending inputs were not accounted for; rerun with --resume", len(pending) - stats.processed, len(pending))
        coco_counts = write_panoptic_json(store, setup.vocabulary, record.data, options.durable)
        summary = AutolabelSummary(
            run_id=record.run_id, out_dir=str(store.root), inputs=len(setup.inputs), duplicates_dropped=setup.duplicates,
            already_done=already_done, processed=stats.processed, ok=stats.counts["ok"], errors=stats.counts["error"],
            segments=stats.counts["segments"], seconds=time.perf_counter() - t_start, images_per_second=stats.images_per_second(),
            steady_images_per_second=stats.steady_images_per_second(), startup_seconds=stats.startup_seconds(),
            max_result_lag_seconds=stats.max_result_lag, model_seconds=stats.model_seconds, error_reasons=dict(stats.reasons),
            driver_cpu_seconds=stats.driver_cpu_seconds, driver_loop_cpu_seconds=stats.loop_cpu_seconds, driver_measured_images=stats.measured_images,
            driver_measured_seconds=stats.measured_seconds,
            complete=complete,
        )
        total_ok, total_err = committed_counts(store)
        record.finish(summary, {"inputs": len(setup.inputs), "ok": total_ok, "error": total_err, "coco": coco_counts}, stats.identities)
    finally:
        store.release()
    logger.info(
        "autolabel %s: %d inputs, %d processed now (%d ok, %d errors, %d segments), %d already done, %.2f images/s, %.1fs",
        summary.run_id, summary.inputs, summary.processed, summary.ok, summary.errors, summary.segments,
        summary.already_done, summary.images_per_second, summary.seconds,
    )
    return summary


def label_pending(options: AutolabelOptions, store: OutputStore, record: RunRecord, setup: RunSetup, pending: list[dict[str, Any]]) -> PipelineStats:
    """Label the pending inputs on Ray (started here when not running yet, and shut down after)."""
    writes = resolve_writes(options.writes, starts_local_ray(options))
    started_ray = init_ray(options)
    try:
        record.update(ray=ray_resources())
        return run_pipeline(options, store, record, setup, pending, writes)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def build_dataset(options: AutolabelOptions, setup: RunSetup, plan: WorkerPlan, pending: list[dict[str, Any]], run_id: str, staging_dir: Optional[str]) -> Any:
    """The Ray dataset of the three stages over the pending inputs (lazy; runs when iterated).

    ``staging_dir``: the output directory when the workers write (see :class:`EncodeOutputs`),
    else None. Workers then encode batches of ``rows_per_part`` images, since one encode batch
    becomes one part (its staged segments file is renamed into the part whole).
    """
    import ray.data

    batch_size = options.batch_size
    # One input block per batch keeps decoding parallel; past MAX_INPUT_BLOCKS blocks carry
    # several batches each (a decode task streams them out one batch at a time).
    num_blocks = max(1, min(MAX_INPUT_BLOCKS, math.ceil(len(pending) / batch_size)))
    batches = {"batch_size": batch_size, "batch_format": "numpy"}
    ds = ray.data.from_items(pending, override_num_blocks=num_blocks)
    # Decode and encode are stateless: instances run as Ray tasks; the model is an actor pool.
    ds = ds.map_batches(DecodeImages(setup.max_side, options.max_pixels), num_cpus=CPU_STAGE_CPUS, **batches)
    ds = ds.map_batches(
        PanopticModelActor,
        fn_constructor_kwargs={
            "model": options.model,
            "config_path": setup.config_path,
            "config_rel": relative_to_cwd(setup.config_path),
            "checkpoint": setup.checkpoint,
            "checkpoint_rel": relative_to_cwd(setup.checkpoint),
            "config_overrides": options.config_overrides,
            "vocabulary": setup.vocabulary.to_dict(),
            "device": plan.device,
            "batch_size": options.batch_size,
            "torch_threads": plan.torch_threads,
            "max_worker_retries": options.max_worker_retries,
            "image_timeout_s": options.model_timeout_s,
        },
        **actor_pool_kwargs(plan.workers),
        **plan.actor_args(),
        **batches,
    )
    encode = EncodeOutputs(options.min_score, run_id, out_dir=staging_dir, durable=options.durable)
    encode_batches = batches if staging_dir is None else {**batches, "batch_size": options.rows_per_part}
    return ds.map_batches(encode, num_cpus=CPU_STAGE_CPUS, **encode_batches)


def run_pipeline(
    options: AutolabelOptions, store: OutputStore, record: RunRecord, setup: RunSetup, pending: list[dict[str, Any]], writes: str = "driver",
) -> PipelineStats:
    """Run the stages over ``pending`` and commit their results as they arrive.

    ``writes``: "driver" (results carry PNG bytes and segment rows; :class:`PartCommitter`) or
    "workers" (results carry staging tokens; :class:`StagedCommitter`).
    """
    import ray
    import ray.data

    stats = PipelineStats(submitted_at=time.time())
    plan = WorkerPlan.for_cluster(options, ray.cluster_resources())
    record.update(execution=plan.record(options.batch_size) | {"writes": writes})
    logger.info("labeling %d images with %d %s worker(s), batch size %d, %s writes", len(pending), plan.workers, plan.device, options.batch_size, writes)
    # Process-wide Ray Data settings, restored at the end (the caller may use Ray Data too).
    context = ray.data.DataContext.get_current()
    saved_context = {"enable_progress_bars": context.enable_progress_bars}
    context.enable_progress_bars = False  # our own bar below counts committed images
    if plan.wait_for_workers_s > 0 and hasattr(context, "wait_for_min_actors_s"):
        saved_context["wait_for_min_actors_s"] = context.wait_for_min_actors_s
        context.wait_for_min_actors_s = int(math.ceil(plan.wait_for_workers_s))
    workers_write = writes == "workers"
    committer: ResultCommitter = (StagedCommitter if workers_write else PartCommitter)(store, record, stats, options, total=len(pending))
    dataset = build_dataset(options, setup, plan, pending, record.run_id, str(store.root) if workers_write else None)
    clocks: Optional[tuple[float, float, float]] = None  # (process CPU, main-thread CPU, wall) after the first result
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            stats.see_batch(batch)
            received = 0
            for row in iter_rows(batch):
                committer.add(row)
                received += 1
            committer.commit_if_due()
            if clocks is None:
                clocks = (time.process_time(), time.thread_time(), time.perf_counter())
            else:
                stats.measured_images += received
        committer.commit()
    finally:
        if clocks is not None:
            stats.driver_cpu_seconds = time.process_time() - clocks[0]
            stats.loop_cpu_seconds = time.thread_time() - clocks[1]
            stats.measured_seconds = time.perf_counter() - clocks[2]
        committer.close()
        for name, value in saved_context.items():
            setattr(context, name, value)
    return stats


# ------------------------------------------------------------------------------------ the end
def write_panoptic_json(store: OutputStore, vocabulary: Any, run_record: dict[str, Any], durable: bool) -> dict[str, int]:
    """Assemble ``panoptic.json`` from the committed parts, one part in memory at a time (no masks read)."""
    segment_columns = ["image_id"] + [column for _, column in SEGMENT_INFO_COLUMNS]

    def images() -> Iterator[dict[str, Any]]:
        for _, table, _ in store.iter_committed(images_columns=["image_id", "file_path", "width", "height", "status"], segments_columns=["image_id"]):
            for row in table.to_pylist():
                if row["status"] == STATUS_OK:
                    yield {"id": row["image_id"], "file_name": row["file_path"], "width": row["width"], "height": row["height"]}

    def annotations() -> Iterator[dict[str, Any]]:
        for _, table, segments in store.iter_committed(images_columns=["image_id", "status"], segments_columns=segment_columns):
            by_image: dict[int, list[dict[str, Any]]] = {}
            for seg in segments.to_pylist():
                by_image.setdefault(seg["image_id"], []).append(segment_info_entry(seg))
            for row in table.to_pylist():
                if row["status"] == STATUS_OK:
                    infos = sorted(by_image.get(row["image_id"], []), key=lambda s: s["id"])
                    yield {"image_id": row["image_id"], "file_name": f"{row['image_id']}.png", "segments_info": infos}

    info = {
        "description": "possam-label pseudo-labels",
        "run_id": run_record["run_id"],
        "source": run_record["source"],
        "date_created": utc_now(),
        "model": run_record["model"].get("config", {}).get("name"),
        "vocabulary_identity": run_record["model"]["vocabulary_identity"],
    }
    return write_coco_panoptic_json(store.panoptic_json, images(), annotations(), vocabulary.to_coco_categories(), info=info, durable=durable)
