"""COCO-panoptic output: PNG bytes, a streamed ``panoptic.json`` writer and a strict validator.

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

import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
from PIL import Image

from .panoptic_png import rgb2id
from .tables import temporary_path_for, fsync_directory

logger = logging.getLogger(__name__)


class CocoPanopticValidationError(ValueError):
    """A COCO-panoptic JSON + PNG folder that breaks the format; ``problems`` lists every finding."""

    def __init__(self, problems: list[str], total: int) -> None:
        self.problems = problems
        self.total = total
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(f"{total} COCO-panoptic problem(s):\n  " + "\n  ".join(problems) + more)


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


def write_coco_panoptic_json(
    path: Union[str, Path],
    images: Iterable[Mapping[str, Any]],
    annotations: Iterable[Mapping[str, Any]],
    categories: list[Mapping[str, Any]],
    info: Optional[Mapping[str, Any]] = None,
    durable: bool = True,
) -> dict[str, int]:
    """Stream a COCO-panoptic JSON to ``path`` atomically, one entry in memory at a time.

    Args:
        images: iterable of ``{id, file_name, width, height}`` (consumed once, first).
        annotations: iterable of ``{image_id, file_name, segments_info}`` (consumed once, after images).
        categories: COCO-panoptic categories.
        info: the ``info`` object.

    Returns:
        counts ``{"images", "annotations", "segments"}``.
    """
    path = Path(path)
    tmp = temporary_path_for(path)
    counts = {"images": 0, "annotations": 0, "segments": 0}
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write('{"info": ' + json.dumps(dict(info or {})) + ', "licenses": [], ')
            fh.write('"categories": ' + json.dumps(coco_categories(categories)) + ', "images": [')
            for i, image in enumerate(images):
                fh.write(("\n" if i == 0 else ",\n") + json.dumps(dict(image)))
                counts["images"] += 1
            fh.write('\n], "annotations": [')
            for i, annotation in enumerate(annotations):
                fh.write(("\n" if i == 0 else ",\n") + json.dumps(dict(annotation)))
                counts["annotations"] += 1
                counts["segments"] += len(annotation["segments_info"])
            fh.write("\n]}\n")
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    if durable:
        fsync_directory(path.parent)
    return counts


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_coco_panoptic(
    panoptic_json: Union[str, Path, Mapping[str, Any]],
    png_dir: Union[str, Path],
    check_bbox_area: bool = True,
    max_problems: int = 50,
) -> dict[str, int]:
    """Strictly validate a COCO-panoptic JSON and its PNG folder.

    Checks the structure and types of ``images``/``annotations``/``categories``; unique image and
    category ids; exactly one annotation per image and one image per annotation; unique PNG file
    names; every PNG exists, is RGB and has the image's width and height; segment ids unique,
    non-zero and < 256^3; every ``category_id`` is a category; ``iscrowd`` is 0/1; the set of
    non-zero PNG ids equals the set of ``segments_info`` ids (panopticapi's rule); with
    ``check_bbox_area`` also that ``area`` is the PNG's pixel count and ``bbox`` its tight box.

    Args:
        panoptic_json: path of the JSON, or the loaded mapping.
        png_dir: folder holding the annotation PNGs.
        max_problems: problems listed in the error (all are counted).

    Returns:
        counts ``{"images", "annotations", "segments", "categories"}`` when valid.

    Raises:
        CocoPanopticValidationError: listing the problems.
    """
    problems: list[str] = []
    total = 0

    def problem(message: str) -> None:
        nonlocal total
        total += 1
        if len(problems) < max_problems:
            problems.append(message)

    if isinstance(panoptic_json, Mapping):
        data = panoptic_json
    else:
        try:
            with open(panoptic_json, "r", encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise CocoPanopticValidationError([f"{panoptic_json}: cannot read JSON: {exc}"], 1) from exc
    if not isinstance(data, Mapping):
        raise CocoPanopticValidationError(["top level is not a JSON object"], 1)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            problem(f"top-level '{key}' must be a list")
    if total:
        raise CocoPanopticValidationError(problems, total)

    categories: dict[int, Mapping[str, Any]] = {}
    for i, cat in enumerate(data["categories"]):
        where = f"categories[{i}]"
        if not isinstance(cat, Mapping):
            problem(f"{where}: not an object")
            continue
        if not _is_int(cat.get("id")):
            problem(f"{where}: 'id' must be an integer, got {cat.get('id')!r}")
            continue
        if cat["id"] in categories:
            problem(f"{where}: duplicate category id {cat['id']}")
        if not isinstance(cat.get("name"), str) or not cat["name"]:
            problem(f"{where}: 'name' must be a non-empty string")
        if cat.get("isthing") not in (0, 1) or isinstance(cat.get("isthing"), bool):
            problem(f"{where}: 'isthing' must be 0 or 1, got {cat.get('isthing')!r}")
        color = cat.get("color")
        if not (isinstance(color, list) and len(color) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in color)):
            problem(f"{where}: 'color' must be [r, g, b] with integers 0..255, got {color!r}")
        if "supercategory" in cat and not isinstance(cat["supercategory"], str):
            problem(f"{where}: 'supercategory' must be a string")
        categories[cat["id"]] = cat
    if not categories:
        problem("no categories")

    images: dict[Any, Mapping[str, Any]] = {}
    for i, image in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(image, Mapping):
            problem(f"{where}: not an object")
            continue
        image_id = image.get("id")
        if not (_is_int(image_id) or (isinstance(image_id, str) and image_id)):
            problem(f"{where}: 'id' must be an integer or a non-empty string, got {image_id!r}")
            continue
        if image_id in images:
            problem(f"{where}: duplicate image id {image_id!r}")
        for key in ("width", "height"):
            if not (_is_int(image.get(key)) and image[key] > 0):
                problem(f"{where} (id {image_id!r}): '{key}' must be a positive integer, got {image.get(key)!r}")
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            problem(f"{where} (id {image_id!r}): 'file_name' must be a non-empty string")
        images[image_id] = image

    png_dir = Path(png_dir)
    annotated: set[Any] = set()
    png_names: set[str] = set()
    num_segments = 0
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, Mapping):
            problem(f"{where}: not an object")
            continue
        image_id = ann.get("image_id")
        where = f"{where} (image_id {image_id!r})"
        if image_id not in images:
            problem(f"{where}: no image with this id")
            continue
        if image_id in annotated:
            problem(f"{where}: second annotation for this image")
            continue
        annotated.add(image_id)
        file_name = ann.get("file_name")
        if not isinstance(file_name, str) or not file_name.endswith(".png") or os.path.basename(file_name) != file_name:
            problem(f"{where}: 'file_name' must be a plain '<name>.png', got {file_name!r}")
            continue
        if file_name in png_names:
            problem(f"{where}: PNG {file_name} used by two annotations")
        png_names.add(file_name)
        segments = ann.get("segments_info")
        if not isinstance(segments, list):
            problem(f"{where}: 'segments_info' must be a list")
            continue
        seg_by_id: dict[int, Mapping[str, Any]] = {}
        for j, seg in enumerate(segments):
            swhere = f"{where} segments_info[{j}]"
            if not isinstance(seg, Mapping):
                problem(f"{swhere}: not an object")
                continue
            seg_id = seg.get("id")
            if not (_is_int(seg_id) and 0 < seg_id < 256**3):
                problem(f"{swhere}: 'id' must be an integer in 1..{256**3 - 1}, got {seg_id!r}")
                continue
            if seg_id in seg_by_id:
                problem(f"{swhere}: duplicate segment id {seg_id}")
            seg_by_id[seg_id] = seg
            if seg.get("category_id") not in categories or not _is_int(seg.get("category_id")):
                problem(f"{swhere}: category_id {seg.get('category_id')!r} is not a category")
            if seg.get("iscrowd", 0) not in (0, 1) or isinstance(seg.get("iscrowd"), bool):
                problem(f"{swhere}: 'iscrowd' must be 0 or 1")
            if not (_is_int(seg.get("area")) and seg["area"] > 0):
                problem(f"{swhere}: 'area' must be a positive integer, got {seg.get('area')!r}")
            bbox = seg.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) and v >= 0 for v in bbox)):
                problem(f"{swhere}: 'bbox' must be [x, y, w, h] of non-negative numbers, got {bbox!r}")
            if "score" in seg and not (_is_number(seg["score"])):
                problem(f"{swhere}: 'score' must be a finite number")
        num_segments += len(segments)

        png_path = png_dir / file_name
        try:
            with Image.open(png_path) as png:
                mode, size = png.mode, png.size
                rgb = np.asarray(png.convert("RGB")) if mode == "RGB" else None
        except FileNotFoundError:
            problem(f"{where}: PNG {png_path} does not exist")
            continue
        except OSError as exc:
            problem(f"{where}: PNG {png_path} cannot be read: {exc}")
            continue
        if mode != "RGB":
            problem(f"{where}: PNG {png_path} has mode {mode}, expected RGB")
            continue
        image = images[image_id]
        if size != (image.get("width"), image.get("height")):
            problem(f"{where}: PNG {file_name} is {size[0]}x{size[1]} but the image is {image.get('width')}x{image.get('height')}")
            continue
        id_map = rgb2id(rgb)
        present, counts = np.unique(id_map, return_counts=True)
        present_ids = {int(v): int(c) for v, c in zip(present, counts) if v != 0}
        missing_in_json = sorted(set(present_ids) - set(seg_by_id))
        missing_in_png = sorted(set(seg_by_id) - set(present_ids))
        if missing_in_json:
            problem(f"{where}: PNG ids {missing_in_json[:10]} have no segments_info entry")
        if missing_in_png:
            problem(f"{where}: segments_info ids {missing_in_png[:10]} do not appear in the PNG")
        if check_bbox_area:
            for seg_id, seg in seg_by_id.items():
                if seg_id not in present_ids:
                    continue
                if seg.get("area") != present_ids[seg_id]:
                    problem(f"{where}: segment {seg_id} area {seg.get('area')!r} != {present_ids[seg_id]} pixels in the PNG")
                ys, xs = np.nonzero(id_map == seg_id)
                expected = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                bbox = seg.get("bbox")
                if not isinstance(bbox, list) or [float(v) for v in bbox] != [float(v) for v in expected]:
                    problem(f"{where}: segment {seg_id} bbox {bbox!r} != tight box {expected} in the PNG")

    for image_id in images:
        if image_id not in annotated:
            problem(f"image {image_id!r} has no annotation")
    if total:
        raise CocoPanopticValidationError(problems, total)
    return {"images": len(images), "annotations": len(annotated), "segments": num_segments, "categories": len(categories)}
