"""The distributed auto-labeling job: image files -> PosSAM -> Parquet + COCO-panoptic, on Ray Data.

Data flow (one direction, streaming, memory bounded by the batches in flight)::

    input paths (from_items, with stable ids; already-committed ids skipped on --resume)
      -> decode_batch     CPU tasks: robust decode to RGB, EXIF, downscale to the model's input side
      -> PanopticModelActor  actor pool, model loaded once per actor (GPU when given, else CPU)
      -> encode_batch     CPU tasks: upsample id map to the original size, score filter, RLE, PNG
      -> driver           iter_batches: PNGs, then segments part, then images part (commit), atomically
      -> end              panoptic.json streamed from the committed parts' metadata; run.json

Every input ends as exactly one ``images`` row: ``ok`` with its segments, or ``error`` with the
reason (unreadable, truncated, too large, model failure, ...). See ``docs/outputs.md``.
This module is the only one (with the training engine) that imports ``ray``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import platform
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..io.coco_panoptic_writer import panoptic_png_bytes, segment_info_entry, write_coco_panoptic_json
from ..io.images import DEFAULT_MAX_PIXELS, ImageDecodeError, is_image_path, load_image_for_model
from ..io.rle import encode_panoptic_map
from ..io.tables import (
    STATUS_ERROR,
    STATUS_OK,
    OutputDirError,
    OutputStore,
    atomic_write_json,
    image_id_for_path,
    images_table,
    new_part_prefix,
    segments_table,
    utc_now,
)

logger = logging.getLogger(__name__)

FIFTYONE_PREFIX = "fiftyone://"
PLACEHOLDER_IMAGE = np.zeros((1, 1, 3), dtype=np.uint8)
PLACEHOLDER_MAP = np.zeros((1, 1), dtype=np.int32)
# Logical CPUs of a decode/encode task. These stages are light next to the model; a value
# different from the model actor's keeps Ray from fusing decoding into the model actor (fusion
# needs equal remote args), so decoding of the next batch overlaps inference of this one.
CPU_STAGE_CPUS = 0.5
DEFAULT_WAIT_FOR_WORKERS_S = 900.0
MAX_INPUT_BLOCKS = 10_000


class AutolabelError(RuntimeError):
    """A run that cannot start or finish (bad source, config mismatch on resume, lost rows)."""


# =============================================================================== inputs
def list_inputs(source: str) -> list[str]:
    """The image files of a dataset source, as absolute paths, in a stable order.

    Args:
        source: one of
            - a directory: searched recursively for :data:`~possam_label.io.images.IMAGE_EXTENSIONS`
              (case-insensitive; symlinked files are included, symlinked directories are not followed);
            - an image file: that one image;
            - a text file: one path per line (blank lines and ``#`` comments skipped; relative
              paths are relative to the text file's directory); every listed path is an input,
              whatever its extension, so a missing or non-image entry becomes an error row;
            - a glob pattern (``*``, ``?``, ``[``; ``**`` recursive): matching image files;
            - ``fiftyone://NAME``: the ``filepath`` of every sample of a FiftyOne dataset.

    Raises:
        AutolabelError: a source that does not exist or yields no input.
    """
    if source.startswith(FIFTYONE_PREFIX):
        paths = _fiftyone_filepaths(source[len(FIFTYONE_PREFIX) :])
    elif os.path.isdir(source):
        paths = []
        for directory, subdirs, files in os.walk(source):
            subdirs.sort()
            paths.extend(os.path.join(directory, name) for name in sorted(files) if is_image_path(name))
    elif os.path.isfile(source):
        if is_image_path(source):
            paths = [source]
        else:
            paths = _read_listing(Path(source))
    elif any(ch in source for ch in "*?["):
        paths = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p) and is_image_path(p))
    else:
        raise AutolabelError(f"dataset source {source!r} is not a directory, file, glob pattern or fiftyone://NAME")
    paths = [os.path.normpath(os.path.abspath(p)) for p in paths]
    if not paths:
        raise AutolabelError(f"dataset source {source!r} contains no images (extensions: jpg, jpeg, png, webp, bmp, tif, tiff)")
    return paths


def _read_listing(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AutolabelError(f"{path}: a listing file must be UTF-8 text with one image path per line ({exc})") from exc
    base = path.resolve().parent
    out = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        out.append(entry if os.path.isabs(entry) else str(base / entry))
    return out


def _fiftyone_filepaths(name: str) -> list[str]:
    if not name:
        raise AutolabelError("fiftyone:// needs a dataset name, e.g. fiftyone://my_dataset")
    try:
        import fiftyone as fo  # lazy: heavy import and a database connection
    except ImportError as exc:
        raise AutolabelError("reading a fiftyone:// source needs the 'fiftyone' package (pip install possam-label[fiftyone])") from exc
    if name not in fo.list_datasets():
        raise AutolabelError(f"FiftyOne dataset {name!r} does not exist (known: {', '.join(fo.list_datasets()[:10])})")
    return [str(p) for p in fo.load_dataset(name).values("filepath")]


def unique_inputs(paths: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
    """``[{"image_id", "file_path"}]`` with duplicates (same id, i.e. same absolute path) removed.

    Returns:
        the rows in input order and the number of duplicates dropped.
    """
    seen: set[int] = set()
    rows = []
    for path in paths:
        image_id = image_id_for_path(path)
        if image_id in seen:
            continue
        seen.add(image_id)
        rows.append({"image_id": image_id, "file_path": path})
    return rows, len(paths) - len(rows)


# ========================================================================= Ray stages
def _column(batch: dict[str, Any], name: str) -> list[Any]:
    """One column of a Ray numpy batch as a list: Python scalars, or one array per row for
    tensor columns (ragged ones arrive as object arrays or lists)."""
    values = batch[name]
    if isinstance(values, np.ndarray) and values.dtype != object and values.ndim == 1:
        return values.tolist()
    return list(values)


def decode_batch(batch: dict[str, Any], max_side: Optional[int], max_pixels: int) -> dict[str, Any]:
    """Ray CPU stage: decode the files of a batch of ``{image_id, file_path}`` rows.

    Returns columns ``image_id, file_path, status, error, width, height`` (original size after
    EXIF orientation; 0 when unreadable), ``image`` ((h, w, 3) uint8 with max(h, w) <= max_side;
    a 1x1 placeholder on error) and ``seconds``.
    """
    out: dict[str, list[Any]] = {k: [] for k in ("image_id", "file_path", "status", "error", "width", "height", "image", "seconds")}
    for image_id, file_path in zip(_column(batch, "image_id"), _column(batch, "file_path")):
        start = time.perf_counter()
        try:
            image, width, height = load_image_for_model(file_path, max_side=max_side, max_pixels=max_pixels)
            status, error = STATUS_OK, ""
        except ImageDecodeError as exc:
            image, status, error, width, height = PLACEHOLDER_IMAGE, STATUS_ERROR, f"{exc.reason}: {exc.detail}", 0, 0
        except Exception as exc:  # never let one file stop the run
            logger.exception("unexpected error decoding %s", file_path)
            image, status, error, width, height = PLACEHOLDER_IMAGE, STATUS_ERROR, f"decode_failed: {type(exc).__name__}: {exc}", 0, 0
        out["image_id"].append(int(image_id))
        out["file_path"].append(str(file_path))
        out["status"].append(status)
        out["error"].append(error)
        out["width"].append(int(width))
        out["height"].append(int(height))
        out["image"].append(image)
        out["seconds"].append(time.perf_counter() - start)
    return _numpy_batch(out)


def _numpy_batch(columns: dict[str, list[Any]]) -> dict[str, Any]:
    """Columns to what Ray's numpy batch format accepts; arrays of different shapes stay a list (ragged)."""
    out: dict[str, Any] = {}
    for name, values in columns.items():
        if values and isinstance(values[0], np.ndarray):
            out[name] = values if len({v.shape for v in values}) > 1 else np.stack(values)
        elif values and isinstance(values[0], (bytes, bytearray)):
            out[name] = np.array(values, dtype=object)
        else:
            out[name] = np.array(values)
    return out


def _localize(path_abs: Optional[str], path_rel: Optional[str]) -> Optional[str]:
    """The driver's absolute path if it exists here, else the cwd-relative one (Ray working_dir)."""
    if path_abs is None:
        return None
    if os.path.exists(path_abs) or path_rel is None:
        return path_abs
    candidate = os.path.abspath(path_rel)
    return candidate if os.path.exists(candidate) else path_abs


class PanopticModelActor:
    """Ray actor stage: the model (PosSAM, or the two-stage SAM+CLIP baseline) loaded once per
    actor, applied to decoded batches.

    Args:
        model: "possam" or "sam-clip" (:data:`MODEL_KINDS`).
        config_path, config_rel: the YAML config (absolute on the driver; cwd-relative variant
            for workers whose copy of the code lives elsewhere).
        checkpoint, checkpoint_rel: head weights override (None: the config's).
        config_overrides: nested mapping merged over the YAML (``--set`` on the CLI).
        vocabulary: ``Vocabulary.to_dict()`` of the labeling vocabulary.
        device: "cpu", "cuda", ...
        batch_size: images per forward pass.
        torch_threads: intra-op threads on CPU (None: leave torch's default).
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
    ) -> None:
        import ray
        import torch

        from ..vocab import Vocabulary

        if torch_threads:
            torch.set_num_threads(torch_threads)
        # Parts without weight files are randomly initialised (tests, speed benchmarks): seed them
        # so every actor of a run builds the same model.
        torch.manual_seed(0)
        start = time.perf_counter()
        self.predictor = predictor_class(model).from_config(
            _localize(config_path, config_rel), checkpoint=_localize(checkpoint, checkpoint_rel), device=device,
            overrides=config_overrides or None,
        )
        self.vocabulary = Vocabulary.from_dict(vocabulary)
        self.batch_size = batch_size
        self.ready_at = time.time()  # wall clock: comparable across processes (and NTP-synced nodes)
        self.identity = json.dumps(
            {
                "weights": self.predictor.weights_identity(),
                "host": socket.gethostname(),
                "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
                "pid": os.getpid(),
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
            },
            sort_keys=True,
        )
        logger.info(model + " actor ready on %s (%s) in %.1fs", socket.gethostname(), device, time.perf_counter() - start)

    def _predict_isolated(self, images: list[np.ndarray]) -> list[Any]:
        """Predict a batch; if the batch fails, image by image so only the culprit fails."""
        try:
            return list(self.predictor.predict(images, vocabulary=self.vocabulary, batch_size=self.batch_size))
        except Exception as batch_exc:
            if self.predictor.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()  # an out-of-memory batch may fit image by image
            if len(images) == 1:
                return [batch_exc]
            logger.warning("batch of %d failed (%s); retrying image by image", len(images), batch_exc)
        results: list[Any] = []
        for image in images:
            try:
                results.append(self.predictor.predict([image], vocabulary=self.vocabulary, batch_size=1)[0])
            except Exception as exc:
                results.append(exc)
        return results

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        status = _column(batch, "status")
        images = list(batch["image"])
        ok = [i for i, s in enumerate(status) if s == STATUS_OK]
        start = time.perf_counter()
        # Copies: Ray hands out read-only zero-copy arrays, which torch.from_numpy warns about.
        predictions = self._predict_isolated([np.array(images[i], dtype=np.uint8) for i in ok]) if ok else []
        per_image = (time.perf_counter() - start) / max(1, len(ok))
        errors = _column(batch, "error")
        id_maps: list[np.ndarray] = [PLACEHOLDER_MAP] * len(status)
        segments = ["[]"] * len(status)
        for i, prediction in zip(ok, predictions):
            if isinstance(prediction, Exception):
                status[i] = STATUS_ERROR
                errors[i] = f"model_failed: {type(prediction).__name__}: {prediction}"
                continue
            id_maps[i] = np.ascontiguousarray(prediction.panoptic_map, dtype=np.int32)
            segments[i] = json.dumps([s.to_dict() for s in prediction.segments])
        ok_rows = set(ok)
        seconds = [float(s) + (per_image if i in ok_rows else 0.0) for i, s in enumerate(_column(batch, "seconds"))]
        return _numpy_batch(
            {
                "image_id": _column(batch, "image_id"),
                "file_path": _column(batch, "file_path"),
                "status": status,
                "error": errors,
                "width": _column(batch, "width"),
                "height": _column(batch, "height"),
                "id_map": id_maps,
                "segments_json": segments,
                "seconds": seconds,
                "model_identity": [self.identity] * len(status),
                "model_ready_at": [self.ready_at] * len(status),
                "model_done_at": [time.time()] * len(status),
                "model_seconds": [per_image if i in ok_rows else 0.0 for i in range(len(status))],
            }
        )


MODEL_KINDS = ("possam", "sam-clip")


def predictor_class(model: str) -> Any:
    """The predictor class of a model kind: ``PosSAMPredictor`` or the two-stage ``SamClipPredictor``
    (same ``from_config`` / ``predict`` / ``weights_identity`` interface)."""
    if model == "possam":
        from ..predictor import PosSAMPredictor

        return PosSAMPredictor
    if model == "sam-clip":
        from ..model.sam_clip_baseline import SamClipPredictor

        return SamClipPredictor
    raise ValueError(f"model must be one of {', '.join(MODEL_KINDS)}, got {model!r}")


def upsample_ids(id_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) id map to (height, width) (pixel centres; no id is lost when upscaling)."""
    if id_map.shape == (height, width):
        return id_map
    rows = np.minimum(((np.arange(height) + 0.5) * id_map.shape[0] / height).astype(np.int64), id_map.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * id_map.shape[1] / width).astype(np.int64), id_map.shape[1] - 1)
    return id_map[rows[:, None], cols[None, :]]


def finalize_prediction(
    id_map: np.ndarray, segments: list[dict[str, Any]], height: int, width: int, min_score: float
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Bring a model-resolution prediction to the original size and make it self-consistent.

    Drops segments below ``min_score`` (their pixels become void, 0), upsamples the id map, zeroes
    pixels whose id has no segment, and recomputes every ``area`` and ``bbox`` from the final map,
    so the PNG, ``segments_info`` and the RLEs agree exactly.

    Args:
        id_map: (h, w) int ids at model resolution.
        segments: ``SegmentInfo.to_dict()`` rows.
    Returns:
        (height, width) int32 id map and the kept segments (id order) with exact area/bbox.
    """
    from scipy import ndimage

    id_map = np.asarray(id_map, dtype=np.int32)
    kept = [s for s in segments if float(s["score"]) >= min_score and int(s["id"]) > 0]
    max_id = max([int(id_map.max()) if id_map.size else 0] + [int(s["id"]) for s in kept])
    lookup = np.zeros(max_id + 1, dtype=np.int32)
    for s in kept:
        lookup[int(s["id"])] = int(s["id"])
    full = lookup[upsample_ids(np.clip(id_map, 0, max_id), height, width)]
    areas = np.bincount(full.ravel(), minlength=max_id + 1)
    boxes = ndimage.find_objects(full, max_label=max_id)
    final = []
    for s in sorted(kept, key=lambda s: int(s["id"])):
        seg_id = int(s["id"])
        if areas[seg_id] == 0 or boxes[seg_id - 1] is None:
            continue
        rows, cols = boxes[seg_id - 1]
        out = dict(s)
        out["area"] = int(areas[seg_id])
        out["bbox"] = [float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start)]
        final.append(out)
    return full, final


def encode_batch(batch: dict[str, Any], min_score: float) -> dict[str, Any]:
    """Ray CPU stage: original-size id map -> PNG bytes + per-segment rows with COCO RLE (as JSON)."""
    status = _column(batch, "status")
    errors = _column(batch, "error")
    widths = _column(batch, "width")
    heights = _column(batch, "height")
    seconds = _column(batch, "seconds")
    id_maps = list(batch["id_map"])
    segments_json = _column(batch, "segments_json")
    pngs: list[bytes] = []
    rows_json: list[str] = []
    counts: list[int] = []
    for i in range(len(status)):
        start = time.perf_counter()
        png, rows = b"", []
        if status[i] == STATUS_OK:
            try:
                full, segments = finalize_prediction(np.asarray(id_maps[i]), json.loads(segments_json[i]), int(heights[i]), int(widths[i]), min_score)
                rles = encode_panoptic_map(full, [s["id"] for s in segments])
                png = panoptic_png_bytes(full)
                for s in segments:
                    rows.append(
                        {
                            "segment_id": int(s["id"]),
                            "category_id": int(s["category_id"]),
                            "category": str(s["category"]),
                            "isthing": bool(s["isthing"]),
                            "score": float(s["score"]),
                            "mask_quality": float(s["mask_quality"]),
                            "in_vocab_prob": float(s["in_vocab_prob"]),
                            "out_vocab_prob": float(s["out_vocab_prob"]),
                            "area": int(s["area"]),
                            "bbox": [float(v) for v in s["bbox"]],
                            "rle": rles[int(s["id"])],
                        }
                    )
            except Exception as exc:  # a malformed prediction must not stop the run
                logger.exception("encoding failed for %s", _column(batch, "file_path")[i])
                status[i], errors[i], png, rows = STATUS_ERROR, f"encode_failed: {type(exc).__name__}: {exc}", b"", []
        pngs.append(png)
        rows_json.append(json.dumps(rows))
        counts.append(len(rows))
        seconds[i] = float(seconds[i]) + time.perf_counter() - start
    return _numpy_batch(
        {
            "image_id": _column(batch, "image_id"),
            "file_path": _column(batch, "file_path"),
            "status": status,
            "error": errors,
            "width": widths,
            "height": heights,
            "num_segments": counts,
            "seconds": seconds,
            "png": pngs,
            "segments_json": rows_json,
            "model_identity": _column(batch, "model_identity"),
            "model_ready_at": _column(batch, "model_ready_at"),
            "model_done_at": _column(batch, "model_done_at"),
            "model_seconds": _column(batch, "model_seconds"),
        }
    )


# ============================================================================ the job
@dataclass
class AutolabelOptions:
    """Everything a run needs; the CLI maps its flags one to one onto these fields.

    Attributes:
        dataset: source (see :func:`list_inputs`).
        out_dir: output directory; nothing is written outside it.
        config: PosSAM YAML config (None: ``possam_label.predictor.DEFAULT_CONFIG``).
        config_overrides: nested mapping merged over the config (e.g. ``{"baseline": {"points_per_side": 8}}``).
        model: "possam" (default) or "sam-clip": the training-free two-stage baseline
            (SAM automatic mask generator, then CLIP on every mask; ``config.baseline`` settings),
            for labeling without PosSAM head weights.
        checkpoint: PosSAM head weights overriding the config's; with ``model="sam-clip"``, a full
            SAM checkpoint overriding ``config.sam.checkpoint``.
        vocabulary: "coco", "ade20k", a file or "cat,dog,..." (None: the config's vocabulary).
        batch_size: images per model call (and per decode/encode task).
        workers: model actors (None: one per GPU, or 1 without GPUs).
        gpus_per_worker: GPUs per actor (None: 1 when the cluster has GPUs, else 0 = CPU).
        torch_threads: CPU inference threads per actor (None: :func:`default_torch_threads`, i.e.
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
            loads), else :data:`DEFAULT_WAIT_FOR_WORKERS_S` (autoscaling or busy clusters).
        mode: "new" | "resume" | "overwrite".
        retry_errors: with ``mode="resume"``, label again the images whose committed row is an error.
        min_score: segments with a lower MASE score are dropped (their pixels become void).
        max_side: decode stage downscales so that the longest side is at most this (None: the
            model's input size, ``config.sam.img_size``; 0: never downscale).
        max_pixels: images with more pixels are refused as decompression bombs.
        rows_per_part: images per committed part (the unit of loss on a crash).
        commit_interval_s: commit a smaller part when this much time passed since the last one.
        ship_code: send the ``possam_label`` package to the workers (``runtime_env.py_modules``)
            for clusters whose nodes do not have it installed.
        show_progress: tqdm progress bar (to stderr).
        durable: fsync every committed file.
    """

    dataset: str
    out_dir: str
    config: Optional[str] = None
    config_overrides: Optional[dict[str, Any]] = None
    checkpoint: Optional[str] = None
    model: str = "possam"
    vocabulary: Optional[str] = None
    batch_size: int = 4
    workers: Optional[int] = None
    gpus_per_worker: Optional[float] = None
    torch_threads: Optional[int] = None
    worker_resources: Optional[dict[str, float]] = None
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None
    wait_for_workers_s: Optional[float] = None
    mode: str = "new"
    retry_errors: bool = False
    min_score: float = 0.0
    max_side: Optional[int] = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    rows_per_part: int = 64
    commit_interval_s: float = 30.0
    ship_code: bool = False
    show_progress: bool = True
    durable: bool = True

    def output_settings(self) -> dict[str, Any]:
        """Settings that change the labels; a resumed run must use the same ones."""
        return {"min_score": self.min_score, "max_side": self.max_side, "max_pixels": self.max_pixels}


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
    error_reasons: dict[str, int] = field(default_factory=dict)
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _package_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist in ("possam-label", "torch", "torchvision", "ray", "pyarrow", "numpy", "pillow", "pycocotools", "open_clip_torch", "segment_anything", "scipy", "timm"):
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _relative_to_cwd(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    try:
        cwd = Path.cwd().resolve()
        return os.path.relpath(path, cwd) if Path(path).resolve().is_relative_to(cwd) else None
    except (ValueError, OSError):  # no usable cwd: workers fall back to the absolute path
        return None


def _resolve_vocabulary(cfg: Any, spec: Optional[str]) -> Any:
    """The labeling vocabulary: ``spec`` (as given on the command line) or the config's entry
    (file names in the config are relative to the config file)."""
    from ..vocab import load_vocabulary

    if spec is not None:
        return load_vocabulary(spec)
    config_spec = cfg.vocabulary
    if config_spec not in ("coco", "ade20k") and "," not in config_spec:
        resolved = cfg.resolve_path(config_spec)
        if resolved and os.path.exists(resolved):
            config_spec = resolved
    return load_vocabulary(config_spec)


def default_torch_threads(cpus: int, workers: int) -> int:
    """CPU inference threads per model actor: one core is left to the decode/encode tasks and the
    driver, the rest is shared by the actors. Oversubscribing cores costs a lot with OpenMP (its
    threads spin while waiting): on a busy 2-core machine 2 threads ran 3x slower than 1."""
    return max(1, (cpus - 1) // max(1, workers))


def _actor_pool_kwargs(size: int) -> dict[str, Any]:
    """Actor-pool sizing in the form the installed Ray prefers (``concurrency=`` in 2.9-2.50,
    ``compute=ActorPoolStrategy`` before and after; see ray-project/ray PR #57035)."""
    import ray.data

    major, minor = (int(x) for x in ray.__version__.split(".")[:2])
    if (major, minor) >= (2, 51) or (major, minor) < (2, 9):
        return {"compute": ray.data.ActorPoolStrategy(size=size)}
    return {"concurrency": size}


def _init_ray(options: AutolabelOptions) -> bool:
    """Connect to or start Ray; returns True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env: dict[str, Any] = {}
    if options.ship_code:
        runtime_env["py_modules"] = [str(Path(__file__).resolve().parents[1])]
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


def _ray_resources() -> dict[str, Any]:
    import ray

    resources = ray.cluster_resources()
    return {
        "cluster_resources": {k: v for k, v in resources.items() if not k.startswith("node:")},
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
        "ray_version": ray.__version__,
    }


@dataclass
class _PipelineStats:
    """Counts and ``time.perf_counter`` stamps of one pipeline execution."""

    processed: int = 0
    identities: set[str] = field(default_factory=set)
    submitted_at: float = 0.0  # wall clock (time.time) of every stamp, to compare with the actors'
    first_model_ready_at: Optional[float] = None
    first_result_at: Optional[float] = None
    last_commit_at: Optional[float] = None
    max_result_lag: float = 0.0  # longest model-output -> driver delay seen
    model_seconds: float = 0.0  # summed over actors: time inside the model's predict

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


class _PartBuffer:
    """Rows of finished images waiting to be committed as one part."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.segments: list[dict[str, Any]] = []
        self.pngs: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self.images)


def run_autolabel(options: AutolabelOptions) -> AutolabelSummary:
    """Label every image of ``options.dataset`` into ``options.out_dir`` (see module docstring).

    Returns:
        the run summary (also written to ``run.json`` and logged).

    Raises:
        OutputDirError: output directory not empty without resume/overwrite, or locked.
        AutolabelError: no inputs, a bad config/checkpoint/vocabulary, or a resume with a
            different model, vocabulary or output settings.
        ValueError: inconsistent options.
    """
    from ..config import load_config

    if options.batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if options.rows_per_part < 1:
        raise ValueError("rows_per_part must be >= 1")
    if options.model not in MODEL_KINDS:
        raise ValueError(f"model must be one of {', '.join(MODEL_KINDS)}, got {options.model!r}")
    if options.mode not in ("new", "resume", "overwrite"):
        raise ValueError(f"mode must be new, resume or overwrite, got {options.mode!r}")
    if options.retry_errors and options.mode != "resume":
        raise ValueError("retry_errors needs mode='resume' (--retry-errors goes with --resume)")
    started_at = utc_now()
    t_start = time.perf_counter()

    store = OutputStore(options.out_dir, durable=options.durable)
    # Refuse a non-empty directory before any expensive work (config, listing, Ray).
    if options.mode == "new" and [e for e in store.existing_entries() if e != ".lock"]:
        store.prepare("new")  # raises OutputDirError with the explanation

    config_path = os.path.abspath(options.config) if options.config else _default_config()
    try:
        cfg = load_config(config_path, options.config_overrides)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        raise AutolabelError(f"bad config: {exc}") from exc
    checkpoint = os.path.abspath(options.checkpoint) if options.checkpoint else None
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise AutolabelError(f"checkpoint {checkpoint} does not exist")
    try:
        vocabulary = _resolve_vocabulary(cfg, options.vocabulary)
    except (ValueError, OSError) as exc:
        raise AutolabelError(f"bad vocabulary {options.vocabulary or cfg.vocabulary!r}: {exc}") from exc
    max_side = cfg.sam.img_size if options.max_side is None else (options.max_side or None)

    paths = list_inputs(options.dataset)
    all_rows, duplicates = unique_inputs(paths)
    if duplicates:
        logger.warning("%d duplicate paths in %s were dropped (each image is labeled once)", duplicates, options.dataset)

    model_record = {
        "kind": options.model,
        "config_path": config_path,
        "config": cfg.to_dict(),
        "checkpoint": checkpoint or (cfg.resolve_path(cfg.checkpoint) if options.model == "possam" else None),
        "vocabulary_identity": vocabulary.identity(),
    }
    store.prepare(options.mode)
    try:
        previous = _read_previous_run(store) if options.mode == "resume" else None
        if previous is not None:
            _check_resume_compatible(previous, model_record, options.output_settings(), store)
        run_id = previous["run_id"] if previous else f"run-{new_part_prefix()}"
        if options.retry_errors:
            store.drop_error_rows()
        done_ids = store.committed_image_ids()
        pending = [row for row in all_rows if row["image_id"] not in done_ids]
        already_done = len(all_rows) - len(pending)
        if options.mode == "resume":
            logger.info("resume: %d of %d inputs already committed, %d to do", already_done, len(all_rows), len(pending))

        run_record = {
            "run_id": run_id,
            "status": "running",
            "source": options.dataset if options.dataset.startswith(FIFTYONE_PREFIX) else os.path.abspath(options.dataset),
            "out_dir": str(store.root),
            "options": dataclasses.asdict(options),
            "output_settings": options.output_settings(),
            "effective_max_side": max_side,
            "model": model_record | {
                "weights_sha256": previous.get("model", {}).get("weights_sha256") if previous else None,
                "workers": previous.get("model", {}).get("workers", []) if previous else [],
            },
            "vocabulary": vocabulary.to_dict(),
            "packages": _package_versions(),
            "host": {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count()},
            "started_at": previous.get("started_at", started_at) if previous else started_at,
            "attempts": (previous.get("attempts", []) if previous else []) + [{"started_at": started_at, "mode": options.mode, "pending": len(pending)}],
        }
        atomic_write_json(store.run_json, run_record, durable=options.durable)

        summary_counts = Counter()
        reasons: Counter = Counter()
        stats = _PipelineStats()
        complete = True
        if pending:
            started_ray = _init_ray(options)
            try:
                run_record["ray"] = _ray_resources()
                stats = _run_pipeline(
                    options, store, run_id, pending, config_path, checkpoint, vocabulary, max_side, summary_counts, reasons, run_record
                )
            finally:
                if started_ray:
                    import ray

                    ray.shutdown()
            if stats.processed != len(pending):
                complete = False
                logger.error("%d of %d pending inputs were not accounted for; rerun with --resume", len(pending) - stats.processed, len(pending))
        processed, identities = stats.processed, stats.identities

        coco_counts = _write_panoptic_json(store, vocabulary, run_record, options.durable)
        total_ok, total_err = _committed_counts(store)
        summary = AutolabelSummary(
            run_id=run_id,
            out_dir=str(store.root),
            inputs=len(all_rows),
            duplicates_dropped=duplicates,
            already_done=already_done,
            processed=processed,
            ok=summary_counts["ok"],
            errors=summary_counts["error"],
            segments=summary_counts["segments"],
            seconds=time.perf_counter() - t_start,
            images_per_second=stats.images_per_second(),
            steady_images_per_second=stats.steady_images_per_second(),
            startup_seconds=stats.startup_seconds(),
            max_result_lag_seconds=stats.max_result_lag,
            model_seconds=stats.model_seconds,
            error_reasons=dict(reasons),
            complete=complete,
        )
        run_record["status"] = "complete" if summary.complete else "incomplete"
        run_record["ended_at"] = utc_now()
        run_record["attempts"][-1].update({"ended_at": run_record["ended_at"], "summary": summary.to_dict()})
        run_record["counts"] = {"inputs": len(all_rows), "ok": total_ok, "error": total_err, "coco": coco_counts}
        run_record["model"]["workers"].extend(json.loads(i) for i in sorted(identities))
        atomic_write_json(store.run_json, run_record, durable=options.durable)
    finally:
        store.release()
    logger.info(
        "autolabel %s: %d inputs, %d processed now (%d ok, %d errors, %d segments), %d already done, %.2f images/s, %.1fs",
        summary.run_id, summary.inputs, summary.processed, summary.ok, summary.errors, summary.segments,
        summary.already_done, summary.images_per_second, summary.seconds,
    )
    return summary


def _default_config() -> str:
    """The shipped default config (importing the predictor pulls torch into the driver, so only
    when no config is given)."""
    from ..predictor import DEFAULT_CONFIG

    return str(DEFAULT_CONFIG)


def _read_previous_run(store: OutputStore) -> Optional[dict[str, Any]]:
    if not store.run_json.exists():
        if store.committed_parts():
            raise AutolabelError(f"{store.root} has committed parts but no run.json; cannot check it was made by the same model")
        return None
    try:
        return json.loads(store.run_json.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AutolabelError(f"cannot read {store.run_json}: {exc}") from exc


# Config sections that do not change a model kind's labels (training recipe; the baseline's
# settings for PosSAM).
_NON_INFERENCE_CONFIG_SECTIONS = {"possam": ("train", "baseline"), "sam-clip": ("train",)}


def _config_differences(before: Any, after: Any, prefix: str = "", skip: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ; keys present on one side only are not differences
    (a newer code version may add sections with defaults); top-level sections in ``skip`` are ignored."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) & set(after)):
            if not prefix and key in skip:
                continue
            out.extend(_config_differences(before[key], after[key], f"{prefix}{key}."))
        return out
    return [] if before == after else [prefix.rstrip(".")]


def _check_resume_compatible(previous: dict[str, Any], model: dict[str, Any], settings: dict[str, Any], store: OutputStore) -> None:
    before = previous.get("model", {})
    problems = []
    # Runs written before model kinds existed were PosSAM runs.
    if before.get("kind", "possam") != model["kind"]:
        problems.append(f"the model differs ({before.get('kind', 'possam')} vs {model['kind']})")
    changed = _config_differences(before.get("config", {}), model["config"], skip=_NON_INFERENCE_CONFIG_SECTIONS[model["kind"]])
    if changed:
        problems.append(f"the model config differs in {', '.join(changed[:8])}")
    if before.get("checkpoint") != model["checkpoint"]:
        problems.append(f"the checkpoint differs ({before.get('checkpoint')} vs {model['checkpoint']})")
    if before.get("vocabulary_identity") != model["vocabulary_identity"]:
        problems.append("the vocabulary differs")
    if previous.get("output_settings") != settings:
        problems.append(f"the output settings differ ({previous.get('output_settings')} vs {settings})")
    if problems:
        raise AutolabelError(
            f"cannot --resume in {store.root}: {'; '.join(problems)} from the run that wrote it. "
            "Resume with the same settings, or use --overwrite / another --out."
        )


def _weights_of(identity: str) -> dict[str, Any]:
    return json.loads(identity)["weights"]


def _actors_fit(resources: dict[str, float], workers: int, gpus_per_worker: float, worker_resources: Optional[dict[str, float]]) -> bool:
    """Whether the cluster's total resources (``ray.cluster_resources()``) can host ``workers``
    model actors (1 CPU each, plus their GPUs and custom resources) beside one CPU task."""
    needed: dict[str, float] = {"CPU": workers * 1.0 + CPU_STAGE_CPUS}
    if gpus_per_worker > 0:
        needed["GPU"] = workers * gpus_per_worker
    for name, amount in (worker_resources or {}).items():
        needed[name] = needed.get(name, 0.0) + workers * float(amount)
    return all(float(resources.get(name, 0.0)) >= amount for name, amount in needed.items())


def _run_pipeline(
    options: AutolabelOptions,
    store: OutputStore,
    run_id: str,
    pending: list[dict[str, Any]],
    config_path: str,
    checkpoint: Optional[str],
    vocabulary: Any,
    max_side: Optional[int],
    counts: Counter,
    reasons: Counter,
    run_record: dict[str, Any],
) -> _PipelineStats:
    import ray
    import ray.data

    stats = _PipelineStats(submitted_at=time.time())

    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0.0))
    gpus_per_worker = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if cluster_gpus > 0 else 0.0)
    if gpus_per_worker > 0 and cluster_gpus <= 0:
        raise AutolabelError(f"--gpus-per-worker {gpus_per_worker} asked for, but the Ray cluster has no GPU")
    if options.workers is not None:
        workers = options.workers
    elif gpus_per_worker > 0:
        workers = max(1, int(cluster_gpus // gpus_per_worker))
    else:
        workers = 1
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    torch_threads = None
    if device == "cpu":
        torch_threads = options.torch_threads or default_torch_threads(int(resources.get("CPU", os.cpu_count() or 1)), workers)
    run_record["execution"] = {
        "workers": workers, "gpus_per_worker": gpus_per_worker, "worker_resources": options.worker_resources,
        "device": device, "torch_threads": torch_threads, "batch_size": options.batch_size,
    }
    atomic_write_json(store.run_json, run_record, durable=options.durable)
    logger.info("labeling %d images with %d %s worker(s), batch size %d", len(pending), workers, device, options.batch_size)

    # Process-wide Ray Data settings, restored at the end (the caller may use Ray Data too).
    context = ray.data.DataContext.get_current()
    saved_context = {"enable_progress_bars": context.enable_progress_bars}
    context.enable_progress_bars = False  # our own bar below counts committed images
    wait_s = options.wait_for_workers_s
    if wait_s is None:
        # Ray Data's blocking wait for the actors also holds back the decode stage, so it is
        # only worth it when the actors may not fit yet.
        wait_s = 0.0 if _actors_fit(resources, workers, gpus_per_worker, options.worker_resources) else DEFAULT_WAIT_FOR_WORKERS_S
    run_record["execution"]["wait_for_workers_s"] = wait_s
    if wait_s > 0 and hasattr(context, "wait_for_min_actors_s"):
        saved_context["wait_for_min_actors_s"] = context.wait_for_min_actors_s
        context.wait_for_min_actors_s = int(math.ceil(wait_s))
    # One input block per batch keeps decoding parallel; past MAX_INPUT_BLOCKS blocks carry
    # several batches each (a decode task streams them out one batch at a time).
    num_blocks = max(1, min(MAX_INPUT_BLOCKS, math.ceil(len(pending) / options.batch_size)))
    ds = ray.data.from_items(pending, override_num_blocks=num_blocks)
    ds = ds.map_batches(decode_batch, batch_size=options.batch_size, batch_format="numpy", fn_kwargs={"max_side": max_side, "max_pixels": options.max_pixels}, num_cpus=CPU_STAGE_CPUS)
    actor_args: dict[str, Any] = {"num_cpus": 1}
    if gpus_per_worker > 0:
        actor_args["num_gpus"] = gpus_per_worker
    if options.worker_resources:
        actor_args["resources"] = dict(options.worker_resources)
    ds = ds.map_batches(
        PanopticModelActor,
        batch_size=options.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={
            "model": options.model,
            "config_path": config_path,
            "config_rel": _relative_to_cwd(config_path),
            "checkpoint": checkpoint,
            "checkpoint_rel": _relative_to_cwd(checkpoint),
            "config_overrides": options.config_overrides,
            "vocabulary": vocabulary.to_dict(),
            "device": device,
            "batch_size": options.batch_size,
            "torch_threads": torch_threads,
        },
        **_actor_pool_kwargs(workers),
        **actor_args,
    )
    ds = ds.map_batches(encode_batch, batch_size=options.batch_size, batch_format="numpy", fn_kwargs={"min_score": options.min_score}, num_cpus=CPU_STAGE_CPUS)

    progress = None
    if options.show_progress:
        from tqdm import tqdm

        progress = tqdm(total=len(pending), unit="img", desc="autolabel", dynamic_ncols=True, smoothing=0.1)
    prefix = new_part_prefix()
    part_index = 0
    buffer = _PartBuffer()
    seen: set[int] = set()
    identities = stats.identities
    expected_weights = run_record["model"].get("weights_sha256")
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal part_index, last_commit
        if not buffer:
            return
        for image_id, png in buffer.pngs:
            store.write_png(image_id, png)
        store.commit_part(f"{prefix}-{part_index:06d}", images_table(buffer.images), segments_table(buffer.segments))
        part_index += 1
        stats.processed += len(buffer)
        stats.last_commit_at = time.time()
        buffer.images.clear()
        buffer.segments.clear()
        buffer.pngs.clear()
        last_commit = time.monotonic()

    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            now = time.time()
            if stats.first_result_at is None:
                stats.first_result_at = now
            ready = float(np.min(batch["model_ready_at"]))
            stats.first_model_ready_at = ready if stats.first_model_ready_at is None else min(stats.first_model_ready_at, ready)
            stats.max_result_lag = max(stats.max_result_lag, now - float(np.min(batch["model_done_at"])))
            for row in _iter_rows(batch):
                image_id = int(row["image_id"])
                if image_id in seen:
                    logger.warning("dropping a repeated result for %s (Ray retried its task)", row["file_path"])
                    continue
                seen.add(image_id)
                stats.model_seconds += float(row["model_seconds"])
                identity = str(row["model_identity"])
                if identity and identity not in identities:
                    identities.add(identity)
                    weights = _weights_of(identity)
                    if expected_weights is None:
                        expected_weights = weights
                        run_record["model"]["weights_sha256"] = weights
                        atomic_write_json(store.run_json, run_record, durable=options.durable)
                    elif weights != expected_weights:
                        raise AutolabelError(
                            f"a worker loaded different weights ({weights}) than the run's ({expected_weights}); "
                            "check that every node sees the same weight files"
                        )
                ok = row["status"] == STATUS_OK
                panoptic_file = None
                if ok:
                    buffer.pngs.append((image_id, bytes(row["png"])))
                    panoptic_file = f"panoptic/{image_id}.png"
                    segs = json.loads(row["segments_json"])
                    for seg in segs:
                        buffer.segments.append(seg | {"image_id": image_id, "file_path": row["file_path"], "run_id": run_id})
                    counts["segments"] += len(segs)
                else:
                    reasons[str(row["error"]).split(":", 1)[0]] += 1
                    logger.warning("%s: %s", row["file_path"], row["error"])
                counts["ok" if ok else "error"] += 1
                buffer.images.append(
                    {
                        "image_id": image_id,
                        "file_path": str(row["file_path"]),
                        "width": int(row["width"]) if ok or int(row["width"]) > 0 else None,
                        "height": int(row["height"]) if ok or int(row["height"]) > 0 else None,
                        "status": STATUS_OK if ok else STATUS_ERROR,
                        "error": None if ok else str(row["error"]),
                        "num_segments": int(row["num_segments"]),
                        "seconds": float(row["seconds"]),
                        "panoptic_file": panoptic_file,
                        "run_id": run_id,
                    }
                )
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(ok=counts["ok"], errors=counts["error"], segments=counts["segments"], refresh=False)
                if len(buffer) >= options.rows_per_part:
                    commit()
            if buffer and time.monotonic() - last_commit >= options.commit_interval_s:
                commit()
        commit()
    finally:
        if progress is not None:
            progress.close()
        for name, value in saved_context.items():
            setattr(context, name, value)
    return stats


def _iter_rows(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    names = list(batch)
    columns = {name: list(batch[name]) for name in names}
    for i in range(len(columns[names[0]])):
        yield {name: _plain(columns[name][i]) for name in names}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _committed_counts(store: OutputStore) -> tuple[int, int]:
    ok = err = 0
    for _, images, _ in store.iter_committed(images_columns=["status"], segments_columns=["image_id"]):
        statuses = images["status"].to_pylist()
        ok += sum(1 for s in statuses if s == STATUS_OK)
        err += sum(1 for s in statuses if s != STATUS_OK)
    return ok, err


_SEGMENT_META_COLUMNS = ["image_id", "segment_id", "category_id", "category", "isthing", "score", "mask_quality", "area", "bbox"]


def _write_panoptic_json(store: OutputStore, vocabulary: Any, run_record: dict[str, Any], durable: bool) -> dict[str, int]:
    """Assemble ``panoptic.json`` from the committed parts, one part in memory at a time (no masks read)."""

    def images() -> Iterator[dict[str, Any]]:
        for _, table, _ in store.iter_committed(images_columns=["image_id", "file_path", "width", "height", "status"], segments_columns=["image_id"]):
            for row in table.to_pylist():
                if row["status"] == STATUS_OK:
                    yield {"id": row["image_id"], "file_name": row["file_path"], "width": row["width"], "height": row["height"]}

    def annotations() -> Iterator[dict[str, Any]]:
        for _, table, segments in store.iter_committed(images_columns=["image_id", "status"], segments_columns=_SEGMENT_META_COLUMNS):
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
