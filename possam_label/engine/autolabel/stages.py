"""The Ray Data stages of the auto-labeling job.

Each stage is a callable class in Ray's ``map_batches`` pattern: it takes a numpy batch (a dict of
columns), adds its columns, drops the ones nobody downstream needs, and returns the batch::

    {image_id, file_path}
      -> DecodeImages       + status, error, width, height (original size), image, seconds
      -> PanopticModelActor - image; + id_map (model output size), predicted_segments (Arrow IPC),
                              model_identity, model_ready_at, model_done_at, model_seconds
                              (the model itself runs in the actor's child process: .model_process)
      -> EncodeOutputs      - id_map, predicted_segments; + num_segments and either png,
                              segments (Arrow IPC of the segments table rows) when the driver
                              writes, or staged, staged_rows when the workers write (the files
                              are then already staged in the output directory)

Predictions travel as arrays and Arrow tables (IPC bytes in a binary column), never as JSON.
:func:`to_original_size` is the one place a prediction is brought to the original image size.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ...io.coco_panoptic_writer import panoptic_png_bytes
from ...io.images import ImageDecodeError, load_image_for_model
from ...io.output_store import OutputStore, new_staged_token
from ...io.rle import encode_panoptic_map
from ...io.tables import (
    ARROW_TYPES,
    SEGMENTS_SCHEMA,
    STATUS_ERROR,
    STATUS_OK,
    predicted_segments_table,
    table_from_ipc,
    table_to_ipc,
)
from ...panoptic import keep_ids, renumber, resize_ids, score_passes
from .model_process import DEFAULT_IMAGE_TIMEOUT_S, ModelProcess, ModelProcessDied, ModelSpec, PredictionFailed

logger = logging.getLogger(__name__)

PLACEHOLDER_IMAGE = np.zeros((1, 1, 3), dtype=np.uint8)
PLACEHOLDER_MAP = np.zeros((1, 1), dtype=np.int32)


# ------------------------------------------------------------------------------ batch helpers
def batch_column(batch: dict[str, Any], name: str) -> list[Any]:
    """One column of a Ray numpy batch as a list: Python scalars, or one array per row for
    tensor columns (ragged ones arrive as object arrays or lists)."""
    values = batch[name]
    if isinstance(values, np.ndarray) and values.dtype != object and values.ndim == 1:
        return values.tolist()
    return list(values)


def numpy_column(values: list[Any]) -> Any:
    """A list of row values as Ray's numpy batch format accepts it; arrays of different shapes
    stay a list (ragged), bytes become an object array."""
    if values and isinstance(values[0], np.ndarray):
        return values if len({v.shape for v in values}) > 1 else np.stack(values)
    if values and isinstance(values[0], (bytes, bytearray)):
        return np.array(values, dtype=object)
    return np.array(values)


def set_columns(batch: dict[str, Any], columns: dict[str, list[Any]]) -> dict[str, Any]:
    """Add (or replace) columns of a batch; returns the batch."""
    for name, values in columns.items():
        batch[name] = numpy_column(values)
    return batch


# ------------------------------------------------------------------------------------ decode
class DecodeImages:
    """CPU stage: decode the files of ``{image_id, file_path}`` rows.

    Adds ``status, error, width, height`` (original size after EXIF orientation; 0 when
    unreadable), ``image`` ((h, w, 3) uint8 with max(h, w) <= max_side; a 1x1 placeholder on
    error) and ``seconds``.
    """

    def __init__(self, max_side: Optional[int], max_pixels: int) -> None:
        self.max_side = max_side
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {k: [] for k in ("status", "error", "width", "height", "image", "seconds")}
        for file_path in batch_column(batch, "file_path"):
            start = time.perf_counter()
            try:
                image, width, height = load_image_for_model(file_path, max_side=self.max_side, max_pixels=self.max_pixels)
                status, error = STATUS_OK, ""
            except ImageDecodeError as exc:
                image, status, error, width, height = PLACEHOLDER_IMAGE, STATUS_ERROR, f"{exc.reason}: {exc.detail}", 0, 0
            except Exception as exc:  # never let one file stop the run
                logger.exception("unexpected error decoding %s", file_path)
                image, status, error, width, height = PLACEHOLDER_IMAGE, STATUS_ERROR, f"decode_failed: {type(exc).__name__}: {exc}", 0, 0
            for name, value in zip(out, (status, error, int(width), int(height), image, time.perf_counter() - start)):
                out[name].append(value)
        batch["image_id"] = numpy_column([int(i) for i in batch_column(batch, "image_id")])
        batch["file_path"] = numpy_column([str(p) for p in batch_column(batch, "file_path")])
        return set_columns(batch, out)



# ------------------------------------------------------------------------------------- model
def localize(path_abs: Optional[str], path_rel: Optional[str]) -> Optional[str]:
    """The driver's absolute path if it exists here, else the cwd-relative one (Ray working_dir)."""
    if path_abs is None:
        return None
    if os.path.exists(path_abs) or path_rel is None:
        return path_abs
    candidate = os.path.abspath(path_rel)
    return candidate if os.path.exists(candidate) else path_abs


