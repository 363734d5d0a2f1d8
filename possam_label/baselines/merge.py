"""The combine heuristic of panopticapi (re-implemented): class-labelled, overlapping masks -> one panoptic map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class MergedSegment:
    """A segment of the merged map: its id, class index and the mask it was founded by."""

    id: int
    label: int
    mask_index: int


def merge_masks(
    masks: Sequence[np.ndarray],
    boxes: Sequence[Sequence[float]],
    scores: np.ndarray,
    labels: np.ndarray,
    isthing: Sequence[bool],
    overlap_threshold: float,
    min_segment_area: int = 0,
    object_mask_threshold: float = 0.0,
) -> tuple[np.ndarray, list[MergedSegment]]:
    """Combine overlapping class-labelled masks into one panoptic map.

    Masks are taken in decreasing score; each paints only the pixels still free. A mask is
    skipped when its score is <= ``object_mask_threshold``, when less than ``overlap_threshold`` of its
    own area is free, or when the free part is smaller than ``min_segment_area``. The free part
    of a stuff mask joins the segment of its class when there is one already.

    Args:
        masks: N (H, W) bool masks.
        boxes: N [x, y, w, h] boxes enclosing each mask (only used to limit work to the box;
            ``x + w`` and ``y + h`` are the last column / row, as SAM's records give them).
        scores: (N,) float.
        labels: (N,) int class index per mask.
        isthing: (K,) per class.
        overlap_threshold: min free fraction of a mask's area.
        min_segment_area: min pixels a mask must add.
        object_mask_threshold: masks at or below this score are dropped (``baseline.object_mask_threshold``).
    Returns:
        (H, W) int32 map (0 = void, segments 1..M) and the M segments in id order.
    """
    if not masks:
        raise ValueError("merge_masks needs at least one mask to know the image size; handle empty images before")
    height, width = masks[0].shape
    panoptic = np.zeros((height, width), np.int32)
    segments: list[MergedSegment] = []
    stuff_segment: dict[int, int] = {}
    for n in np.argsort(-np.asarray(scores), kind="stable"):
        if scores[n] <= object_mask_threshold:
            break
        x, y, w, h = (int(round(v)) for v in boxes[n])
        window = (slice(max(y, 0), min(y + h + 1, height)), slice(max(x, 0), min(x + w + 1, width)))
        own = masks[n][window]
        area = int(own.sum())
        if area == 0:
            continue
        free = own & (panoptic[window] == 0)
        free_area = int(free.sum())
        if free_area == 0 or free_area / area < overlap_threshold or free_area < min_segment_area:
            continue
        label = int(labels[n])
        if not isthing[label] and label in stuff_segment:
            panoptic[window][free] = stuff_segment[label]
            continue
        segment_id = len(segments) + 1
        if not isthing[label]:
            stuff_segment[label] = segment_id
        panoptic[window][free] = segment_id
        segments.append(MergedSegment(segment_id, label, int(n)))
    return panoptic, segments
