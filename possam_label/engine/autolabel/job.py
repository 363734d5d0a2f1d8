"""The auto-labeling job: set-up, the Ray Data pipeline, the driver's commit loop and the end.

:func:`run_autolabel` prepares the run (config, vocabulary, inputs, run.json), runs the stages of
:mod:`.stages` on Ray, commits finished images part by part (:class:`PartCommitter` when the
driver writes the files, :class:`StagedCommitter` when the workers staged them) and writes
``panoptic.json`` from the committed parts at the end.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa

from ...io.coco_panoptic_writer import segment_info_entry, write_coco_panoptic_json
from ...io.tables import (
    SEGMENT_INFO_COLUMNS,
    SEGMENTS_SCHEMA,
    STATUS_ERROR,
    STATUS_OK,
    OutputStore,
    check_staged_token,
    images_table,
    new_part_prefix,
    table_from_ipc,
    utc_now,
)
from .cluster import CPU_STAGE_CPUS, WorkerPlan, actor_pool_kwargs, init_ray, ray_resources, resolve_writes, starts_local_ray
from .inputs import list_inputs, unique_inputs
from .options import AutolabelError, AutolabelOptions, AutolabelSummary
from .run_record import RunRecord, check_resume_compatible, read_previous_run
from .stages import DecodeImages, EncodeOutputs, PanopticModelActor

logger = logging.getLogger(__name__)

MAX_INPUT_BLOCKS = 10_000


@dataclass
class PipelineStats:
    """Counts and wall-clock (``time.time``) stamps of one pipeline execution."""

    processed: int = 0
    identities: set[str] = field(default_factory=set)
    submitted_at: float = 0.0  # wall clock, to compare with the actors' stamps
    first_model_ready_at: Optional[float] = None
    first_result_at: Optional[float] = None
    last_commit_at: Optional[float] = None
    max_result_lag: float = 0.0  # longest model-output -> driver delay seen
    model_seconds: float = 0.0  # summed over actors: time inside the model's predict
    counts: Counter = field(default_factory=Counter)  # ok, error, segments
    reasons: Counter = field(default_factory=Counter)  # error reason -> images
    # CPU seconds of the driver process (all its threads: Ray's included) and of its main thread
    # (taking results and committing them) from the first result handled to the end of the
    # commits, over ``measured_images`` images received in that window: the steady per-image
    # cost, without planning the pipeline and starting the actors.
    driver_cpu_seconds: float = 0.0
    loop_cpu_seconds: float = 0.0
    measured_images: int = 0

    def images_per_second(self) -> float:
        if not self.processed or self.last_commit_at is None:
            return 0.0
        return self.processed / max(1e-9, self.last_commit_at - self.submitted_at)

    def steady_images_per_second(self) -> float:
        """Images over the time from the first model actor being ready to the last commit."""
        if self.first_model_ready_at is None or self.last_commit_at is None:
            return self.images_per_second()
        return self.processed / max(1e-9, self.last_commit_at - max(self.first_model_ready_at, self.submitted_at))

    def startup_seconds(self) -> float:
        if self.first_model_ready_at is None:
            return 0.0
        return max(0.0, self.first_model_ready_at - self.submitted_at)

    def see_batch(self, batch: dict[str, Any]) -> None:
        """Stamps of a batch arriving at the driver."""
        now = time.time()
        if self.first_result_at is None:
            self.first_result_at = now
        ready = float(np.min(batch["model_ready_at"]))
        self.first_model_ready_at = ready if self.first_model_ready_at is None else min(self.first_model_ready_at, ready)
        self.max_result_lag = max(self.max_result_lag, now - float(np.min(batch["model_done_at"])))


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
    clocks: Optional[tuple[float, float]] = None  # (process, main thread) CPU after the first result
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            stats.see_batch(batch)
            received = 0
            for row in iter_rows(batch):
                committer.add(row)
                received += 1
            committer.commit_if_due()
            if clocks is None:
                clocks = (time.process_time(), time.thread_time())
            else:
                stats.measured_images += received
        committer.commit()
    finally:
        if clocks is not None:
            stats.driver_cpu_seconds = time.process_time() - clocks[0]
            stats.loop_cpu_seconds = time.thread_time() - clocks[1]
        committer.close()
        for name, value in saved_context.items():
            setattr(context, name, value)
    return stats


class ResultCommitter(abc.ABC):
    """The driver's side of the commit protocol, common part: accounting for committed results
    (counts, error reasons, model identities, progress bar) and the part names of this attempt.

    Subclasses decide what a result carries and when a part is committed; :meth:`add` takes one
    result row (a dict of :func:`iter_rows`), :meth:`commit_if_due` and :meth:`commit` commit
    what is ready, :meth:`close` ends.
    """

    def __init__(self, store: OutputStore, record: RunRecord, stats: PipelineStats, options: AutolabelOptions, total: int) -> None:
        self.store = store
        self.record = record
        self.stats = stats
        self.rows_per_part = options.rows_per_part
        self.commit_interval_s = options.commit_interval_s
        self.prefix = new_part_prefix()
        self.part_index = 0
        self.seen: set[int] = set()  # images committed (or, driver writes: buffered) by this attempt
        self.progress = None
        if options.show_progress:
            from tqdm import tqdm

            self.progress = tqdm(total=total, unit="img", desc="autolabel", dynamic_ncols=True, smoothing=0.1)

    def next_part_id(self) -> str:
        part_id = f"{self.prefix}-{self.part_index:06d}"
        self.part_index += 1
        return part_id

    def account(self, row: dict[str, Any], ok: bool, num_segments: int) -> None:
        """Count one image's result (once per image: the caller dropped repeats)."""
        stats = self.stats
        stats.model_seconds += float(row["model_seconds"])
        identity = str(row["model_identity"])
        if identity and identity not in stats.identities:
            stats.identities.add(identity)
            self.record.check_weights(identity)
        if ok:
            stats.counts["segments"] += num_segments
        else:
            stats.reasons[str(row["error"]).split(":", 1)[0]] += 1
            logger.warning("%s: %s", row["file_path"], row["error"])
        stats.counts["ok" if ok else "error"] += 1
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(ok=stats.counts["ok"], errors=stats.counts["error"], segments=stats.counts["segments"], refresh=False)

    def committed(self, images: int) -> None:
        """Stamp a committed part of ``images`` images."""
        self.stats.processed += images
        self.stats.last_commit_at = time.time()

    @abc.abstractmethod
    def add(self, row: dict[str, Any]) -> None:
        """Take one result row."""

    def commit_if_due(self) -> None:
        """Commit what a time limit says is due (nothing by default)."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Commit everything still held (the end of the stream)."""

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