def worker_lost_error(deaths: int) -> str:
    """The ``error`` of an image on which the model process died alone every time (reason
    ``worker_lost``); the one place this message is spelled."""
    return (
        f"worker_lost: the model worker process died (or hung) on this image alone {deaths} time(s) "
        "(after bisecting its batch); see the Ray worker logs"
    )


class WorkerLost(Exception):
    """The model process died ``deaths`` times on one image alone: no prediction for it."""

    def __init__(self, deaths: int) -> None:
        super().__init__(worker_lost_error(deaths))


def predict_with_retries(model: ModelProcess, names: list[str], images: list[np.ndarray], max_retries: int) -> list[tuple[Any, Optional[int]]]:
    """Predict ``images`` (file base ``names``) in the model process, surviving its deaths.

    Retry budget: this group of images gets ``1 + max_retries`` attempts, each after a death in a
    fresh model process (:meth:`ModelProcess.start` starts one when none runs). When all of them
    die, the group is split in halves and each half gets the same budget again, recursively; a
    single image still without an answer becomes :class:`WorkerLost`. So one poisoned image in a
    batch of B costs ``(1 + max_retries) * (1 + ceil(log2 B))`` deaths and as many model loads,
    and every other image is predicted exactly once (by the first attempt of a group that
    does not hold the poisoned image, or of the whole batch when none does).

    Returns:
        per image, (a PanopticPrediction, PredictionFailed or WorkerLost; the pid of the model
        process that answered, or of the last one that died on it).
    """
    deaths, dead_pid = 0, None
    while True:
        try:
            pid = model.start().pid
            return [(result, pid) for result in model.predict(names, images)]
        except ModelProcessDied as exc:
            deaths, dead_pid = deaths + 1, exc.pid
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            then = "retrying" if deaths <= max_retries else "bisecting" if len(images) > 1 else "giving up on it (worker_lost)"
            logger.warning(
                "the model process %s %s on a batch of %d image(s) (%s), attempt %d of %d; %s",
                exc.pid, "hung (killed)" if exc.hung else f"died (exit code {exc.exitcode})", len(images), shown, deaths,
                max_retries + 1, then,
            )
            if deaths > max_retries:
                break
    if len(images) == 1:
        return [(WorkerLost(deaths), dead_pid)]
    half = (len(images) + 1) // 2
    return predict_with_retries(model, names[:half], images[:half], max_retries) + predict_with_retries(model, names[half:], images[half:], max_retries)


