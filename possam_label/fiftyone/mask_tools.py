"""Mask corrections: merge labels of one image, split a label into its connected parts, undo.

Each is a logged correction (``<field>_corrections``) whose entry carries what undoing it needs:
the labels as they were (``undo.restore``, masks as RLE, every attribute) and the ids it created or
changed (``undo.remove``). :func:`undo_correction` undoes one entry on its own (the latest not yet
undone, by default); :func:`~.corrections.revert_corrections` still restores the loaded labels.
Changed labels get ``review_status="edited"``: a reviewer drew their mask, so exports keep them.
"""

from __future__ import annotations

import datetime as _dt
import logging
from typing import Any, Iterable, Mapping, Optional

import numpy as np
from scipy import ndimage

import fiftyone as fo

from ..io.rle import decode_rle, encode_mask
from .convert import detection_full_mask, label_attr, set_isthing
from .corrections import sync_before_change
from .review_baseline import record_state
from .review_record import (
    EDITED,
    CorrectionResult,
    LabelSelection,
    append_log,
    find_label,
    group_selection,
    image_size,
    load_sample,
    repaint_semantic,
    set_status,
    utc_now,
)
from .dataset import DEFAULT_LABEL_FIELD, ReviewFields, get_categories

logger = logging.getLogger(__name__)

_GEOMETRY = ("id", "label", "bounding_box", "mask", "mask_path", "confidence", "tags", "attributes", "index")


def detection_snapshot(det: fo.Detection) -> dict[str, Any]:
    """Everything of a Detection, restorable by :func:`detection_from_snapshot` (same id)."""
    mask = det.get_mask() if (det.mask is not None or det.mask_path is not None) else None
    extra = {}
    for name in det.field_names:
        if name in _GEOMETRY or name.startswith("_"):
            continue
        value = det.get_field(name)
        if value is not None:
            extra[name] = value
    return {
        "label_id": det.id, "label": det.label, "bounding_box": list(det.bounding_box or []),
        "mask": encode_mask(np.asarray(mask) > 0) if mask is not None else None,
        "confidence": det.confidence, "tags": list(det.tags or []), "attributes": extra,
    }


def detection_from_snapshot(entry: Mapping[str, Any]) -> fo.Detection:
    det = fo.Detection(label=entry["label"], bounding_box=entry["bounding_box"],
                       mask=decode_rle(entry["mask"]) if entry.get("mask") else None,
                       confidence=entry.get("confidence"), tags=list(entry.get("tags") or []), **dict(entry.get("attributes") or {}))
    det.id = entry["label_id"]
    return det