class PartCommitter(ResultCommitter):
    """Driver writes: finished images buffered, then committed as one part (PNGs, then the
    segments part, then the images part) every ``rows_per_part`` images or ``commit_interval_s``
    seconds."""

    def __init__(self, store: OutputStore, record: RunRecord, stats: PipelineStats, options: AutolabelOptions, total: int) -> None:
        super().__init__(store, record, stats, options, total)
        self.images: list[dict[str, Any]] = []
        self.segments: list[pa.Table] = []
        self.pngs: list[tuple[int, bytes]] = []
        self.last_commit = time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        """Buffer one image's result (a repeated result of a retried Ray task is dropped)."""
        image_id = int(row["image_id"])
        if image_id in self.seen:
            logger.warning("dropping a repeated result for %s (Ray retried its task)", row["file_path"])
            return
        self.seen.add(image_id)
        ok = row["status"] == STATUS_OK
        num_segments = 0
        if ok:
            self.pngs.append((image_id, bytes(row["png"])))
            segments = table_from_ipc(bytes(row["segments"]))
            self.segments.append(segments)
            num_segments = segments.num_rows
        self.account(row, ok, num_segments)
        self.images.append(image_row(row, ok, self.record.run_id))
        if len(self.images) >= self.rows_per_part:
            self.commit()

    def commit_if_due(self) -> None:
        if self.images and time.monotonic() - self.last_commit >= self.commit_interval_s:
            self.commit()

    def commit(self) -> None:
        """Commit the buffered images as one part (nothing when the buffer is empty)."""
        if not self.images:
            return
        for image_id, png in self.pngs:
            self.store.write_png(image_id, png)
        segments = segments_part_table(self.segments)
        self.store.commit_part(self.next_part_id(), images_table(self.images), segments)
        self.committed(len(self.images))
        self.images, self.segments, self.pngs = [], [], []
        self.last_commit = time.monotonic()


