"""PanopticPrediction <-> FiftyOne labels: the one conversion shared by the loader and the Model.

A panoptic result becomes

* an ``fo.Detections`` with one ``fo.Detection`` per segment (things and stuff): the box is the
  segment's tight pixel box normalised to [0, 1], the mask is the segment cropped to that box
  (as ``Detection.from_mask`` does), ``label`` the class, ``confidence`` the MASE score, and the
  attributes ``segment_id``, ``category_id``, ``isthing``, ``mask_quality``, ``in_vocab_prob``,
  ``out_vocab_prob``, ``area``;
* optionally an ``fo.Segmentation`` holding the (H, W) category-id map (0 = void) for a semantic view.

The box is stored from integer pixel edges, so :func:`detection_mask_placement` recovers the exact
pixels (``round(x * W)``), and the export reproduces the loaded masks bit for bit.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Optional

import numpy as np
from PIL import Image

import fiftyone as fo

from ..panoptic import areas_and_boxes, restrict, score_passes
from ..types import PanopticPrediction, SegmentInfo
from .drawing import MASK_ONLY_ATTRIBUTE, thing_attributes

logger = logging.getLogger(__name__)

# Detection attributes written from SegmentInfo (besides label/confidence/mask/bounding_box).
SEGMENT_ATTRIBUTES = ("segment_id", "category_id", "isthing", "mask_quality", "in_vocab_prob", "out_vocab_prob", "area")


def set_isthing(det: fo.Detection, isthing: bool) -> None:
    """Set a Detection's ``isthing`` and its drawing hint together (see :mod:`.drawing`)."""
    attributes = thing_attributes(bool(isthing))
    attributes.setdefault(MASK_ONLY_ATTRIBUTE, None)  # a stuff label relabeled as a thing gets its box back
    for key, value in attributes.items():
        det[key] = value


def semantic_dtype(max_category_id: int) -> np.dtype:
    """uint8 when every category id fits, else uint16 (FiftyOne and PNG support both)."""
    if max_category_id < 256:
        return np.dtype(np.uint8)
    if max_category_id < 65536:
        return np.dtype(np.uint16)
    raise ValueError(f"category id {max_category_id} does not fit a 16-bit semantic mask")


def category_map(prediction: PanopticPrediction) -> np.ndarray:
    """(H, W) category ids of a panoptic prediction (0 where void)."""
    max_id = max((s.category_id for s in prediction.segments), default=0)
    max_segment = max((s.id for s in prediction.segments), default=0)
    lut = np.zeros(max(int(prediction.panoptic_map.max(initial=0)), max_segment) + 1, dtype=np.int64)
    for s in prediction.segments:
        if s.category_id <= 0:
            raise ValueError(f"segment {s.id}: category id {s.category_id} collides with void (0) in a semantic mask")
        lut[s.id] = s.category_id
    return lut[prediction.panoptic_map].astype(semantic_dtype(max_id))


def prediction_to_labels(
    prediction: PanopticPrediction,
    attributes: Optional[Mapping[str, Any]] = None,
    with_semantic: bool = True,
    min_score: Optional[float] = None,
) -> tuple[fo.Detections, Optional[fo.Segmentation]]:
    """One image's panoptic result -> (``fo.Detections``, ``fo.Segmentation`` or None).

    Args:
        prediction: panoptic map (H, W) int32 plus segments.
        attributes: extra attributes set on every Detection (e.g. ``{"run_id": ...}``).
        with_semantic: also build the category-map Segmentation.
        min_score: drop segments scored below this (their pixels become void in the
            semantic map too).
    Segments whose id is absent from the map (zero area) are skipped with a warning.
    """
    height, width = prediction.height, prediction.width
    id_map = prediction.panoptic_map
    passes = score_passes(np.array([s.score for s in prediction.segments], dtype=np.float64), min_score)
    scored = [seg for seg, ok in zip(prediction.segments, passes) if ok]
    areas, boxes = areas_and_boxes(id_map, [seg.id for seg in scored])
    detections = []
    kept: list[SegmentInfo] = []
    for seg, area, box in zip(scored, areas, boxes):
        if box is None:
            logger.warning("segment %d (%s) has no pixels in the panoptic map; skipped", seg.id, seg.category)
            continue
        x, y, w, h = (int(v) for v in box)
        crop = id_map[y : y + h, x : x + w] == seg.id
        detection = fo.Detection(
            label=seg.category,
            bounding_box=[x / width, y / height, w / width, h / height],
            mask=crop,
            confidence=float(seg.score),
            segment_id=int(seg.id),
            category_id=int(seg.category_id),
            **thing_attributes(bool(seg.isthing)),
            mask_quality=float(seg.mask_quality),
            in_vocab_prob=float(seg.in_vocab_prob),
            out_vocab_prob=float(seg.out_vocab_prob),
            area=area,
        )
        for key, value in (attributes or {}).items():
            detection[key] = value
        detections.append(detection)
        kept.append(seg)
    semantic = None
    if with_semantic:
        kept_prediction = prediction if len(kept) == len(prediction.segments) else restrict(prediction, [s.id for s in kept])
        semantic = fo.Segmentation(mask=category_map(kept_prediction))
    return fo.Detections(detections=detections), semantic