def set_full_mask(det: fo.Detection, full: np.ndarray) -> bool:
    """Store an image-sized mask on a Detection as its tight box and cropped mask (False if empty)."""
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    if rows.size == 0:
        return False
    height, width = full.shape
    crop = full[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    det.mask = crop.copy()
    det.bounding_box = [cols[0] / width, rows[0] / height, crop.shape[1] / width, crop.shape[0] / height]
    det["area"] = int(crop.sum())
    return True


def _one_sample(selected: Iterable[LabelSelection], label_field: str, what: str) -> tuple[str, list[str]]:
    grouped, _ = group_selection(selected, label_field)
    if len(grouped) != 1:
        raise ValueError(f"{what} works on the labels of one image; the selection spans {len(grouped)} images")
    return next(iter(grouped.items()))


def _finish(sample: fo.Sample, fields: ReviewFields, dataset: fo.Dataset, label_field: str) -> None:
    repaint_semantic(sample, fields, get_categories(dataset, label_field))
    record_state(sample, fields)
    sample.save()


def merge_labels(
    dataset: fo.Dataset, selected: Iterable[LabelSelection], label_field: str = DEFAULT_LABEL_FIELD, label: Optional[str] = None
) -> CorrectionResult:
    """Merge the selected labels of one image into one: the union of their masks, under the id,
    class and confidence of the highest-scored one (or the class ``label``, a class of the field)."""
    fields = ReviewFields(label_field)
    sample_id, label_ids = _one_sample(selected, label_field, "merge")
    if len(label_ids) < 2:
        raise ValueError("select at least two labels of the image to merge")
    sample = load_sample(dataset, sample_id)
    categories = get_categories(dataset, label_field)
    categories = sync_before_change(sample, fields, categories)
    dets = [find_label(sample, fields, lid) for lid in label_ids]
    height, width = image_size(sample, fields)
    before = [detection_snapshot(d) for d in dets]
    keeper = max(dets, key=lambda d: d.confidence or 0.0)
    union = np.zeros((height, width), dtype=bool)
    for det in dets:
        union |= detection_full_mask(det, height, width)
    if label is not None:
        if label not in categories:
            raise ValueError(f"{label!r} is not a class of {label_field!r}; relabel to add a new class")
        category = categories.by_name(label)
        if keeper.label != category.name and label_attr(keeper, "original_label") is None:
            keeper["original_label"], keeper["original_category_id"], keeper["original_isthing"] = keeper.label, label_attr(keeper, "category_id"), label_attr(keeper, "isthing")
        keeper.label, keeper["category_id"] = category.name, int(category.id)
        set_isthing(keeper, category.isthing)
    set_full_mask(keeper, union)
    when = utc_now()
    set_status(keeper, EDITED, when)
    gone = {d.id for d in dets if d.id != keeper.id}
    detections = sample[fields.labels]
    detections.detections = [d for d in detections.detections if d.id not in gone]
    append_log(sample, fields, {"action": "merge", "label_id": keeper.id, "merged": sorted(gone), "at": when, "source": "plugin",
                                "undo": {"restore": before, "remove": [keeper.id]}})
    _finish(sample, fields, dataset, label_field)
    return CorrectionResult(action="merge", num_labels=len(dets), num_samples=1, label_ids=[keeper.id])


def split_label(dataset: fo.Dataset, selected: Iterable[LabelSelection], label_field: str = DEFAULT_LABEL_FIELD) -> CorrectionResult:
    """Split each selected label into its connected parts (8-connected): the largest part keeps
    the label's id, the others become new labels of the same class and confidence."""
    fields = ReviewFields(label_field)
    sample_id, label_ids = _one_sample(selected, label_field, "split")
    sample = load_sample(dataset, sample_id)
    categories = get_categories(dataset, label_field)
    sync_before_change(sample, fields, categories)
    height, width = image_size(sample, fields)
    when = utc_now()
    result = CorrectionResult(action="split", num_samples=1)
    detections = sample[fields.labels]
    next_id = 1 + max([int(label_attr(d, "segment_id", 0)) for d in detections.detections] +
                      [int(label_attr(d, "segment_id", 0)) for d in (sample[fields.deleted].detections if sample.has_field(fields.deleted) and sample[fields.deleted] else [])])
    for label_id in label_ids:
        det = find_label(sample, fields, label_id)
        full = detection_full_mask(det, height, width)
        parts, count = ndimage.label(full, structure=np.ones((3, 3), dtype=bool))
        if count < 2:
            logger.info("split: label %s is one connected part; left as is", label_id)
            continue
        before = detection_snapshot(det)
        sizes = np.bincount(parts.ravel())[1:]
        order = np.argsort(-sizes) + 1
        set_full_mask(det, parts == order[0])
        set_status(det, EDITED, when)
        new_ids = []
        for part in order[1:]:
            piece = detection_from_snapshot({**detection_snapshot(det), "label_id": str(fo.Detection().id)})
            set_full_mask(piece, parts == part)
            piece["segment_id"] = next_id
            next_id += 1
            detections.detections = list(detections.detections) + [piece]
            new_ids.append(piece.id)
        append_log(sample, fields, {"action": "split", "label_id": det.id, "parts": [det.id] + new_ids, "at": when, "source": "plugin",
                                    "undo": {"restore": [before], "remove": [det.id] + new_ids}})
        result.num_labels += 1
        result.label_ids += [det.id] + new_ids
    if not result.num_labels:
        raise ValueError("none of the selected labels has more than one connected part")
    _finish(sample, fields, dataset, label_field)
    return result


def undo_correction(
    dataset: fo.Dataset, sample_id: str, label_field: str = DEFAULT_LABEL_FIELD, index: Optional[int] = None
) -> dict[str, Any]:
    """Undo one logged mask correction of a sample (``index`` into its log; default: the latest
    undoable entry not yet undone). Returns the undone entry."""
    fields = ReviewFields(label_field)
    sample = load_sample(dataset, str(sample_id))
    sync_before_change(sample, fields, get_categories(dataset, label_field))
    log = list(sample[fields.corrections] or []) if sample.has_field(fields.corrections) else []
    candidates = [i for i, e in enumerate(log) if e.get("undo") and not e.get("undone_at")]
    if index is None:
        if not candidates:
            raise ValueError(f"sample {sample_id}: no correction left to undo")
        index = candidates[-1]
    if index not in candidates:
        raise ValueError(f"sample {sample_id}: log entry {index} cannot be undone (not a mask correction, or undone already)")
    entry = dict(log[index])
    remove = set(entry["undo"]["remove"])
    detections = sample[fields.labels]
    kept = [d for d in detections.detections if d.id not in remove]
    restored = [detection_from_snapshot(e) for e in entry["undo"]["restore"]]
    detections.detections = sorted(kept + restored, key=lambda d: label_attr(d, "segment_id", 0))
    when = utc_now()
    entry["undone_at"] = when
    log[index] = entry
    sample[fields.corrections] = log
    append_log(sample, fields, {"action": "undo", "undone": index, "undone_action": entry["action"], "at": when, "source": "plugin"})
    _finish(sample, fields, dataset, label_field)
    return entry
