"""SAM in the review: refine a label's mask from its box; segment and classify boxes a reviewer drew.

* :func:`refine_labels` re-segments each selected label with the promptable SAM prompted by its
  box and keeps its class (see :func:`possam_label.prompting.refine_mask` for how SAM's mask and
  the label's own mask are combined: measured on synthetic scenes, docs/review.md);
* :func:`segment_new_boxes` gives each Detection of a sample that has a box but no mask (what the
  App's Annotate tab makes when a reviewer draws a box) SAM's mask for that box, and the class and
  confidence PosSAM gives that mask (:meth:`possam_label.prompting.PromptedSegmenter.classify_masks`).

Both are logged corrections like :mod:`.mask_tools`' merge and split: one ``<field>_corrections``
entry per call carrying ``undo`` (the labels as they were, the ids it changed), so
:func:`.mask_tools.undo_correction` undoes it on its own and :func:`.corrections.revert_corrections`
restores the loaded labels. Changed labels get ``review_status`` "edited" (refined) or "added"
(drawn boxes), which exports and training count as reviewer-verified. A changed mask keeps the
pixels it now covers and its neighbours lose them, as an edit in the App's editor does, except a
neighbour that would lose every pixel: that one keeps them (a box drawn around a small thing must
not delete it). ``<field>_semantic`` is repainted.

The models come from :func:`possam_label.prompting.prompted_segmenter` (built once per process) on
the config of the run the labels were loaded from (its ``run.json``), else the shipped default.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

import fiftyone as fo

from ..io.images import load_image_rgb
from ..prompting import PromptedSegmenter, mask_iou, prompted_segmenter, refine_mask
from .convert import detection_full_mask, label_attr, set_isthing
from .corrections import sync_before_change
from .dataset import DEFAULT_LABEL_FIELD, ReviewFields, get_categories, loaded_runs
from .mask_tools import detection_snapshot, set_full_mask
from .review_baseline import record_state
from .review_record import (
    ADDED,
    EDITED,
    REJECTED,
    CorrectionResult,
    LabelSelection,
    append_log,
    find_label,
    group_selection,
    image_size,
    label_snapshot,
    load_sample,
    repaint_semantic,
    set_status,
    utc_now,
)

logger = logging.getLogger(__name__)


def run_model(dataset: fo.Dataset, label_field: str = DEFAULT_LABEL_FIELD) -> tuple[Optional[str], Optional[str]]:
    """(config path, heads checkpoint) of the latest run loaded into ``label_field`` (its run.json),
    or (None, None) for the shipped default when no run, run.json or config file is found."""
    for run in reversed(loaded_runs(dataset, label_field)):
        run_json = Path(run.get("output_dir") or "") / "run.json"
        try:
            model = json.loads(run_json.read_text(encoding="utf-8")).get("model") or {}
        except (OSError, ValueError) as err:
            logger.warning("%s: cannot read the run's model (%s); using the shipped default config", run_json, err)
            continue
        config = model.get("config_path")
        if config and Path(config).is_file():
            return str(config), model.get("checkpoint")
        if not config:
            continue  # a run.json that records no config (written by a test fixture or an old run)
        logger.warning("%s: its config %r is not a file here; using the shipped default config", run_json, config)
    return None, None


def segmenter_for(dataset: fo.Dataset, label_field: str = DEFAULT_LABEL_FIELD) -> PromptedSegmenter:
    """The process's cached models for the labels of ``label_field``."""
    config, checkpoint = run_model(dataset, label_field)
    return prompted_segmenter(config, checkpoint)


def _read_image(sample: fo.Sample, height: int, width: int) -> np.ndarray:
    """The sample's image as the autolabel job decoded it (EXIF orientation applied), which must
    have its labels' size; an unreadable file raises ImageDecodeError (a ValueError naming it)."""
    image = load_image_rgb(sample.filepath)
    if image.shape[:2] != (height, width):
        raise ValueError(f"{sample.filepath}: image is {image.shape[1]}x{image.shape[0]}, its labels {width}x{height}")
    return image