def detection_full_mask(detection: fo.Detection, height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of a Detection in image pixels (all False without a mask)."""
    full = np.zeros((height, width), dtype=bool)
    placement = detection_mask_placement(detection, height, width)
    if placement is not None:
        x0, y0, crop = placement
        full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return full


def detection_mask_placement(detection: fo.Detection, height: int, width: int) -> Optional[tuple[int, int, np.ndarray]]:
    """(x0, y0, mask) of a Detection in image pixels: its mask resized to its box and clipped.

    The box edges are ``round(x * W)`` etc. A mask whose shape already equals the box size (every
    mask this package writes) is used as is; one edited to another size is resized with nearest
    neighbours, as the App draws it. Returns None for a Detection without a mask or with an
    empty box.
    """
    mask = detection.get_mask() if (detection.mask is not None or detection.mask_path is not None) else None
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    bx, by, bw, bh = detection.bounding_box
    x0, y0 = int(round(bx * width)), int(round(by * height))
    x1, y1 = int(round((bx + bw) * width)), int(round((by + bh) * height))
    box_w, box_h = x1 - x0, y1 - y0
    if box_w <= 0 or box_h <= 0:
        return None
    mask = mask > 0
    if mask.shape != (box_h, box_w):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((box_w, box_h), Image.Resampling.NEAREST)) > 0
    # Clip to the image (a box dragged past the border in the App).
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, width), min(y1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    return cx0, cy0, mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def detections_to_prediction(
    detections: Iterable[fo.Detection], height: int, width: int, categories: Any = None
) -> tuple[PanopticPrediction, list[fo.Detection]]:
    """Paint Detections back into a panoptic id map (the inverse of :func:`prediction_to_labels`).

    Args:
        detections: the Detections to paint, in priority order (earlier ones win contested
            pixels, which only exist if masks were edited to overlap).
        height, width: the image size.
        categories: the field's class table (a :class:`~possam_label.vocab.Vocabulary`); when given,
            ``category_id``/``isthing`` come from the class named by ``label`` (so a relabel needs
            no other bookkeeping), else from the Detection's attributes.
    Returns:
        The prediction (segment ids: the Detection's ``segment_id`` when free, else the next free
        id; area and bbox recomputed from the painted pixels) and, aligned with its segments, the
        Detection each segment came from. Detections without a mask, or left with no pixel, are
        skipped with a warning.
    """
    panoptic_map = np.zeros((height, width), dtype=np.int32)
    detections = list(detections)
    used_ids = {int(d["segment_id"]) for d in detections if _has(d, "segment_id") and int(d["segment_id"]) > 0}
    next_id = max(used_ids, default=0) + 1
    taken_ids: set[int] = set()
    pending: list[tuple[int, fo.Detection]] = []
    for det in detections:
        placement = detection_mask_placement(det, height, width)
        if placement is None:
            logger.warning("detection %s (%s) has no usable mask; skipped", det.id, det.label)
            continue
        x0, y0, mask = placement
        seg_id = int(det["segment_id"]) if _has(det, "segment_id") else 0
        if seg_id <= 0 or seg_id in taken_ids:
            seg_id = next_id
            next_id += 1
        taken_ids.add(seg_id)
        window = panoptic_map[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        window[mask & (window == 0)] = seg_id
        pending.append((seg_id, det))
    areas, boxes = areas_and_boxes(panoptic_map, [seg_id for seg_id, _ in pending])
    segments: list[SegmentInfo] = []
    sources: list[fo.Detection] = []
    for (seg_id, det), area, box in zip(pending, areas, boxes):
        if box is None:
            logger.warning("detection %s (%s) lost all its pixels to other masks; skipped", det.id, det.label)
            continue
        if categories is not None:
            category = categories.by_name(det.label)
            category_id, isthing = category.id, category.isthing
        else:
            category_id = int(det["category_id"]) if _has(det, "category_id") else 0
            isthing = bool(det["isthing"]) if _has(det, "isthing") else True
        segments.append(
            SegmentInfo(
                id=seg_id,
                category_id=category_id,
                category=str(det.label),
                isthing=isthing,
                score=float(det.confidence) if det.confidence is not None else 1.0,
                mask_quality=float(det["mask_quality"]) if _has(det, "mask_quality") else 0.0,
                in_vocab_prob=float(det["in_vocab_prob"]) if _has(det, "in_vocab_prob") else 0.0,
                out_vocab_prob=float(det["out_vocab_prob"]) if _has(det, "out_vocab_prob") else 0.0,
                area=area,
                bbox=box,
            )
        )
        sources.append(det)
    order = sorted(range(len(segments)), key=lambda i: segments[i].id)
    return PanopticPrediction(panoptic_map, [segments[i] for i in order]), [sources[i] for i in order]


def label_attr(label: fo.Label, name: str, default: Any = None) -> Any:
    """A label attribute, or ``default`` when the label lacks it or it is None."""
    try:
        value = label.get_field(name)
    except AttributeError:
        return default
    return default if value is None else value


def _has(label: fo.Label, name: str) -> bool:
    return label_attr(label, name) is not None