class PanopticModelActor:
    """Actor stage: a predictor (:data:`possam_label.predictors.PREDICTOR_REGISTRY`) loaded once
    per actor in a child process (:class:`~.model_process.ModelProcess`), applied to decoded batches.

    The child, not the actor, runs the model: when it dies on a batch (the OS killing it, a native
    crash), the actor starts a new one and retries the batch up to ``max_worker_retries`` times,
    then bisects it (:func:`predict_with_retries`) so that one poisoned image ends as
    ``worker_lost`` and its neighbours are labeled. Ray never sees the death, so it never retries
    the batch forever. A death of the actor process itself is still Ray's (restart, retry).

    Args:
        model: a registered predictor name ("possam", "sam-clip").
        config_path, config_rel: the YAML config (absolute on the driver; cwd-relative variant
            for workers whose copy of the code lives elsewhere).
        checkpoint, checkpoint_rel: weights override (None: the config's).
        config_overrides: nested mapping merged over the YAML (``--set`` on the CLI).
        vocabulary: ``Vocabulary.to_dict()`` of the labeling vocabulary.
        device: "cpu", "cuda", ...
        batch_size: images per forward pass.
        torch_threads: intra-op threads on CPU (None: leave torch's default).
        max_worker_retries: retries of a batch (and of each bisected half) after the model
            process died on it; >= 0.
        image_timeout_s: seconds per image a batch may take before the model process counts as
            hung (killed; then as after a death).
    """

    def __init__(
        self,
        model: str,
        config_path: str,
        config_rel: Optional[str],
        checkpoint: Optional[str],
        checkpoint_rel: Optional[str],
        config_overrides: Optional[dict[str, Any]],
        vocabulary: dict[str, Any],
        device: str,
        batch_size: int,
        torch_threads: Optional[int],
        max_worker_retries: int,
        image_timeout_s: Optional[float] = DEFAULT_IMAGE_TIMEOUT_S,
    ) -> None:
        import ray

        spec = ModelSpec(
            model=model, config_path=str(localize(config_path, config_rel)), checkpoint=localize(checkpoint, checkpoint_rel),
            config_overrides=config_overrides, vocabulary=vocabulary, device=device, batch_size=batch_size, torch_threads=torch_threads,
        )
        self.max_worker_retries = max_worker_retries
        self.model = ModelProcess(spec, image_timeout_s=image_timeout_s)
        info = self.model.start()
        self.ready_at = time.time()  # wall clock: comparable across processes (and NTP-synced nodes)
        self.last_model_pid = info.pid
        self.identity_fields = {
            "weights": info.weights,
            "host": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "pid": os.getpid(),
            "device": str(device),
            "torch_threads": info.torch_threads,
        }
        self.identities: dict[int, str] = {}
        logger.info("%s actor ready on %s (%s), model process %d", model, socket.gethostname(), device, info.pid)

    def identity(self, model_pid: int) -> str:
        """The JSON identity of this actor with the model process ``model_pid`` (collected in
        run.json ``model.workers``: one entry per model process that labeled images, so a
        respawned child shows up as a new entry with the same actor ``pid``)."""
        if model_pid not in self.identities:
            self.identities[model_pid] = json.dumps(self.identity_fields | {"model_pid": model_pid}, sort_keys=True)
        return self.identities[model_pid]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        status = batch_column(batch, "status")
        images = list(batch.pop("image"))
        names = [os.path.basename(str(p)) for p in batch_column(batch, "file_path")]
        ok = [i for i, s in enumerate(status) if s == STATUS_OK]
        start = time.perf_counter()
        # Copies: Ray hands out read-only zero-copy arrays, and the pipe pickles what it sends.
        answers = predict_with_retries(
            self.model, [names[i] for i in ok], [np.array(images[i], dtype=np.uint8) for i in ok], self.max_worker_retries,
        ) if ok else []
        per_image = (time.perf_counter() - start) / max(1, len(ok))
        errors = batch_column(batch, "error")
        id_maps: list[np.ndarray] = [PLACEHOLDER_MAP] * len(status)
        predicted: list[bytes] = [b""] * len(status)
        model_pids = [self.last_model_pid] * len(status)
        for i, (prediction, model_pid) in zip(ok, answers):
            model_pids[i] = self.last_model_pid = model_pid or self.last_model_pid
            if isinstance(prediction, WorkerLost):
                status[i], errors[i] = STATUS_ERROR, str(prediction)
            elif isinstance(prediction, PredictionFailed):
                status[i], errors[i] = STATUS_ERROR, f"model_failed: {prediction}"
            else:
                id_maps[i] = np.ascontiguousarray(prediction.panoptic_map, dtype=np.int32)
                predicted[i] = table_to_ipc(predicted_segments_table(prediction.segments))
        ok_rows = set(ok)
        model_seconds = [per_image if i in ok_rows else 0.0 for i in range(len(status))]
        return set_columns(
            batch,
            {
                "status": status,
                "error": errors,
                "id_map": id_maps,
                "predicted_segments": predicted,
                "seconds": [float(s) + m for s, m in zip(batch_column(batch, "seconds"), model_seconds)],
                "model_identity": [self.identity(pid) for pid in model_pids],
                "model_ready_at": [self.ready_at] * len(status),
                "model_done_at": [time.time()] * len(status),
                "model_seconds": model_seconds,
            },
        )

    def __del__(self) -> None:
        # Ray Data deletes the UDF when the pool shuts down gracefully; a killed actor's child
        # dies by PR_SET_PDEATHSIG and the pipe's end-of-file instead.
        model = getattr(self, "model", None)
        if model is not None:
            model.close()


