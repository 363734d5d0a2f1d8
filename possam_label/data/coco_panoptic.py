"""COCO-panoptic dataset reader (detectron2 layout) for training and evaluation.

Layout: a panoptic JSON (``images``, ``annotations`` with ``segments_info``, ``categories``),
a folder of RGB images and a folder of RGB-encoded id PNGs (``id = R + 256 G + 256^2 B``,
0 = void). Each annotation's ``file_name`` names its PNG; the image's ``file_name`` (from
``images``) names the photo.

Targets are expressed in a :class:`~possam_label.vocab.Vocabulary`: a segment's label is the
contiguous index (0..K-1) of its category in the vocabulary. Segments whose category the
vocabulary does not contain are dropped (their pixels become ignore, like void), which is how a
model is trained on base classes only. Crowd segments (``iscrowd=1``) are never targets either.

The same reader serves the product's own COCO-panoptic files (autolabel outputs and review
exports list the original images by absolute path, classes matched by name, and an autolabel
output's ``score`` can void low-confidence segments): see :mod:`possam_label.data.sources`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from possam_label.data.sources import PanopticTarget, PanopticTargetDataset, TargetSegment, TrainingDataError, TrainingSource, image_size
from possam_label.io.panoptic_png import rgb2id
from possam_label.panoptic import keep_ids, score_passes

if TYPE_CHECKING:
    from possam_label.vocab import Vocabulary

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


class MissingFileError(FileNotFoundError, TrainingDataError):
    """A file the annotations refer to does not exist (both a FileNotFoundError and a ValueError)."""


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"panoptic JSON not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing or malformed {key!r} list")
    return data


def _absolute_file(name: Any, what: str, source: Path) -> Path:
    """An absolute ``file_name`` (autolabel outputs and exports list the original images so)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: {what} file_name must be a non-empty string, got {name!r}")
    path = Path(name)
    if not path.is_absolute():
        raise ValueError(f"{source}: {what} file_name {name!r} must be an absolute path (this layout lists the original images)")
    return path