def _box_pixels(det: fo.Detection, height: int, width: int) -> list[float]:
    """``x0, y0, x1, y1`` in image pixels of a Detection's box."""
    bx, by, bw, bh = det.bounding_box
    return [bx * width, by * height, (bx + bw) * width, (by + bh) * height]


def _claim(
    sample: fo.Sample, fields: ReviewFields, changed: dict[str, np.ndarray], height: int, width: int
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], list[str]]:
    """Give each changed label (id -> new full mask) its pixels; neighbours lose them unless they
    would lose all. Returns the masks as given, and the snapshots and ids of the trimmed neighbours."""
    claimed = np.zeros((height, width), dtype=bool)
    for label_id, mask in changed.items():  # where two changed masks meet, the first keeps the pixels
        changed[label_id] = mask & ~claimed
        claimed |= changed[label_id]
    trims: dict[str, np.ndarray] = {}
    for det in sample[fields.labels].detections:
        if det.id in changed or label_attr(det, "review_status") == REJECTED:
            continue
        own = detection_full_mask(det, height, width)
        lost = own & claimed
        if not lost.any():
            continue
        if lost.sum() == own.sum():
            for label_id in changed:  # a neighbour inside the new mask keeps its pixels
                changed[label_id] = changed[label_id] & ~own
            claimed &= ~own
            continue
        trims[det.id] = own
    snapshots, ids = [], []
    for det in sample[fields.labels].detections:
        if det.id in trims:
            remaining = trims[det.id] & ~claimed
            snapshots.append(detection_snapshot(det))
            ids.append(det.id)
            set_full_mask(det, remaining)
    return changed, snapshots, ids


def _finish(sample: fo.Sample, fields: ReviewFields, dataset: fo.Dataset, label_field: str) -> None:
    repaint_semantic(sample, fields, get_categories(dataset, label_field))
    record_state(sample, fields)
    sample.save()


def refine_labels(
    dataset: fo.Dataset,
    selected: Iterable[LabelSelection],
    label_field: str = DEFAULT_LABEL_FIELD,
    segmenter: Optional[PromptedSegmenter] = None,
) -> CorrectionResult:
    """Re-segment the selected labels of one image with SAM prompted by each label's box; each
    keeps its id, class and confidence. One logged, undoable correction."""
    fields = ReviewFields(label_field)
    grouped, other = group_selection(selected, label_field)
    if len(grouped) != 1:
        raise ValueError(f"refine works on the labels of one image; the selection spans {len(grouped)} images")
    sample_id, label_ids = next(iter(grouped.items()))
    sample = load_sample(dataset, sample_id)
    sync_before_change(sample, fields, get_categories(dataset, label_field))
    dets = [find_label(sample, fields, label_id) for label_id in label_ids]
    segmenter = segmenter or segmenter_for(dataset, label_field)
    height, width = image_size(sample, fields)
    image = _read_image(sample, height, width)
    sam_masks, _ = segmenter.segment_boxes(image, [_box_pixels(d, height, width) for d in dets])
    before = {d.id: detection_full_mask(d, height, width) for d in dets}
    changed = {}
    for det, sam_mask in zip(dets, sam_masks):  # no label grows into another selected label
        others = np.zeros((height, width), dtype=bool)
        for other_id, other_mask in before.items():
            if other_id != det.id:
                others |= other_mask
        changed[det.id] = refine_mask(before[det.id], sam_mask) & ~others
    empty = [label_id for label_id, m in changed.items() if not m.any()]
    if empty:
        raise ValueError(f"SAM found nothing in the box of label(s) {', '.join(empty)}; nothing changed")
    snapshots = [detection_snapshot(d) for d in dets]
    changed, neighbour_snapshots, neighbour_ids = _claim(sample, fields, changed, height, width)
    when = utc_now()
    for det in dets:
        set_full_mask(det, changed[det.id])
        set_status(det, EDITED, when)
    append_log(sample, fields, {
        "action": "refine", "label_ids": [d.id for d in dets], "trimmed": neighbour_ids,
        "iou_with_before": [round(mask_iou(before[d.id], changed[d.id]), 4) for d in dets],
        "at": when, "source": "plugin",
        "undo": {"restore": snapshots + neighbour_snapshots, "remove": [d.id for d in dets] + neighbour_ids},
    })
    _finish(sample, fields, dataset, label_field)
    logger.info("refine: %d label(s) of sample %s (%d neighbour(s) trimmed)", len(dets), sample_id, len(neighbour_ids))
    return CorrectionResult(action="refine", num_labels=len(dets), num_samples=1, skipped_other_fields=other,
                            label_ids=[d.id for d in dets])