# ------------------------------------------------------------------------------------ encode
def to_original_size(id_map: np.ndarray, predicted: pa.Table, height: int, width: int, min_score: float) -> tuple[np.ndarray, pa.Table]:
    """Bring a model-output prediction to the original image size and make it self-consistent.

    The one place this happens. Drops segments below ``min_score`` (their pixels become void, 0),
    resizes the id map (nearest), zeroes pixels whose id has no segment, and recomputes every
    ``area`` and ``bbox`` from the final map, so the PNG, the segment rows and the RLEs agree.

    Args:
        id_map: (h, w) int ids at the model's output size.
        predicted: the prediction's segments (:data:`~possam_label.io.tables.PREDICTED_SEGMENTS_SCHEMA`).
    Returns:
        (height, width) int32 id map and the kept segments (id order) with exact area and bbox.
    """
    ids = predicted.column("segment_id").to_numpy()
    keep = np.flatnonzero((ids > 0) & score_passes(predicted.column("score").to_numpy(), min_score))
    keep = keep[np.argsort(ids[keep], kind="stable")]
    kept_ids = [int(i) for i in ids[keep]]
    full = resize_ids(keep_ids(np.asarray(id_map, dtype=np.int32), kept_ids), height, width)
    full, kept = renumber(full, kept_ids, compact=False)
    rows = predicted.take(pa.array([int(keep[k.index]) for k in kept], type=pa.int64()))
    rows = rows.set_column(rows.schema.get_field_index("area"), "area", pa.array([k.area for k in kept], type=pa.int64()))
    bbox = pa.array([k.bbox for k in kept], type=ARROW_TYPES["bbox"])
    return full, rows.set_column(rows.schema.get_field_index("bbox"), "bbox", bbox)


def segment_rows(full: np.ndarray, segments: pa.Table, image_id: int, file_path: str, run_id: str) -> pa.Table:
    """The ``segments`` table rows of one image: its segments with their RLE masks."""
    ids = [int(i) for i in segments.column("segment_id").to_pylist()]
    rles = encode_panoptic_map(full, ids)
    count = len(ids)
    columns: dict[str, Any] = {name: segments.column(name) for name in segments.column_names}
    columns.update(image_id=[image_id] * count, file_path=[file_path] * count, rle=[rles[i] for i in ids], run_id=[run_id] * count)
    return pa.Table.from_pydict({name: columns[name] for name in SEGMENTS_SCHEMA.names}, schema=SEGMENTS_SCHEMA)


def encode_image(id_map: np.ndarray, predicted: bytes, height: int, width: int, image_id: int, file_path: str, min_score: float, run_id: str) -> tuple[bytes, pa.Table]:
    """One image's outputs from its model-output prediction: (PNG bytes, ``segments`` rows).

    The one per-image encode, whichever process then writes the files (``--writes``), so both
    write modes give the same bytes.
    """
    full, segments = to_original_size(np.asarray(id_map), table_from_ipc(bytes(predicted)), height, width, min_score)
    return panoptic_png_bytes(full), segment_rows(full, segments, image_id, file_path, run_id)


