"""Write one committed part of an autolabel output into a FiftyOne dataset with bulk MongoDB writes.

This is the inner loop of :func:`possam_label.fiftyone.load.load_autolabel_output`. It does not
import FiftyOne (``import fiftyone`` costs seconds per process), so that worker processes start
fast and several can write in parallel, each with its own MongoDB connection. It builds the
sample and label documents FiftyOne itself stores (the layout of ``Sample.to_mongo_dict`` and
``Label.to_dict``; ``tests/test_fiftyone_load_fast.py`` reads them back through FiftyOne), and
writes a chunk of images with one ``find``, one ``insert_many`` and one ``bulk_write``.

Masks are kept in one of two ways (:data:`MASK_STORAGES`):

* ``"database"``: in the sample document, serialized as FiftyOne serializes ``Detection.mask``
  (``np.save`` bytes, zlib-compressed); the dataset is self-contained;
* ``"files"``: one PNG per segment (values 0/1, as ``Detection.export_mask`` writes) and one
  semantic PNG per image under ``masks_dir``, referenced by ``Detection.mask_path`` and
  ``Segmentation.mask_path``; the database stays small and loading is faster.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import logging
import os
import random
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from bson import Binary, ObjectId
from PIL import Image

from ..io.rle import encode_mask
from .autolabel_output import AutolabelOutputError, ImageRecord, decode_segment_rows, iter_part_rows
from .drawing import thing_attributes

logger = logging.getLogger(__name__)

MASK_STORAGES = ("database", "files")
# Detection attributes a review baseline entry (``<field>_original``) keeps besides label, box, mask,
# confidence and tags (review_baseline.baseline_entry reads them from here).
BASELINE_ATTRIBUTES = ("segment_id", "category_id", "isthing", "mask_quality", "in_vocab_prob", "out_vocab_prob", "area", "run_id")


@dataclass(frozen=True)
class LoadSelection:
    """Which images of an output to load; with no criterion set, every image.

    Args:
        review_below: load the images that have at least one segment scored below this
            confidence (what a reviewer must look at); images the run could not label are not
            loaded by this criterion.
        audit_fraction: also load this fraction of all images, drawn at random (an audit of
            what the model is confident about). The draw hashes ``(audit_seed, file path)``, so
            it is the same in every worker and every reload.
        audit_seed: seed of that draw.
    An image is loaded when it meets either criterion that is set.
    """

    review_below: Optional[float] = None
    audit_fraction: Optional[float] = None
    audit_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("review_below", "audit_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    @property
    def active(self) -> bool:
        return self.review_below is not None or self.audit_fraction is not None

    def audited(self, file_path: str) -> bool:
        if not self.audit_fraction:
            return False
        digest = hashlib.blake2b(f"{self.audit_seed}:{file_path}".encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < float(self.audit_fraction)

    def selects(self, record: ImageRecord, scores: Sequence[float]) -> bool:
        if not self.active:
            return True
        if self.review_below is not None and any(float(s) < float(self.review_below) for s in scores):
            return True
        return self.audited(record.file_path)


@dataclass(frozen=True)
class PartJob:
    """Everything a worker needs to write one part (picklable)."""

    images_path: str
    segments_path: str
    part: str
    label_field: str
    db_uri: str
    db_name: str
    collection: str
    dataset_id: str
    remap: Mapping[int, int]  # run category id -> dataset category id
    names: Mapping[int, str]  # dataset category id -> class name
    run_id: Optional[str]
    mask_storage: str = "database"
    masks_dir: Optional[str] = None  # "files": where this dataset's mask PNGs go
    selection: LoadSelection = LoadSelection()
    add_missing: bool = True
    replace_reviewed: bool = False
    chunk_size: int = 256


@dataclass
class PartStats:
    """What writing one part did (summed by the loader)."""

    part: str
    num_images: int = 0
    num_samples_added: int = 0
    num_labeled: int = 0
    num_segments: int = 0
    num_errors: int = 0
    num_skipped_reviewed: int = 0
    num_skipped_missing: int = 0
    num_not_selected: int = 0
    error: Optional[str] = None  # the part could not be read (the other parts are loaded)
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ documents
def serialize_mask(mask: np.ndarray) -> Binary:
    """A mask as FiftyOne stores ``Detection.mask`` / ``Segmentation.mask`` (fiftyone.core.utils.
    serialize_numpy_array: ``np.save`` bytes, zlib-compressed). zlib level 1 instead of FiftyOne's
    default 6: any level decompresses the same, and on 0/1 masks level 1 costs about a quarter of
    the CPU for a slightly larger blob."""
    with io.BytesIO() as buffer:
        np.save(buffer, mask, allow_pickle=False)
        return Binary(zlib.compress(buffer.getvalue(), 1))


def _write_png(mask: np.ndarray, path: Path) -> str:
    # Fast zlib level: mask PNGs are small and written once per load.
    Image.fromarray(mask.astype(np.uint8, copy=False)).save(path, format="PNG", compress_level=1)
    return str(path)


def _semantic_dtype(max_category_id: int) -> np.dtype:
    return np.dtype(np.uint8) if max_category_id < 256 else np.dtype(np.uint16)


@dataclass
class ImageDocs:
    """The label fields of one image, as MongoDB values."""

    detections: Optional[dict[str, Any]]
    semantic: Optional[dict[str, Any]]
    baseline: Optional[list[dict[str, Any]]]
    num_segments: int
    run_id: Optional[str]


def image_documents(
    record: ImageRecord, rows: Sequence[Mapping[str, Any]], job: PartJob, where: str, max_category_id: int, part_dir: Optional[Path]
) -> ImageDocs:
    """Detections (one per segment: tight pixel box normalised to [0, 1], the mask cropped to it),
    the semantic category map and the review baseline of one labeled image.

    The same conversion as :func:`possam_label.fiftyone.convert.prediction_to_labels`, writing
    documents instead of FiftyOne objects. The rows are checked and each RLE decoded once, cropped
    to its box, by :func:`~possam_label.fiftyone.autolabel_output.decode_segment_rows` (the checks of
    ``segments_to_prediction``, without painting a full-size id map); the semantic map is painted
    crop by crop.
    """
    height, width = int(record.height), int(record.width)  # type: ignore[arg-type]
    run_ids = {r["run_id"] for r in rows}
    run_id = run_ids.pop() if len(run_ids) == 1 else job.run_id
    semantic_map = np.zeros((height, width), dtype=_semantic_dtype(max_category_id))
    detections: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    for seg, (x, y, w, h), crop in decode_segment_rows(rows, height, width, where):
        if seg["category_id"] not in job.remap:
            raise AutolabelOutputError(f"{where}: segment {seg['segment_id']} has category id {seg['category_id']} ({seg['category']!r}) that is not in the run's vocabulary")
        category_id = int(job.remap[seg["category_id"]])
        if crop is None:
            logger.warning("%s: segment %d (%s) has no pixels; skipped", where, seg["segment_id"], seg["category"])
            continue
        semantic_map[y : y + h, x : x + w][crop] = category_id
        box = [x / width, y / height, w / width, h / height]
        label = job.names[category_id]
        attributes = {
            "segment_id": int(seg["segment_id"]),
            "category_id": category_id,
            **thing_attributes(bool(seg["isthing"])),
            "mask_quality": float(seg["mask_quality"]),
            "in_vocab_prob": float(seg["in_vocab_prob"]),
            "out_vocab_prob": float(seg["out_vocab_prob"]),
            "area": int(np.count_nonzero(crop)),
            "run_id": run_id,
        }
        label_id = ObjectId()
        doc: dict[str, Any] = {"_id": label_id, "_cls": "Detection", "attributes": {}, "tags": [], "label": label, "bounding_box": box}
        if part_dir is not None:
            doc["mask_path"] = _write_png(crop, part_dir / f"{record.image_id}_{int(seg['segment_id'])}.png")
        else:
            doc["mask"] = serialize_mask(crop)
        doc["confidence"] = float(seg["score"])
        doc.update(attributes)
        detections.append(doc)
        # review_baseline.baseline_entry of the Detection as FiftyOne would read it back.
        baseline.append({
            "label_id": str(label_id),
            "label": label,
            "bounding_box": [float(v) for v in box],
            "mask": encode_mask(crop),
            "confidence": float(seg["score"]),
            "tags": [],
            "attributes": {k: attributes[k] for k in BASELINE_ATTRIBUTES if attributes.get(k) is not None},
        })
    semantic: dict[str, Any] = {"_id": ObjectId(), "_cls": "Segmentation", "tags": []}
    if part_dir is not None:
        semantic["mask_path"] = _write_png(semantic_map, part_dir / f"{record.image_id}_semantic.png")
    else:
        semantic["mask"] = serialize_mask(semantic_map)
    return ImageDocs({"_cls": "Detections", "detections": detections}, semantic, baseline, len(detections), run_id)


# ------------------------------------------------------------------------------ writing
def _field_values(job: PartJob, record: ImageRecord, docs: Optional[ImageDocs], now: _dt.datetime) -> dict[str, Any]:
    """The ``$set`` of a (re)loaded sample: labels as predicted, review state cleared."""
    field = job.label_field
    return {
        field: docs.detections if docs else None,
        f"{field}_semantic": docs.semantic if docs else None,
        f"{field}_deleted": None,
        f"{field}_corrections": None,
        f"{field}_original": docs.baseline if docs else None,
        f"{field}_synced": None,
        f"{field}_reviewed": False,
        f"{field}_reviewed_at": None,
        f"{field}_loaded_at": now,  # == last_modified_at until anything else writes the sample
        f"{field}_run_id": (docs.run_id if docs is not None else None) or job.run_id,
        f"{field}_image_id": int(record.image_id),
        f"{field}_error": record.error if record.status != "ok" else None,
        "last_modified_at": now,
    }


def _new_sample(job: PartJob, record: ImageRecord, values: Mapping[str, Any], now: _dt.datetime) -> dict[str, Any]:
    """A sample document as ``Dataset.add_samples`` inserts it."""
    metadata = None
    if record.width and record.height:
        metadata = {"_cls": "ImageMetadata", "width": int(record.width), "height": int(record.height)}
    doc = {
        "_id": ObjectId(),
        "filepath": record.file_path,
        "tags": [],
        "metadata": metadata,
        "created_at": now,
        "_media_type": "image",
        "_rand": random.random() * 0.001 + 0.999,  # fiftyone.core.odm.sample._generate_rand
        "_dataset_id": ObjectId(job.dataset_id),
    }
    doc.update(values)
    return doc


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_part(job: PartJob, collection: Any = None) -> PartStats:
    """Write the images of one part into the dataset's sample collection.

    Samples are matched by ``filepath``: a missing one is inserted (``add_missing``), an existing
    one gets its label fields replaced unless a reviewer marked it reviewed (``replace_reviewed``).
    ``collection`` is the pymongo collection (default: a new connection to ``job.db_uri``, as in
    a worker process). A part that cannot be read is reported in ``PartStats.error``; the images
    written before the bad row stay written.
    """
    from pymongo import MongoClient, UpdateOne

    client = None
    if collection is None:
        client = MongoClient(job.db_uri, appname="possam-label-loader")
        collection = client[job.db_name][job.collection]
    stats = PartStats(part=job.part)
    reviewed_field = f"{job.label_field}_reviewed"
    part_dir = None
    if job.mask_storage == "files":
        if not job.masks_dir:
            raise ValueError("mask_storage 'files' needs masks_dir")
        part_dir = Path(job.masks_dir) / f"part-{job.part}"
        part_dir.mkdir(parents=True, exist_ok=True)
    elif job.mask_storage != "database":
        raise ValueError(f"mask_storage must be one of {MASK_STORAGES}, got {job.mask_storage!r}")
    max_category_id = max(job.names, default=0)
    segments_path = Path(job.segments_path)
    try:
        for chunk in _chunks(iter_part_rows(Path(job.images_path), segments_path), job.chunk_size):
            stats.num_images += len(chunk)
            for record, _ in chunk:
                if not os.path.isabs(record.file_path):
                    raise AutolabelOutputError(f"{job.images_path}: image {record.image_id}: file_path {record.file_path!r} is not absolute")
            chosen = [(record, rows) for record, rows in chunk if job.selection.selects(record, [r["score"] for r in rows])]
            stats.num_not_selected += len(chunk) - len(chosen)
            if not chosen:
                continue
            existing = {
                doc["filepath"]: doc
                for doc in collection.find({"filepath": {"$in": [record.file_path for record, _ in chosen]}}, {"_id": 1, "filepath": 1, reviewed_field: 1})
            }
            now = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
            inserts: list[dict[str, Any]] = []
            updates: list[Any] = []
            for record, rows in chosen:
                found = existing.get(record.file_path)
                if found is None and not job.add_missing:
                    stats.num_skipped_missing += 1
                    continue
                if found is not None and found.get(reviewed_field) is True and not job.replace_reviewed:
                    stats.num_skipped_reviewed += 1
                    continue
                docs = None
                if record.status == "ok":
                    where = f"{segments_path} (image {record.image_id}, {record.file_path})"
                    docs = image_documents(record, rows, job, where, max_category_id, part_dir)
                    stats.num_segments += docs.num_segments
                else:
                    stats.num_errors += 1
                values = _field_values(job, record, docs, now)
                if found is None:
                    inserts.append(_new_sample(job, record, values, now))
                    existing[record.file_path] = {"_id": inserts[-1]["_id"]}  # a path listed twice is updated, not inserted twice
                else:
                    updates.append(UpdateOne({"_id": found["_id"]}, {"$set": values}))
                stats.num_labeled += 1
            if inserts:
                collection.insert_many(inserts, ordered=False)
                stats.num_samples_added += len(inserts)
            if updates:
                collection.bulk_write(updates, ordered=False)
    except AutolabelOutputError as err:
        stats.error = str(err)
        logger.error("%s", err)
    finally:
        if client is not None:
            client.close()
    return stats
