"""Pair prediction files with ground truth: images by id or by file name, classes by name.

An autolabel run names its images by a hash of their path (``image_id_for_path``) and its classes
by its own vocabulary ids, so its ``panoptic.json`` shares neither image ids nor, in general,
category ids with a hand-labelled ground truth of the same images. Scoring it needs two matches:

* **images**: by ``image_id`` when the two sides share image ids (any ground-truth id among the
  prediction's; a ground-truth image then missing its prediction is an error); otherwise by file
  name: the ``images[].file_name`` of each side (the annotation's PNG ``file_name`` when a JSON
  has no ``images`` entry for it), compared by basename, or, with ``root``, as paths relative to
  ``root`` (absolute paths are made relative to it; relative ones are taken as they are), in
  both cases without the extension (``x.jpg`` and its PNG ``x.png`` are one image). A
  ground-truth key shared by two ground-truth images, or matched by two predictions, is
  ambiguous and refused, naming the files. Predictions without ground truth are left out (and
  counted); a ground-truth image without prediction is an error, as in panopticapi.
* **classes**: when the prediction JSON carries ``categories`` whose ids name other classes than
  the ground truth's, prediction categories are mapped to ground-truth ones by name
  (case-insensitive, surrounding spaces ignored). A prediction class the ground truth lacks is
  appended to the category list under a fresh id: its segments can never match, so each one is a
  false positive of that class, which panopticapi would report had the class been in its list.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Optional

IMAGE_MATCH_MODES = ("auto", "image_id", "file_name")


@dataclass
class ImageMatch:
    """Ground-truth / prediction annotation pairs and how they were found."""

    by: str  # "image_id" or "file_name"
    pairs: list[tuple[dict[str, Any], dict[str, Any]]]
    gt_images: int
    pred_images: int
    root: Optional[str] = None

    @property
    def unmatched_predictions(self) -> int:
        return self.pred_images - len(self.pairs)

    def summary(self) -> dict[str, Any]:
        return {
            "images_by": self.by,
            "matched_images": len(self.pairs),
            "gt_images": self.gt_images,
            "pred_images": self.pred_images,
            "unmatched_predictions": self.unmatched_predictions,
            "root": self.root,
        }


@dataclass
class CategoryMatch:
    """The category list to score with and the prediction category id -> scoring id map."""

    by: str  # "id" or "name"
    categories: list[dict[str, Any]]  # ground-truth categories + prediction-only ones
    pred_to_gt: dict[int, int]  # identity when by == "id"
    prediction_only: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "classes_by": self.by,
            "prediction_only_classes": [
                {"id": int(c["id"]), "name": str(c.get("name", "")), "isthing": int(c["isthing"])} for c in self.prediction_only
            ],
        }


def _name_key(name: Any) -> str:
    return " ".join(str(name).split()).casefold()


def match_categories(gt_categories: Sequence[Mapping[str, Any]], pred_categories: Optional[Sequence[Mapping[str, Any]]], where: str = "prediction") -> CategoryMatch:
    """Match prediction classes to ground-truth classes (see the module doc).

    ``pred_categories`` None (a prediction JSON without ``categories``), or a list whose ids name
    the same classes as the ground truth's, keeps the ids as they are.
    """
    gt = [dict(c) for c in gt_categories]
    if pred_categories is None:
        return CategoryMatch("id", gt, {int(c["id"]): int(c["id"]) for c in gt})
    gt_by_id = {int(c["id"]): c for c in gt}
    pred = [dict(c) for c in pred_categories]
    same = all(
        int(c["id"]) in gt_by_id and ("name" not in c or _name_key(c["name"]) == _name_key(gt_by_id[int(c["id"])].get("name", c["name"])))
        for c in pred
    )
    if same:
        return CategoryMatch("id", gt, {int(c["id"]): int(c["id"]) for c in gt})
    gt_by_name: dict[str, int] = {}
    for c in gt:
        if "name" not in c:
            raise ValueError(f"ground-truth category {c['id']} has no name: classes cannot be matched by name")
        key = _name_key(c["name"])
        if key in gt_by_name:
            raise ValueError(f"ground-truth categories {gt_by_name[key]} and {c['id']} are both named {c['name']!r}")
        gt_by_name[key] = int(c["id"])
    next_id = max(gt_by_id) + 1
    pred_to_gt: dict[int, int] = {}
    added: list[dict[str, Any]] = []
    seen_names: dict[str, int] = {}
    for c in pred:
        if "name" not in c:
            raise ValueError(f"{where}: category {c.get('id')} has no name: classes cannot be matched by name")
        key = _name_key(c["name"])
        if key in seen_names:
            raise ValueError(f"{where}: categories {seen_names[key]} and {c['id']} are both named {c['name']!r}")
        seen_names[key] = int(c["id"])
        if key in gt_by_name:
            pred_to_gt[int(c["id"])] = gt_by_name[key]
            continue
        extra = {"id": next_id, "name": str(c["name"]), "isthing": int(bool(c.get("isthing", 1)))}
        next_id += 1
        added.append(extra)
        pred_to_gt[int(c["id"])] = extra["id"]
    return CategoryMatch("name", gt + added, pred_to_gt, added)


def remap_segments(segments: Sequence[Mapping[str, Any]], match: CategoryMatch, where: str) -> list[dict[str, Any]]:
    """A prediction's segments_info with category ids in the scoring category list."""
    if match.by == "id":
        return [dict(s) for s in segments]
    out = []
    for s in segments:
        cid = int(s["category_id"])
        if cid not in match.pred_to_gt:
            raise ValueError(f"{where}: segment {s.get('id')} has category_id {cid}, which is not in the prediction's categories")
        out.append({**s, "category_id": match.pred_to_gt[cid]})
    return out


