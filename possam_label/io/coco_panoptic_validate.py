"""The COCO-panoptic validator: a JSON file and its PNG folder checked against the format rules.

The one validator of the project: the autolabel outputs, the exports and the tests all use it.
Rules (panopticapi's and detectron2's readers rely on them): structure and types of ``images``,
``annotations`` and ``categories``; unique image and category ids; one annotation per image and
one image per annotation; unique PNG names; every PNG exists, is RGB and has its image's size;
segment ids unique, non-zero and < 256^3; every ``category_id`` a category; ``iscrowd`` 0/1;
the non-zero PNG ids are exactly the ``segments_info`` ids; optionally ``area`` and ``bbox``
match the pixels, and a stuff class has at most one segment per image.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
from PIL import Image

from ..panoptic import areas_and_boxes
from .panoptic_png import rgb2id


class CocoPanopticValidationError(ValueError):
    """A COCO-panoptic JSON + PNG folder that breaks the format; ``problems`` lists every finding."""

    def __init__(self, problems: list[str], total: int) -> None:
        self.problems = problems
        self.total = total
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(f"{total} COCO-panoptic problem(s):\n  " + "\n  ".join(problems) + more)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Findings:
    """Problems found so far: all counted, the first ``limit`` kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.problems: list[str] = []
        self.total = 0

    def __call__(self, message: str) -> None:
        self.total += 1
        if len(self.problems) < self.limit:
            self.problems.append(message)

    def raise_if_any(self) -> None:
        if self.total:
            raise CocoPanopticValidationError(self.problems, self.total)


def validate_coco_panoptic(
    panoptic_json: Union[str, os.PathLike, Mapping[str, Any]],
    png_dir: Union[str, os.PathLike, None] = None,
    check_bbox_area: bool = True,
    one_segment_per_stuff_class: bool = False,
    max_problems: int = 50,
) -> dict[str, int]:
    """Strictly validate a COCO-panoptic JSON and its PNG folder (rules: module docstring).

    Args:
        panoptic_json: path of the JSON, or the loaded mapping.
        png_dir: folder holding the annotation PNGs (None: the JSON's path without ``.json``).
        check_bbox_area: also check that ``area`` is the PNG's pixel count and ``bbox`` its tight box.
        one_segment_per_stuff_class: also check that no stuff class has two segments in an image
            (COCO panoptic's rule for training sets).
        max_problems: problems listed in the error (all are counted).

    Returns:
        counts ``{"images", "annotations", "segments", "categories"}`` when valid.
    Raises:
        CocoPanopticValidationError: listing the problems (a ValueError).
    """
    if png_dir is None:
        if isinstance(panoptic_json, Mapping):
            raise ValueError("png_dir is needed when the JSON is given as a mapping")
        png_dir = Path(panoptic_json).with_suffix("")
    problem = _Findings(max_problems)
    data = _load(panoptic_json)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            problem(f"top-level '{key}' must be a list")
    problem.raise_if_any()
    categories = _check_categories(data["categories"], problem)
    images = _check_images(data["images"], problem)
    annotated: set[Any] = set()
    png_names: set[str] = set()
    num_segments = 0
    for i, ann in enumerate(data["annotations"]):
        seg_by_id = _check_annotation(i, ann, images, categories, annotated, png_names, problem)
        if seg_by_id is None:
            continue
        num_segments += len(ann["segments_info"])
        where = f"annotations[{i}] (image_id {ann['image_id']!r})"
        id_map = _read_png(Path(png_dir) / ann["file_name"], images[ann["image_id"]], where, problem)
        if id_map is not None:
            _check_pixels(id_map, seg_by_id, where, check_bbox_area, problem)
        if one_segment_per_stuff_class:
            _check_stuff_once(ann["segments_info"], categories, where, problem)
    for image_id in images:
        if image_id not in annotated:
            problem(f"image {image_id!r} has no annotation")
    problem.raise_if_any()
    return {"images": len(images), "annotations": len(annotated), "segments": num_segments, "categories": len(categories)}


def _load(panoptic_json: Union[str, os.PathLike, Mapping[str, Any]]) -> Mapping[str, Any]:
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
    return data


def _check_categories(entries: list[Any], problem: _Findings) -> dict[int, Mapping[str, Any]]:
    categories: dict[int, Mapping[str, Any]] = {}
    for i, cat in enumerate(entries):
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
    return categories


def _check_images(entries: list[Any], problem: _Findings) -> dict[Any, Mapping[str, Any]]:
    images: dict[Any, Mapping[str, Any]] = {}
    for i, image in enumerate(entries):
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
    return images


def _check_annotation(
    i: int,
    ann: Any,
    images: dict[Any, Mapping[str, Any]],
    categories: dict[int, Mapping[str, Any]],
    annotated: set[Any],
    png_names: set[str],
    problem: _Findings,
) -> Optional[dict[int, Mapping[str, Any]]]:
    """The annotation's segments by id, or None when its PNG cannot be checked."""
    where = f"annotations[{i}]"
    if not isinstance(ann, Mapping):
        problem(f"{where}: not an object")
        return None
    image_id = ann.get("image_id")
    where = f"{where} (image_id {image_id!r})"
    if image_id not in images:
        problem(f"{where}: no image with this id")
        return None
    if image_id in annotated:
        problem(f"{where}: second annotation for this image")
        return None
    annotated.add(image_id)
    file_name = ann.get("file_name")
    if not isinstance(file_name, str) or not file_name.endswith(".png") or os.path.basename(file_name) != file_name:
        problem(f"{where}: 'file_name' must be a plain '<name>.png', got {file_name!r}")
        return None
    if file_name in png_names:
        problem(f"{where}: PNG {file_name} used by two annotations")
    png_names.add(file_name)
    segments = ann.get("segments_info")
    if not isinstance(segments, list):
        problem(f"{where}: 'segments_info' must be a list")
        return None
    seg_by_id: dict[int, Mapping[str, Any]] = {}
    for j, seg in enumerate(segments):
        _check_segment(f"{where} segments_info[{j}]", seg, categories, seg_by_id, problem)
    return seg_by_id