class EncodeOutputs:
    """CPU stage: model-output prediction -> original size, PNG and ``segments`` rows per image.

    Two ways out (``--writes``, :class:`~.options.AutolabelOptions` ``writes``):

    - ``out_dir`` None (driver writes): adds ``png`` (bytes) and ``segments`` (Arrow IPC of the
      image's segment rows); the driver writes both.
    - ``out_dir`` set (workers write): stages the batch's PNGs and ONE Parquet file of its
      segment rows in ``out_dir`` (:meth:`~possam_label.io.output_store.OutputStore.write_staged`) and
      adds only ``staged`` (the batch's staging token) and ``staged_rows`` (rows of the batch:
      the driver commits the batch once all of them arrived). ``out_dir`` must be on a
      filesystem this worker sees at the same path as the driver.

    Both add ``num_segments`` and update ``status``, ``error``, ``seconds``.

    Args:
        min_score: the score threshold (``score >= min_score`` kept).
        run_id: written into every segment row.
        out_dir: the output directory when workers write, else None.
        durable: fsync staged files (workers write).
    """

    def __init__(self, min_score: float, run_id: str, out_dir: Optional[str] = None, durable: bool = True) -> None:
        self.min_score = min_score
        self.run_id = run_id
        self.out_dir = out_dir
        self.durable = durable

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        status, errors, seconds = batch_column(batch, "status"), batch_column(batch, "error"), batch_column(batch, "seconds")
        id_maps, predicted = list(batch.pop("id_map")), batch_column(batch, "predicted_segments")
        del batch["predicted_segments"]
        image_ids, file_paths = batch_column(batch, "image_id"), batch_column(batch, "file_path")
        heights, widths = batch_column(batch, "height"), batch_column(batch, "width")
        pngs: list[bytes] = []
        tables: list[Optional[pa.Table]] = []
        counts: list[int] = []
        for i in range(len(status)):
            start = time.perf_counter()
            png, rows = b"", None
            if status[i] == STATUS_OK:
                try:
                    png, rows = encode_image(id_maps[i], predicted[i], int(heights[i]), int(widths[i]), int(image_ids[i]), str(file_paths[i]), self.min_score, self.run_id)
                except Exception as exc:  # a malformed prediction must not stop the run
                    logger.exception("encoding failed for %s", file_paths[i])
                    status[i], errors[i], png, rows = STATUS_ERROR, f"encode_failed: {type(exc).__name__}: {exc}", b"", None
            pngs.append(png)
            tables.append(rows)
            counts.append(0 if rows is None else rows.num_rows)
            seconds[i] = float(seconds[i]) + time.perf_counter() - start
        columns: dict[str, list[Any]] = {"status": status, "error": errors, "seconds": seconds, "num_segments": counts}
        if self.out_dir is None:
            columns.update(png=pngs, segments=[b"" if t is None else table_to_ipc(t) for t in tables])
        else:
            start = time.perf_counter()
            token = self.stage(image_ids, status, pngs, tables)
            share = (time.perf_counter() - start) / max(1, len(status))
            columns.update(seconds=[s + share for s in seconds], staged=[token] * len(status), staged_rows=[len(status)] * len(status))
        return set_columns(batch, columns)

    def stage(self, image_ids: list[Any], status: list[str], pngs: list[bytes], tables: list[Optional[pa.Table]]) -> str:
        """Write this batch's staged files; returns their token (new for every call, so a batch
        that Ray runs twice stages twice and the driver promotes one of them)."""
        store = OutputStore(str(self.out_dir), durable=self.durable)
        token = new_staged_token()
        ok = [i for i, s in enumerate(status) if s == STATUS_OK]
        kept = [t for t in tables if t is not None]
        segments = pa.concat_tables(kept).combine_chunks() if kept else SEGMENTS_SCHEMA.empty_table()
        store.write_staged(token, [(int(image_ids[i]), pngs[i]) for i in ok], segments)
        return token
