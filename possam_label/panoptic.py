"""Panoptic id-map toolkit: the small operations every stage applies to a labelled image.

An id map is an (H, W) integer array where 0 is void and every other value is one segment's id.
Each operation here has exactly one implementation, used by both predictors, the auto-labeling
engine, the FiftyOne conversion and the exports (segment_anything's ``utils/amg.py`` is the model):

* :func:`resize_ids`: nearest-neighbour resize (pixel centres; no id is lost when upscaling);
* :func:`keep_ids`: every pixel whose id is not listed becomes void;
* :func:`areas_and_boxes`: pixel count and tight ``[x, y, w, h]`` box of listed ids;
* :func:`renumber`: keep the listed ids that are present, renumbered 1..M, with area and box;
* :func:`score_passes` / :func:`filter_by_score`: the one score threshold rule (``score >= min``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import ndimage

from .types import PanopticPrediction, SegmentInfo

Box = list[float]  # [x, y, w, h] in pixels


def resize_ids(id_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) id map to (height, width).

    Samples at pixel centres, so every id survives when upscaling. Returns ``id_map`` itself
    when it already has the size.
    """
    if id_map.shape == (height, width):
        return id_map
    rows = np.minimum(((np.arange(height) + 0.5) * id_map.shape[0] / height).astype(np.int64), id_map.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * id_map.shape[1] / width).astype(np.int64), id_map.shape[1] - 1)
    return id_map[rows[:, None], cols[None, :]]


def _lookup(id_map: np.ndarray, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """A lookup table ``old id -> new id`` over every value of ``id_map`` (unlisted ids -> 0)."""
    pairs = list(pairs)
    top = max([int(id_map.max()) if id_map.size else 0] + [old for old, _ in pairs])
    lut = np.zeros(top + 1, dtype=np.int32)
    for old, new in pairs:
        if old > 0:
            lut[old] = new
    return lut


def keep_ids(id_map: np.ndarray, ids: Iterable[int]) -> np.ndarray:
    """(H, W) int32 map where pixels whose id is not in ``ids`` (or is negative) are void (0)."""
    id_map = np.asarray(id_map)
    ids = [int(i) for i in ids]
    return _lookup(id_map, ((i, i) for i in ids))[np.clip(id_map, 0, None)]


def areas_and_boxes(id_map: np.ndarray, ids: Sequence[int]) -> tuple[list[int], list[Optional[Box]]]:
    """Pixel count and tight box ``[x, y, w, h]`` (floats) of each id; box None when absent.

    Only non-negative integer maps: callers pass maps made by the predictors or :func:`keep_ids`.
    """
    ids = [int(i) for i in ids]
    if not ids:
        return [], []
    top = max(ids)
    areas = np.bincount(np.clip(id_map, 0, None).ravel(), minlength=top + 1)
    slices = ndimage.find_objects(np.asarray(id_map), max_label=top)
    boxes: list[Optional[Box]] = []
    for i in ids:
        found = slices[i - 1] if i > 0 else None
        if found is None or areas[i] == 0:
            boxes.append(None)
            continue
        rows, cols = found
        boxes.append([float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start)])
    return [int(areas[i]) if i > 0 else 0 for i in ids], boxes


@dataclass
class KeptSegment:
    """One segment that :func:`renumber` kept: where it is in the input list, its new id and geometry."""

    index: int
    old_id: int
    new_id: int
    area: int
    bbox: Box


def renumber(id_map: np.ndarray, ids: Sequence[int], compact: bool = True) -> tuple[np.ndarray, list[KeptSegment]]:
    """Keep the listed ids that have pixels; every other pixel becomes void.

    Args:
        id_map: (H, W) non-negative int ids.
        ids: the segments' ids, in the order the new ids follow.
        compact: renumber the kept ids 1..M in the order of ``ids`` (False keeps the ids).
    Returns:
        the (H, W) int32 map and the kept segments with their exact area and box.
    """
    areas, boxes = areas_and_boxes(id_map, ids)
    kept: list[KeptSegment] = []
    for index, (old, area, box) in enumerate(zip(ids, areas, boxes)):
        if box is None:
            continue  # no pixel (e.g. vanished when resizing)
        kept.append(KeptSegment(index, int(old), len(kept) + 1 if compact else int(old), area, box))
    lut = _lookup(np.asarray(id_map), ((k.old_id, k.new_id) for k in kept))
    return lut[np.clip(id_map, 0, None)].astype(np.int32), kept


def score_passes(scores: np.ndarray, min_score: Optional[float]) -> np.ndarray:
    """(N,) bool: the segments a score threshold keeps (``score >= min_score``; None keeps all)."""
    scores = np.asarray(scores, dtype=np.float64)
    if min_score is None:
        return np.ones(scores.shape, dtype=bool)
    return scores >= float(min_score)


# ----------------------------------------------------------------------- on PanopticPrediction
def restrict(prediction: PanopticPrediction, ids: Iterable[int]) -> PanopticPrediction:
    """The prediction with only the segments ``ids``; the others' pixels become void."""
    ids = set(int(i) for i in ids)
    return PanopticPrediction(keep_ids(prediction.panoptic_map, ids), [s for s in prediction.segments if s.id in ids])


def filter_by_score(prediction: PanopticPrediction, min_score: Optional[float]) -> PanopticPrediction:
    """The segments scored at least ``min_score`` (None: all); the others' pixels become void."""
    if min_score is None:
        return prediction
    passes = score_passes(np.array([s.score for s in prediction.segments], dtype=np.float64), min_score)
    return restrict(prediction, [s.id for s, ok in zip(prediction.segments, passes) if ok])


def with_geometry(id_map: np.ndarray, segments: Sequence[SegmentInfo], compact: bool = True) -> PanopticPrediction:
    """A self-consistent prediction from an id map and its segments: segments without pixels
    dropped, ids renumbered 1..M in list order (``compact``), ``area`` and ``bbox`` from the map."""
    new_map, kept = renumber(id_map, [s.id for s in segments], compact=compact)
    infos = [replace(segments[k.index], id=k.new_id, area=k.area, bbox=k.bbox) for k in kept]
    return PanopticPrediction(panoptic_map=new_map, segments=infos)
