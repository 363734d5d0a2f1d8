"""COCO-panoptic output: PNG bytes, segment entries and the one streaming COCO JSON writer.

The validator is :mod:`possam_label.io.coco_panoptic_validate`.

Format (COCO 2018 panoptic, as read by panopticapi and detectron2):

- ``images``: ``{id, file_name, width, height}``;
- ``annotations``: one per image, ``{image_id, file_name: "<image_id>.png", segments_info}`` with
  ``segments_info[i] = {id, category_id, area, bbox: [x, y, w, h], iscrowd}`` (extra keys such
  as ``score`` are allowed and ignored by evaluators);
- ``categories``: ``{id, name, supercategory, isthing: 0|1, color: [r, g, b]}``;
- PNG: RGB, ``id = R + 256 G + 256^2 B``, 0 = void; every non-zero id of a PNG appears exactly
  once in its ``segments_info`` and vice versa.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping, Optional, Union

import numpy as np
from PIL import Image

from .atomic_files import atomic_replace

logger = logging.getLogger(__name__)


def panoptic_png_bytes(id_map: np.ndarray, compress_level: int = 1) -> bytes:
    """(H, W) integer id map -> COCO-panoptic RGB PNG file bytes.

    ``compress_level`` 1 is several times faster than Pillow's default 6 for a few percent more
    bytes (id maps are mostly long runs, which compress well at any level).
    """
    ids = np.asarray(id_map)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= 256**3):
        raise ValueError("panoptic ids must be in 0..256**3-1 to fit an RGB PNG")
    # Little-endian uint32 bytes are (R, G, B, 0) for id = R + 256 G + 256^2 B: a view, no arithmetic.
    little = np.ascontiguousarray(ids, dtype="<u4")
    rgb = np.ascontiguousarray(little.view(np.uint8).reshape(little.shape + (4,))[..., :3])
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def _json_number(value: float) -> Union[int, float]:
    as_float = float(value)
    return int(as_float) if as_float.is_integer() else as_float


def segment_info_entry(segment: Mapping[str, Any]) -> dict[str, Any]:
    """A ``segments`` table row (or :class:`SegmentInfo` dict) -> COCO ``segments_info`` entry.

    Keeps ``score`` (MASE confidence), ``mask_quality``, ``category`` name and ``isthing`` as extra
    keys, which COCO-panoptic readers ignore.
    """
    bbox = [_json_number(v) for v in segment["bbox"]]
    return {
        "id": int(segment.get("segment_id", segment.get("id"))),
        "category_id": int(segment["category_id"]),
        "area": int(segment["area"]),
        "bbox": bbox,
        "iscrowd": 0,
        "score": float(segment["score"]),
        "mask_quality": float(segment["mask_quality"]),
        "category": str(segment["category"]),
        "isthing": int(bool(segment["isthing"])),
    }


def coco_categories(categories: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Normalise category dicts to the COCO-panoptic keys (plus ``synonyms`` when given)."""
    out = []
    for cat in categories:
        entry = {
            "id": int(cat["id"]),
            "name": str(cat["name"]),
            "supercategory": str(cat.get("supercategory", "thing" if cat.get("isthing") else "stuff")),
            "isthing": int(bool(cat["isthing"])),
            "color": [int(c) for c in cat["color"]],
        }
        if "synonyms" in cat:
            entry["synonyms"] = list(cat["synonyms"])
        out.append(entry)
    return out


class JsonArrayBuffer:
    """Objects appended one by one to a temporary file, later streamed into a JSON array by
    :func:`write_coco_json` (for writers that produce several arrays side by side).

    Args:
        directory: where the temporary file lives (the output's directory: same filesystem).
        name: part of the temporary file's name.
    """

    def __init__(self, directory: Union[str, Path], name: str) -> None:
        self.handle: IO[str] = tempfile.NamedTemporaryFile(
            "w+", dir=directory, prefix=f".tmp-{name}-", suffix=".json", delete=False, encoding="utf-8"
        )
        self.count = 0

    def append(self, obj: Any) -> None:
        self.handle.write(("" if self.count == 0 else ",\n") + json.dumps(obj))
        self.count += 1

    def copy_to(self, out: IO[str]) -> None:
        self.handle.flush()
        self.handle.seek(0)
        shutil.copyfileobj(self.handle, out)

    def discard(self) -> None:
        self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.handle.name)


JsonArray = Union[Iterable[Mapping[str, Any]], JsonArrayBuffer]


def _write_array(fh: IO[str], items: JsonArray) -> int:
    """Write ``[...]`` one item at a time; returns the number of items."""
    fh.write("[")
    if isinstance(items, JsonArrayBuffer):
        if items.count:
            fh.write("\n")
            items.copy_to(fh)
        count = items.count
    else:
        count = 0
        for count, item in enumerate(items, start=1):
            fh.write(("\n" if count == 1 else ",\n") + json.dumps(dict(item)))
    fh.write("\n]")
    return count


def write_coco_json(
    path: Union[str, Path],
    images: JsonArray,
    annotations: JsonArray,
    categories: list[Mapping[str, Any]],
    info: Optional[Mapping[str, Any]] = None,
    durable: bool = True,
    count_segments: bool = True,
) -> dict[str, int]:
    """Stream a COCO JSON (panoptic or instances) to ``path`` atomically, one entry in memory at a time.

    The one streaming COCO writer: ``{"info", "licenses", "categories", "images", "annotations"}``.

    Args:
        images: ``{id, file_name, width, height}`` entries (an iterable consumed once, first, or
            a :class:`JsonArrayBuffer`).
        annotations: COCO annotations, consumed after the images (same two forms).
        categories: COCO categories, written as given.
        info: the ``info`` object.
        durable: fsync the file and the directory.
        count_segments: count ``segments_info`` entries of iterated (panoptic) annotations.

    Returns:
        counts ``{"images", "annotations", "segments"}`` (segments: 0 for buffered annotations).
    """
    counts = {"images": 0, "annotations": 0, "segments": 0}
    if count_segments and not isinstance(annotations, JsonArrayBuffer):
        annotations = _counting(annotations, counts)
    with atomic_replace(path, durable=durable) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write('{"info": ' + json.dumps(dict(info or {})) + ', "licenses": [], ')
            fh.write('"categories": ' + json.dumps([dict(c) for c in categories]) + ', "images": ')
            counts["images"] = _write_array(fh, images)
            fh.write(', "annotations": ')
            counts["annotations"] = _write_array(fh, annotations)
            fh.write("}\n")
    return counts


def _counting(annotations: Iterable[Mapping[str, Any]], counts: dict[str, int]) -> Iterator[Mapping[str, Any]]:
    for annotation in annotations:
        counts["segments"] += len(annotation["segments_info"])
        yield annotation


def write_coco_panoptic_json(
    path: Union[str, Path],
    images: Iterable[Mapping[str, Any]],
    annotations: Iterable[Mapping[str, Any]],
    categories: list[Mapping[str, Any]],
    info: Optional[Mapping[str, Any]] = None,
    durable: bool = True,
) -> dict[str, int]:
    """Stream a COCO-panoptic JSON to ``path`` atomically (:func:`write_coco_json`), with the
    categories normalised by :func:`coco_categories`.

    Returns:
        counts ``{"images", "annotations", "segments"}``.
    """
    return write_coco_json(path, images, annotations, coco_categories(categories), info=info, durable=durable)