class StagedCommitter(ResultCommitter):
    """Workers write: each result row names the staged batch (``staged`` token, ``staged_rows``
    rows) whose files an encode task already wrote; once every row of a batch has arrived, the
    batch is committed as one part (:meth:`OutputStore.commit_staged`: rename its PNGs and its
    segments file into place, then write the images part). The driver reads no PNG and no
    segment row.

    Exactly once: Ray may run a batch's tasks again, which stages the same images a second time
    under another token. A batch whose images are all committed already is discarded (its
    staged files deleted); one that overlaps committed images only in part (a re-run whose
    batches were cut differently) is committed for its other images alone. Staged files of
    batches whose rows never came back are removed by :meth:`close` and by resume.
    """

    def __init__(self, store: OutputStore, record: RunRecord, stats: PipelineStats, options: AutolabelOptions, total: int) -> None:
        super().__init__(store, record, stats, options, total)
        self.batches: dict[str, list[dict[str, Any]]] = {}  # token -> rows arrived so far

    def add(self, row: dict[str, Any]) -> None:
        token = check_staged_token(str(row["staged"]))
        rows = self.batches.setdefault(token, [])
        rows.append(row)
        if len(rows) >= int(row["staged_rows"]):
            self.commit_batch(token, complete=True)

    def commit_batch(self, token: str, complete: bool) -> None:
        """Commit the arrived rows of batch ``token`` that are not committed yet as one part;
        ``complete``: every row of the batch arrived (else only those that did are committed)."""
        rows = self.batches.pop(token)
        fresh = [row for row in rows if int(row["image_id"]) not in self.seen]
        ok_ids = [int(row["image_id"]) for row in rows if row["status"] == STATUS_OK]
        if not fresh:
            logger.warning("dropping a repeated batch of %d result(s) (Ray ran its task again)", len(rows))
            self.store.discard_staged(token, ok_ids)
            return
        images = [image_row(row, row["status"] == STATUS_OK, self.record.run_id) for row in fresh]
        subset = len(fresh) < len(rows) or not complete
        if subset:
            logger.warning("committing %d of the %d result(s) of a staged batch (the others are committed already or missing)", len(fresh), len(rows))
        self.store.commit_staged(self.next_part_id(), token, images_table(images), subset=subset)
        if subset:
            self.store.discard_staged(token, ok_ids)  # the staged PNGs of the images left out
        for row in fresh:
            self.seen.add(int(row["image_id"]))
            self.account(row, row["status"] == STATUS_OK, int(row["num_segments"]))
        self.committed(len(fresh))

    def commit(self) -> None:
        """At the end of the stream: commit the rows of batches that arrived in part (should not
        happen: a task's rows come back together), then sweep staged files no commit took."""
        for token in list(self.batches):
            self.commit_batch(token, complete=False)
        removed = self.store.remove_staged()
        if removed:
            logger.info("removed %d staged file(s) of batches that Ray ran again or that never came back", removed)


def segments_part_table(tables: list[pa.Table]) -> pa.Table:
    """The segments tables of a part's images as one table (one chunk per column)."""
    if not tables:
        return SEGMENTS_SCHEMA.empty_table()
    return pa.concat_tables(tables).combine_chunks()


def image_row(row: dict[str, Any], ok: bool, run_id: str) -> dict[str, Any]:
    """The ``images`` table row of one result."""
    image_id = int(row["image_id"])
    return {
        "image_id": image_id,
        "file_path": str(row["file_path"]),
        "width": int(row["width"]) if ok or int(row["width"]) > 0 else None,
        "height": int(row["height"]) if ok or int(row["height"]) > 0 else None,
        "status": STATUS_OK if ok else STATUS_ERROR,
        "error": None if ok else str(row["error"]),
        "num_segments": int(row["num_segments"]),
        "seconds": float(row["seconds"]),
        "panoptic_file": f"panoptic/{image_id}.png" if ok else None,
        "run_id": run_id,
    }


def iter_rows(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The rows of a numpy batch with Python scalars."""
    names = list(batch)
    columns = {name: list(batch[name]) for name in names}
    for i in range(len(columns[names[0]])):
        yield {name: value.item() if isinstance(value, np.generic) else value for name, value in ((n, columns[n][i]) for n in names)}


# ------------------------------------------------------------------------------------ the end
def committed_counts(store: OutputStore) -> tuple[int, int]:
    """(ok, error) images over every committed part."""
    ok = err = 0
    for _, images, _ in store.iter_committed(images_columns=["status"], segments_columns=["image_id"]):
        statuses = images["status"].to_pylist()
        ok += sum(1 for s in statuses if s == STATUS_OK)
        err += sum(1 for s in statuses if s != STATUS_OK)
    return ok, err


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