def _image_names(data: Mapping[str, Any]) -> dict[Any, str]:
    names = {}
    for image in data.get("images") or []:
        if isinstance(image, Mapping) and "id" in image and "file_name" in image:
            names[image["id"]] = str(image["file_name"])
    return names


def image_key(file_name: str, root: Optional[str]) -> Optional[str]:
    """The name an image is matched by: its basename, or its path relative to ``root`` (None when
    an absolute path lies outside ``root``), without the extension (an image ``x.jpg`` and its
    panoptic PNG ``x.png`` are one image)."""
    if root is None:
        key = PurePath(file_name.replace("\\", "/")).name
    elif os.path.isabs(file_name):
        relative = os.path.relpath(os.path.normpath(file_name), os.path.normpath(root))
        if relative == ".." or relative.startswith(".." + os.sep):
            return None
        key = PurePath(relative).as_posix()
    else:
        key = posixpath.normpath(file_name.replace("\\", "/"))
    stem, _ = posixpath.splitext(key)
    return stem or key


def _keys(annotations: Mapping[Any, Mapping[str, Any]], names: Mapping[Any, str], root: Optional[str]) -> dict[Any, tuple[str, Optional[str]]]:
    """{image_id: (file name, key)}."""
    out = {}
    for image_id, annotation in annotations.items():
        name = names.get(image_id, str(annotation["file_name"]))
        out[image_id] = (name, image_key(name, root))
    return out


def _examples(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def match_images(
    gt_data: Mapping[str, Any],
    pred_data: Mapping[str, Any],
    gt_annotations: Mapping[Any, dict[str, Any]],
    pred_annotations: Mapping[Any, dict[str, Any]],
    by: str = "auto",
    root: Optional[str | os.PathLike] = None,
    gt_name: str = "ground truth",
    pred_name: str = "prediction",
) -> ImageMatch:
    """Pair every ground-truth annotation with one prediction annotation (see the module doc).

    Args:
        gt_data, pred_data: the loaded JSONs (their ``images`` lists give the file names).
        gt_annotations, pred_annotations: ``{image_id: annotation}`` of each side.
        by: "image_id", "file_name", or "auto" (ids when the sides share any image id; always
            file names when ``root`` is given).
        root: match file names as paths relative to this folder instead of by basename.
    Raises:
        ValueError: an unknown mode, an ambiguous match, or a ground-truth image without
            prediction, naming the files.
    """
    if by not in IMAGE_MATCH_MODES:
        raise ValueError(f"image matching must be one of {', '.join(IMAGE_MATCH_MODES)}, got {by!r}")
    root_text = os.fspath(root) if root is not None else None
    if by == "auto":
        # Ids are one namespace or unrelated (autolabel ids hash paths): any shared id means the former.
        by = "image_id" if root_text is None and any(i in pred_annotations for i in gt_annotations) else "file_name"
    if by == "image_id":
        pairs = []
        for image_id, gt_annotation in gt_annotations.items():
            pred_annotation = pred_annotations.get(image_id)
            if pred_annotation is None:
                raise ValueError(
                    f"{pred_name}: no prediction annotation for image_id {image_id} "
                    f"(ground-truth {gt_annotation['file_name']}); match by file name instead (--match file_name)"
                )
            pairs.append((gt_annotation, pred_annotation))
        return ImageMatch("image_id", pairs, len(gt_annotations), len(pred_annotations))

    gt_keys = _keys(gt_annotations, _image_names(gt_data), root_text)
    pred_keys = _keys(pred_annotations, _image_names(pred_data), root_text)
    outside = sorted(name for name, key in gt_keys.values() if key is None)
    if outside:
        raise ValueError(f"{gt_name}: image paths outside the match root {root_text}: {_examples(outside)}")
    gt_by_key: dict[str, list[Any]] = {}
    for image_id, (_, key) in gt_keys.items():
        gt_by_key.setdefault(key, []).append(image_id)
    duplicated = sorted(f"{key!r} (image ids {ids})" for key, ids in gt_by_key.items() if len(ids) > 1)
    if duplicated:
        raise ValueError(f"{gt_name}: several images share the name {_examples(duplicated)}: file names cannot identify them" + ("" if root_text else "; pass a match root to compare relative paths"))
    pred_by_key: dict[str, list[Any]] = {}
    for image_id, (_, key) in pred_keys.items():
        if key is not None:
            pred_by_key.setdefault(key, []).append(image_id)
    pairs, missing, ambiguous = [], [], []
    for key, (gt_id,) in gt_by_key.items():
        candidates = pred_by_key.get(key, [])
        if not candidates:
            missing.append(gt_keys[gt_id][0])
        elif len(candidates) > 1:
            ambiguous.append(f"{key!r}: " + " and ".join(pred_keys[c][0] for c in candidates[:2]))
        else:
            pairs.append((gt_annotations[gt_id], pred_annotations[candidates[0]]))
    if ambiguous:
        raise ValueError(
            f"{pred_name}: ambiguous match by file name, several predictions for {_examples(sorted(ambiguous))}"
            + ("" if root_text else "; pass a match root to compare paths relative to it")
        )
    if missing:
        raise ValueError(
            f"{pred_name}: {len(missing)} of {len(gt_by_key)} ground-truth images have no prediction with the same "
            f"{'relative path' if root_text else 'file name'} (e.g. {_examples(sorted(missing))}); {len(pairs)} matched"
        )
    return ImageMatch("file_name", pairs, len(gt_annotations), len(pred_annotations), root_text)