def _safe_child(folder: Path, name: Any, what: str, source: Path) -> Path:
    """``folder / name`` for a plain relative file name; refuses absolute paths and '..'."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: {what} file_name must be a non-empty string, got {name!r}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{source}: {what} file_name {name!r} must be a relative path inside its folder")
    return folder / rel


class CocoPanopticSource(TrainingSource):
    """A COCO-panoptic folder as a :class:`~possam_label.data.sources.TrainingSource`.

    Args:
        json_path: panoptic JSON.
        image_dir: folder of the images named by ``images[].file_name``; None when those names
            are absolute paths (autolabel outputs and review exports list the originals so).
        panoptic_dir: folder of the id PNGs named by ``annotations[].file_name``.
        min_score: segments whose ``segments_info`` entry has a ``score`` below this become void
            (segments without a score are kept).
        kind: what the folder is ("coco_panoptic", "autolabel_output", "review_export", ...).
        category_key: "id" (ground truth: ids are the dataset's) or "name" (the product's outputs).
        fallback_categories: categories to use when the JSON has none.

    Raises (at construction): :class:`MissingFileError` (a FileNotFoundError and a ValueError)
    for a missing JSON, image, PNG or folder, naming it;
    ValueError for malformed JSON, an annotation without an image, or a segment whose
    category is not in the JSON's categories. :meth:`target` raises ValueError naming the PNG
    when its ids and ``segments_info`` disagree.
    """

    def __init__(
        self,
        json_path: PathLike,
        image_dir: Optional[PathLike],
        panoptic_dir: PathLike,
        min_score: Optional[float] = None,
        kind: str = "coco_panoptic",
        category_key: str = "id",
        fallback_categories: Optional[list[dict]] = None,
    ) -> None:
        # Absolute: the source travels to training workers that may run in another directory.
        self.json_path = Path(os.path.abspath(json_path))
        self.image_dir = Path(os.path.abspath(image_dir)) if image_dir is not None else None
        self.panoptic_dir = Path(os.path.abspath(panoptic_dir))
        self.min_score = min_score
        self.kind = kind
        self.category_key = category_key
        # The product's files (absolute image paths) are in the EXIF-oriented frame; COCO ground truth is not.
        self.exif_oriented = image_dir is None
        self.location = str(self.json_path.parent)
        data = _read_json(self.json_path)
        self._categories = self._checked_categories(data.get("categories"), fallback_categories)
        self.categories_by_id: dict[int, dict] = {int(c["id"]): c for c in self._categories}
        images_by_id: dict[Any, dict] = {}
        for j, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise ValueError(f"{self.json_path}: images[{j}] needs 'id' and 'file_name'")
            images_by_id[img["id"]] = img
        image_files = self._listing(self.image_dir, "image") if self.image_dir is not None else None
        png_files = self._listing(self.panoptic_dir, "panoptic")
        self._records: list[dict] = []
        num_below = 0
        for j, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or not isinstance(ann.get("segments_info"), list):
                raise ValueError(f"{self.json_path}: annotations[{j}] needs 'segments_info' (a list)")
            if ann.get("image_id") not in images_by_id:
                raise ValueError(
                    f"{self.json_path}: annotations[{j}] refers to image_id {ann.get('image_id')!r}, "
                    "which is not in 'images'"
                )
            img = images_by_id[ann["image_id"]]
            image_path, png_path = self._annotation_files(img, ann, image_files, png_files)
            segments = self._checked_segments(ann)
            ids = [s["id"] for s in segments]
            kept = [s for s in segments if s["score"] is None or bool(score_passes(np.array([s["score"]]), min_score)[0])]
            num_below += len(segments) - len(kept)
            self._records.append(
                {
                    "image_id": ann["image_id"],
                    "file_name": str(img["file_name"]),
                    "image_path": image_path,
                    "png_path": png_path,
                    "segments": kept,
                    "listed_ids": set(ids),  # every id of the PNG, kept or voided
                }
            )
        if num_below:
            logger.info("%s: %d segments scored below %s become void", self.json_path, num_below, min_score)
        unannotated = len(images_by_id) - len({r["image_id"] for r in self._records})
        if unannotated:
            logger.warning("%s: %d images have no annotation and are skipped", self.json_path, unannotated)

    def _checked_categories(self, categories: Any, fallback_categories: Optional[list[dict]]) -> list[dict]:
        """The JSON's ``categories`` (else ``fallback_categories``), each an object with an 'id'."""
        if categories is None:
            if fallback_categories is None:
                raise ValueError(f"{self.json_path}: no 'categories' and no vocabulary given")
            categories = fallback_categories
        if not isinstance(categories, list) or not all(isinstance(c, dict) and "id" in c for c in categories):
            raise ValueError(f"{self.json_path}: 'categories' must be a list of objects with an 'id'")
        return categories

    def _annotation_files(self, img: dict, ann: dict, image_files: Optional[set[str]], png_files: set[str]) -> tuple[Path, Path]:
        """(image path, PNG path) of an annotation, both checked to exist (``image_files`` and
        ``png_files``: :meth:`_listing` of the folders; None: the images are listed by absolute path)."""
        if self.image_dir is None:
            image_path = _absolute_file(img["file_name"], "image", self.json_path)
            if not image_path.is_file():
                raise MissingFileError(f"image file not found: {image_path} (listed in {self.json_path})")
        else:
            image_path = _safe_child(self.image_dir, img["file_name"], "image", self.json_path)
            if str(Path(img["file_name"])) not in image_files:
                raise MissingFileError(f"image file not found: {image_path} (listed in {self.json_path})")
        png_path = _safe_child(self.panoptic_dir, ann.get("file_name"), "annotation", self.json_path)
        if str(Path(ann["file_name"])) not in png_files:
            raise MissingFileError(f"panoptic PNG not found: {png_path} (listed in {self.json_path})")
        return image_path, png_path

    def _checked_segments(self, ann: dict) -> list[dict]:
        """The annotation's ``segments_info`` as {"id", "category_id", "iscrowd", "score"} dicts,
        with known categories and unique non-zero ids."""
        segments = []
        for k, seg in enumerate(ann["segments_info"]):
            if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
                raise ValueError(
                    f"{self.json_path}: {ann['file_name']}: segments_info[{k}] needs 'id' and 'category_id'"
                )
            if int(seg["category_id"]) not in self.categories_by_id:
                raise ValueError(
                    f"{self.json_path}: {ann['file_name']}: segment {seg['id']} has unknown "
                    f"category id {seg['category_id']}"
                )
            segments.append(
                {
                    "id": int(seg["id"]),
                    "category_id": int(seg["category_id"]),
                    "iscrowd": int(seg.get("iscrowd", 0)),
                    "score": float(seg["score"]) if seg.get("score") is not None else None,
                }
            )
        ids = [s["id"] for s in segments]
        if len(set(ids)) != len(ids) or 0 in ids:
            raise ValueError(f"{self.json_path}: {ann['file_name']}: segment ids must be unique and non-zero")
        return segments

    @staticmethod
    def _listing(folder: Path, what: str) -> set[str]:
        """Relative paths of the files under ``folder`` (one directory walk, not one stat per file)."""
        if not folder.is_dir():
            raise MissingFileError(f"{what} folder not found: {folder}")
        out = set()
        for root, _dirs, files in os.walk(folder):
            rel_root = Path(root).relative_to(folder)
            out.update(str(rel_root / f) for f in files)
        return out

    def categories(self) -> list[dict]:
        return list(self._categories)

    def __len__(self) -> int:
        return len(self._records)

    def load_id_map(self, index: int) -> np.ndarray:
        """(H, W) int32 panoptic ids of image ``index``, checked against its segments_info;
        segments below ``min_score`` are already void."""
        rec = self._records[index]
        path = rec["png_path"]
        try:
            with Image.open(path) as png:
                if png.mode != "RGB":
                    raise ValueError(f"{path}: panoptic PNG must be RGB, got mode {png.mode}")
                ids = rgb2id(np.asarray(png))
        except OSError as err:
            raise ValueError(f"{path}: cannot read panoptic PNG: {err}") from None
        present = set(np.unique(ids).tolist()) - {0}
        listed = rec["listed_ids"]
        if present - listed:
            raise ValueError(
                f"{path}: ids {sorted(present - listed)[:10]} appear in the PNG but not in segments_info"
            )
        if listed - present:
            raise ValueError(
                f"{path}: segments_info ids {sorted(listed - present)[:10]} do not appear in the PNG"
            )
        if len(rec["segments"]) != len(listed):
            ids = keep_ids(ids, [s["id"] for s in rec["segments"]])
        return ids.astype(np.int32, copy=False)

    def _segment(self, seg: dict) -> TargetSegment:
        category = self.categories_by_id[seg["category_id"]]
        return TargetSegment(
            id=seg["id"],
            category_id=seg["category_id"],
            category=str(category.get("name", seg["category_id"])),
            isthing=bool(int(category.get("isthing", 1))),
            iscrowd=bool(seg["iscrowd"]),
        )

    def target(self, index: int) -> PanopticTarget:
        rec = self._records[index]
        return PanopticTarget(
            image_path=rec["image_path"],
            image_id=rec["image_id"],
            file_name=rec["file_name"],
            id_map=self.load_id_map(index),
            segments=[self._segment(s) for s in rec["segments"]],
            label_path=rec["png_path"],
            exif_oriented=self.exif_oriented,
        )

    def segment_classes(self, index: int) -> list[tuple[str, int, bool]]:
        return [(s.category, s.category_id, s.iscrowd) for s in map(self._segment, self._records[index]["segments"])]

    def check_files(self, index: int) -> None:
        rec = self._records[index]
        size = image_size(rec["image_path"], self.exif_oriented)
        try:
            with Image.open(rec["png_path"]) as png:
                png_size, mode = png.size, png.mode
        except OSError as err:
            raise ValueError(f"{rec['png_path']}: cannot read panoptic PNG: {err}") from None
        if mode != "RGB":
            raise ValueError(f"{rec['png_path']}: panoptic PNG must be RGB, got mode {mode}")
        if png_size != size:
            raise ValueError(
                f"{rec['png_path']}: PNG is {png_size[0]}x{png_size[1]} but image {rec['image_path']} is {size[0]}x{size[1]}"
            )