def _check_segment(where: str, seg: Any, categories: dict[int, Mapping[str, Any]], seg_by_id: dict[int, Mapping[str, Any]], problem: _Findings) -> None:
    if not isinstance(seg, Mapping):
        problem(f"{where}: not an object")
        return
    seg_id = seg.get("id")
    if not (_is_int(seg_id) and 0 < seg_id < 256**3):
        problem(f"{where}: 'id' must be an integer in 1..{256**3 - 1}, got {seg_id!r}")
        return
    if seg_id in seg_by_id:
        problem(f"{where}: duplicate segment id {seg_id}")
    seg_by_id[seg_id] = seg
    if seg.get("category_id") not in categories or not _is_int(seg.get("category_id")):
        problem(f"{where}: category_id {seg.get('category_id')!r} is not a category")
    if seg.get("iscrowd", 0) not in (0, 1) or isinstance(seg.get("iscrowd"), bool):
        problem(f"{where}: 'iscrowd' must be 0 or 1")
    if not (_is_int(seg.get("area")) and seg["area"] > 0):
        problem(f"{where}: 'area' must be a positive integer, got {seg.get('area')!r}")
    bbox = seg.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) and v >= 0 for v in bbox)):
        problem(f"{where}: 'bbox' must be [x, y, w, h] of non-negative numbers, got {bbox!r}")
    if "score" in seg and not (_is_number(seg["score"])):
        problem(f"{where}: 'score' must be a finite number")


def _read_png(png_path: Path, image: Mapping[str, Any], where: str, problem: _Findings) -> Optional[np.ndarray]:
    """The PNG's (H, W) id map, or None (and a problem) when it is missing, unreadable, not RGB or of another size."""
    try:
        with Image.open(png_path) as png:
            mode, size = png.mode, png.size
            rgb = np.asarray(png.convert("RGB")) if mode == "RGB" else None
    except FileNotFoundError:
        problem(f"{where}: PNG {png_path} does not exist")
        return None
    except OSError as exc:
        problem(f"{where}: PNG {png_path} cannot be read: {exc}")
        return None
    if mode != "RGB":
        problem(f"{where}: PNG {png_path} has mode {mode}, expected RGB")
        return None
    if size != (image.get("width"), image.get("height")):
        problem(f"{where}: PNG {png_path.name} is {size[0]}x{size[1]} but the image is {image.get('width')}x{image.get('height')}")
        return None
    return rgb2id(rgb)


def _check_pixels(id_map: np.ndarray, seg_by_id: dict[int, Mapping[str, Any]], where: str, check_bbox_area: bool, problem: _Findings) -> None:
    """panopticapi's rule (PNG ids == segments_info ids), and area / tight box per segment."""
    present, inverse = np.unique(id_map, return_inverse=True)
    present_ids = [int(v) for v in present if v != 0]
    missing_in_json = sorted(set(present_ids) - set(seg_by_id))
    missing_in_png = sorted(set(seg_by_id) - set(present_ids))
    if missing_in_json:
        problem(f"{where}: PNG ids {missing_in_json[:10]} have no segments_info entry")
    if missing_in_png:
        problem(f"{where}: segments_info ids {missing_in_png[:10]} do not appear in the PNG")
    if not check_bbox_area or not present_ids:
        return
    # Compact labels 1..K so the box search stays small whatever the id values (COCO's are ~1e7).
    offset = 0 if present[0] == 0 else 1
    compact = (inverse.reshape(id_map.shape) + offset).astype(np.int32)
    index = {int(v): k + offset for k, v in enumerate(present)}
    checked = [seg_id for seg_id in seg_by_id if seg_id in index]
    areas, boxes = areas_and_boxes(compact, [index[seg_id] for seg_id in checked])
    for seg_id, area, box in zip(checked, areas, boxes):
        seg = seg_by_id[seg_id]
        if seg.get("area") != area:
            problem(f"{where}: segment {seg_id} area {seg.get('area')!r} != {area} pixels in the PNG")
        expected = [int(v) for v in box or []]
        bbox = seg.get("bbox")
        if not isinstance(bbox, list) or [float(v) for v in bbox] != [float(v) for v in expected]:
            problem(f"{where}: segment {seg_id} bbox {bbox!r} != tight box {expected} in the PNG")


def _check_stuff_once(segments: list[Any], categories: dict[int, Mapping[str, Any]], where: str, problem: _Findings) -> None:
    stuff_seen: set[int] = set()
    for seg in segments:
        cat = categories.get(seg.get("category_id")) if isinstance(seg, Mapping) else None
        if cat is None or cat.get("isthing"):
            continue
        if seg["category_id"] in stuff_seen:
            problem(f"{where}: stuff class {cat.get('name')!r} has more than one segment")
        stuff_seen.add(seg["category_id"])