def boxes_without_masks(sample: fo.Sample, label_field: str = DEFAULT_LABEL_FIELD) -> list[fo.Detection]:
    """The sample's Detections with a box but no mask (drawn in the App's Annotate tab)."""
    detections = sample[label_field] if sample.has_field(label_field) else None
    return [d for d in (detections.detections if detections is not None else [])
            if d.bounding_box and d.mask is None and d.mask_path is None]


def segment_new_boxes(
    dataset: fo.Dataset,
    sample_id: str,
    label_field: str = DEFAULT_LABEL_FIELD,
    segmenter: Optional[PromptedSegmenter] = None,
) -> CorrectionResult:
    """Give every box without a mask of the sample SAM's mask for it, and the class and confidence
    PosSAM gives that mask (a class the reviewer chose is replaced; the log keeps it). One logged,
    undoable correction."""
    fields = ReviewFields(label_field)
    sample = load_sample(dataset, str(sample_id))
    categories = sync_before_change(sample, fields, get_categories(dataset, label_field))
    boxes = boxes_without_masks(sample, label_field)
    if not boxes:
        raise ValueError(f"sample {sample_id}: no box without a mask in {label_field!r}; draw a box in the Annotate tab first")
    segmenter = segmenter or segmenter_for(dataset, label_field)
    height, width = image_size(sample, fields)
    image = _read_image(sample, height, width)
    sam_masks, _ = segmenter.segment_boxes(image, [_box_pixels(d, height, width) for d in boxes])
    found = [(d, m) for d, m in zip(boxes, sam_masks) if m.any()]
    for det, mask in zip(boxes, sam_masks):
        if not mask.any():
            logger.warning("segment boxes: SAM found nothing in box %s of sample %s; left as is", det.id, sample_id)
    if not found:
        raise ValueError(f"sample {sample_id}: SAM found nothing in the drawn box(es); nothing changed")
    classes = segmenter.classify_masks(image, np.stack([m for _, m in found]), categories)
    snapshots = [detection_snapshot(d) for d, _ in found]
    befores = [label_snapshot(d) for d, _ in found]
    changed, neighbour_snapshots, neighbour_ids = _claim(sample, fields, {d.id: m for d, m in found}, height, width)
    next_segment = 1 + max([0] + [int(label_attr(d, "segment_id", 0) or 0) for name in (fields.labels, fields.deleted)
                                  for d in ((sample[name].detections if sample.has_field(name) and sample[name] else []))])
    when = utc_now()
    for (det, _), mask_class in zip(found, classes):
        category = categories.by_name(categories.names[mask_class.index])
        set_full_mask(det, changed[det.id])
        det.label, det.confidence = category.name, float(mask_class.confidence)
        det["category_id"] = int(category.id)
        set_isthing(det, category.isthing)
        if label_attr(det, "segment_id") is None:
            det["segment_id"] = next_segment
            next_segment += 1
        set_status(det, ADDED, when)
    append_log(sample, fields, {
        "action": "segment_boxes", "label_ids": [d.id for d, _ in found], "trimmed": neighbour_ids,
        "before": befores, "after": [label_snapshot(d) for d, _ in found],
        "confidence": [float(c.confidence) for c in classes], "at": when, "source": "plugin",
        "undo": {"restore": snapshots + neighbour_snapshots, "remove": [d.id for d, _ in found] + neighbour_ids},
    })
    _finish(sample, fields, dataset, label_field)
    logger.info("segment boxes: %d box(es) of sample %s", len(found), sample_id)
    return CorrectionResult(action="segment_boxes", num_labels=len(found), num_samples=1, label_ids=[d.id for d, _ in found])
