"""COCO run-length encoding (compressed ``counts`` strings) through pycocotools.

An RLE here is the plain mapping ``{"size": [height, width], "counts": str}``: the same object
pycocotools' ``mask.encode`` returns, with ``counts`` decoded from bytes to an ASCII string so it
fits JSON and an Arrow ``string`` column. :func:`decode_rle` accepts bytes or str counts.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool/0-1 mask -> ``{"size": [H, W], "counts": str}`` (COCO compressed RLE)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    return {"size": [int(encoded["size"][0]), int(encoded["size"][1])], "counts": encoded["counts"].decode("ascii")}


def _to_pycocotools(rle: Mapping[str, Any]) -> dict[str, Any]:
    try:
        size = [int(v) for v in rle["size"]]
        counts = rle["counts"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a COCO RLE (needs 'size' and 'counts'): {rle!r:.200}") from exc
    if len(size) != 2:
        raise ValueError(f"RLE size must be [height, width], got {size}")
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    elif isinstance(counts, list):
        # Uncompressed RLE (list of run lengths) -> compressed, as pycocotools expects.
        return mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    return {"size": size, "counts": counts}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """COCO RLE (compressed str/bytes counts, or uncompressed list counts) -> C-contiguous (H, W) bool mask.

    pycocotools decodes in Fortran order; a mask stored like that in FiftyOne (``np.save`` keeps
    the order) cannot be decoded by the App's Annotate tab ("Fortran order arrays are not
    supported"), so the order is fixed here, once for every caller.
    """
    with warnings.catch_warnings():
        # pycocotools 2.0.x + NumPy 2 warn about the copy keyword inside decode; harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.ascontiguousarray(mask_utils.decode(_to_pycocotools(rle)), dtype=bool)


def first_overlap(rles: Sequence[Mapping[str, Any]]) -> Optional[int]:
    """Index of the first RLE that overlaps one before it, or None when all are disjoint.

    Found from areas alone (a union smaller than the sum of the areas), without decoding: the
    common disjoint case costs one merge.
    """
    coco = [_to_pycocotools(r) for r in rles]
    if len(coco) < 2:
        return None
    areas = mask_utils.area(coco)
    if int(mask_utils.area(mask_utils.merge(coco, intersect=False))) == int(areas.sum()):
        return None
    union, total = coco[0], int(areas[0])
    for index in range(1, len(coco)):
        union, total = mask_utils.merge([union, coco[index]], intersect=False), total + int(areas[index])
        if int(mask_utils.area(union)) < total:
            return index
    return None


def decode_rle_crop(rle: Mapping[str, Any]) -> tuple[tuple[int, int, int, int], Optional[np.ndarray]]:
    """An RLE as its tight pixel box ``(x, y, w, h)`` and the C-contiguous (h, w) bool mask cropped
    to it; ``((0, 0, 0, 0), None)`` for an empty mask."""
    coco = _to_pycocotools(rle)
    x, y, w, h = (int(v) for v in mask_utils.toBbox(coco))
    if w == 0 or h == 0:
        return (0, 0, 0, 0), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # as in decode_rle
        full = mask_utils.decode(coco)
    return (x, y, w, h), np.ascontiguousarray(full[y : y + h, x : x + w], dtype=bool)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels of an RLE."""
    return int(mask_utils.area(_to_pycocotools(rle)))


def rle_bbox(rle: Mapping[str, Any]) -> list[float]:
    """Tight box ``[x, y, w, h]`` of an RLE (pixels; all zero for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(_to_pycocotools(rle))]


def mask_bbox(mask: np.ndarray) -> list[float]:
    """Tight box ``[x, y, w, h]`` of an (H, W) bool mask in whole pixels (COCO convention)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1])
    x0, x1 = int(cols[0]), int(cols[-1])
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def encode_panoptic_map(
    panoptic_map: np.ndarray, segment_ids: Iterable[int], max_chunk_bytes: int = 64 * 2**20
) -> dict[int, dict[str, Any]]:
    """One compressed RLE per segment id of an (H, W) id map (the mask ``map == id``).

    Masks are built a chunk of ids at a time into an (H, W, K) uint8 Fortran array (what
    pycocotools encodes in one call), with K chosen so the chunk stays under ``max_chunk_bytes``.
    """
    ids = [int(i) for i in segment_ids]
    panoptic_map = np.asarray(panoptic_map)
    if panoptic_map.ndim != 2:
        raise ValueError(f"expected an (H, W) id map, got shape {panoptic_map.shape}")
    height, width = panoptic_map.shape
    per_chunk = max(1, max_chunk_bytes // max(1, height * width))
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), per_chunk):
        chunk = ids[start : start + per_chunk]
        stacked = np.empty((height, width, len(chunk)), dtype=np.uint8, order="F")
        for k, segment_id in enumerate(chunk):
            stacked[:, :, k] = panoptic_map == segment_id
        for segment_id, encoded in zip(chunk, mask_utils.encode(stacked)):
            out[segment_id] = {"size": [int(encoded["size"][0]), int(encoded["size"][1])], "counts": encoded["counts"].decode("ascii")}
    return out