def coco_panoptic_layout(root: PathLike) -> tuple[Path, Path, Path]:
    """``(json, images/, panoptic/)`` of a COCO-panoptic folder: ``root/panoptic.json`` (else the
    first ``panoptic*.json`` in ``root`` or ``root/annotations``), ``root/images/``, and
    ``root/panoptic/`` (else the folder named like the JSON)."""
    root = Path(root)
    json_path = root / "panoptic.json"
    if not json_path.is_file():
        candidates = sorted(root.glob("panoptic*.json")) + sorted((root / "annotations").glob("panoptic*.json"))
        if not candidates:
            raise MissingFileError(
                f"{root}: no panoptic.json (--data takes a COCO-panoptic folder: panoptic.json, images/, panoptic/; "
                "an autolabel output; a review export; or fiftyone://DATASET)"
            )
        json_path = candidates[0]
    panoptic_dir = root / "panoptic" if (root / "panoptic").is_dir() else json_path.with_suffix("")
    image_dir = root / "images"
    for path in (panoptic_dir, image_dir):
        if not path.is_dir():
            raise MissingFileError(f"{root}: missing folder {path}")
    return json_path, image_dir, panoptic_dir


class CocoPanopticDataset(PanopticTargetDataset):
    """Torch dataset of COCO-panoptic images with mask targets (a :class:`CocoPanopticSource`
    read by :class:`~possam_label.data.sources.PanopticTargetDataset`).

    Args:
        json_path: panoptic JSON.
        image_dir: folder of the images named by ``images[].file_name``.
        panoptic_dir: folder of the id PNGs named by ``annotations[].file_name``.
        vocabulary: classes to train on; default: the JSON's ``categories`` (all of them).
        transform: optional callable ``sample -> sample`` applied last (e.g.
            :class:`possam_label.data.augment.LargeScaleJitter`).

    A sample is a dict:
        ``image``: uint8 (3, H, W); ``labels``: int64 (N,) vocabulary indices;
        ``masks``: bool (N, H, W), pairwise disjoint; ``ignore``: bool (H, W), pixels that are
        void, crowd or of a category outside the vocabulary; ``image_id``; ``file_name`` (image).

    Raises: as :class:`CocoPanopticSource`; at ``__getitem__`` also ValueError naming the PNG
    when image and PNG sizes differ.
    """

    def __init__(
        self,
        json_path: PathLike,
        image_dir: PathLike,
        panoptic_dir: PathLike,
        vocabulary: Optional["Vocabulary"] = None,
        transform: Optional[Callable[[dict], dict]] = None,
    ) -> None:
        source = CocoPanopticSource(
            json_path, image_dir, panoptic_dir,
            fallback_categories=vocabulary.to_coco_categories() if vocabulary is not None else None,
        )
        super().__init__(source, vocabulary, transform)
        self.json_path, self.image_dir, self.panoptic_dir = source.json_path, source.image_dir, source.panoptic_dir
        self.categories = source.categories_by_id
        # category id -> vocabulary index, or -1 for categories the vocabulary does not have.
        self._label_of_category = {cid: self._label(str(c.get("name", cid)), cid) for cid, c in self.categories.items()}
        dropped = sorted(cid for cid, idx in self._label_of_category.items() if idx < 0)
        if dropped:
            logger.info("%s: %d categories are not in the vocabulary and become ignore: %s",
                        self.json_path, len(dropped), dropped[:20])

    def label_of_category(self, category_id: int) -> int:
        """Vocabulary index of a dataset category id, or -1 when the vocabulary lacks it."""
        return self._label_of_category[int(category_id)]

    def load_id_map(self, index: int) -> np.ndarray:
        """(H, W) int32 panoptic ids of sample ``index``, checked against its segments_info."""
        return self.source.load_id_map(index)


def collate(batch: Sequence[dict]) -> dict[str, list]:
    """Batch samples as lists per key (images may differ in size, N differs per image)."""
    if not batch:
        return {}
    return {key: [sample[key] for sample in batch] for key in batch[0]}
