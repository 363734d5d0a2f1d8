"""COCO-panoptic dataset reader (detectron2 layout) for training and evaluation.

Layout: a panoptic JSON (``images``, ``annotations`` with ``segments_info``, ``categories``),
a folder of RGB images and a folder of RGB-encoded id PNGs (``id = R + 256 G + 256^2 B``,
0 = void). Each annotation's ``file_name`` names its PNG; the image's ``file_name`` (from
``images``) names the photo.

Targets are expressed in a :class:`~possam_label.vocab.Vocabulary`: a segment's label is the
contiguous index (0..K-1) of its category in the vocabulary. Segments whose category the
vocabulary does not contain are dropped (their pixels become ignore, like void), which is how a
model is trained on base classes only. Crowd segments (``iscrowd=1``) are never targets either.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from possam_label.io.panoptic_png import rgb2id

if TYPE_CHECKING:
    from possam_label.vocab import Vocabulary

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


class MissingFileError(FileNotFoundError, ValueError):
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


def _safe_child(folder: Path, name: Any, what: str, source: Path) -> Path:
    """``folder / name`` for a plain relative file name; refuses absolute paths and '..'."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: {what} file_name must be a non-empty string, got {name!r}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{source}: {what} file_name {name!r} must be a relative path inside its folder")
    return folder / rel


class CocoPanopticDataset(Dataset):
    """Torch dataset of COCO-panoptic images with mask targets.

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

    Raises (at construction): :class:`MissingFileError` (a FileNotFoundError and a ValueError)
    for a missing JSON, image, PNG or folder, naming it;
    ValueError for malformed JSON, an annotation without an image, or a segment whose
    category is not in the JSON's categories. At ``__getitem__``: ValueError naming the PNG
    when its ids and ``segments_info`` disagree, or when image and PNG sizes differ.
    """

    def __init__(
        self,
        json_path: PathLike,
        image_dir: PathLike,
        panoptic_dir: PathLike,
        vocabulary: Optional["Vocabulary"] = None,
        transform: Optional[Callable[[dict], dict]] = None,
    ) -> None:
        self.json_path = Path(json_path)
        self.image_dir = Path(image_dir)
        self.panoptic_dir = Path(panoptic_dir)
        self.transform = transform
        data = _read_json(self.json_path)

        categories = data.get("categories")
        if categories is None:
            if vocabulary is None:
                raise ValueError(f"{self.json_path}: no 'categories' and no vocabulary given")
            categories = vocabulary.to_coco_categories()
        if not isinstance(categories, list) or not all(isinstance(c, dict) and "id" in c for c in categories):
            raise ValueError(f"{self.json_path}: 'categories' must be a list of objects with an 'id'")
        self.categories: dict[int, dict] = {int(c["id"]): c for c in categories}
        if vocabulary is None:
            from possam_label.vocab import Vocabulary

            try:
                vocabulary = Vocabulary.from_coco_categories(categories)
            except ValueError as err:
                raise ValueError(f"{self.json_path}: {err}") from None
        self.vocabulary = vocabulary
        # category id -> vocabulary index, or -1 for categories the vocabulary does not have.
        self._label_of_category = {
            cid: (vocabulary.category_ids.index(cid) if cid in vocabulary.category_ids else -1)
            for cid in self.categories
        }
        dropped = sorted(cid for cid, idx in self._label_of_category.items() if idx < 0)
        if dropped:
            logger.info("%s: %d categories are not in the vocabulary and become ignore: %s",
                        self.json_path, len(dropped), dropped[:20])

        images_by_id: dict[Any, dict] = {}
        for j, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise ValueError(f"{self.json_path}: images[{j}] needs 'id' and 'file_name'")
            images_by_id[img["id"]] = img
        image_files = self._listing(self.image_dir, "image")
        png_files = self._listing(self.panoptic_dir, "panoptic")
        self._records: list[dict] = []
        for j, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or not isinstance(ann.get("segments_info"), list):
                raise ValueError(f"{self.json_path}: annotations[{j}] needs 'segments_info' (a list)")
            if ann.get("image_id") not in images_by_id:
                raise ValueError(
                    f"{self.json_path}: annotations[{j}] refers to image_id {ann.get('image_id')!r}, "
                    "which is not in 'images'"
                )
            img = images_by_id[ann["image_id"]]
            image_path = _safe_child(self.image_dir, img["file_name"], "image", self.json_path)
            png_path = _safe_child(self.panoptic_dir, ann.get("file_name"), "annotation", self.json_path)
            if str(Path(img["file_name"])) not in image_files:
                raise MissingFileError(f"image file not found: {image_path} (listed in {self.json_path})")
            if str(Path(ann["file_name"])) not in png_files:
                raise MissingFileError(f"panoptic PNG not found: {png_path} (listed in {self.json_path})")
            segments = []
            for k, seg in enumerate(ann["segments_info"]):
                if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
                    raise ValueError(
                        f"{self.json_path}: {ann['file_name']}: segments_info[{k}] needs 'id' and 'category_id'"
                    )
                if int(seg["category_id"]) not in self.categories:
                    raise ValueError(
                        f"{self.json_path}: {ann['file_name']}: segment {seg['id']} has unknown "
                        f"category id {seg['category_id']}"
                    )
                segments.append(
                    {"id": int(seg["id"]), "category_id": int(seg["category_id"]), "iscrowd": int(seg.get("iscrowd", 0))}
                )
            ids = [s["id"] for s in segments]
            if len(set(ids)) != len(ids) or 0 in ids:
                raise ValueError(f"{self.json_path}: {ann['file_name']}: segment ids must be unique and non-zero")
            self._records.append(
                {
                    "image_id": ann["image_id"],
                    "file_name": str(img["file_name"]),
                    "image_path": image_path,
                    "png_path": png_path,
                    "segments": segments,
                }
            )
        unannotated = len(images_by_id) - len({r["image_id"] for r in self._records})
        if unannotated:
            logger.warning("%s: %d images have no annotation and are skipped", self.json_path, unannotated)

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

    def __len__(self) -> int:
        return len(self._records)

    def label_of_category(self, category_id: int) -> int:
        """Vocabulary index of a dataset category id, or -1 when the vocabulary lacks it."""
        return self._label_of_category[int(category_id)]

    def load_id_map(self, index: int) -> np.ndarray:
        """(H, W) int32 panoptic ids of sample ``index``, checked against its segments_info."""
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
        listed = {s["id"] for s in rec["segments"]}
        if present - listed:
            raise ValueError(
                f"{path}: ids {sorted(present - listed)[:10]} appear in the PNG but not in segments_info"
            )
        if listed - present:
            raise ValueError(
                f"{path}: segments_info ids {sorted(listed - present)[:10]} do not appear in the PNG"
            )
        return ids

    def __getitem__(self, index: int) -> dict:
        rec = self._records[index]
        ids = self.load_id_map(index)
        try:
            with Image.open(rec["image_path"]) as img:
                image = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise ValueError(f"{rec['image_path']}: cannot read image: {err}") from None
        if image.shape[:2] != ids.shape:
            raise ValueError(
                f"{rec['png_path']}: PNG is {ids.shape[1]}x{ids.shape[0]} but image {rec['image_path']} "
                f"is {image.shape[1]}x{image.shape[0]}"
            )
        labels, masks = [], []
        ignore = ids == 0
        for seg in rec["segments"]:
            mask = ids == seg["id"]
            label = self._label_of_category[seg["category_id"]]
            if seg["iscrowd"] or label < 0:
                ignore |= mask
                continue
            labels.append(label)
            masks.append(mask)
        h, w = ids.shape
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.bool),
            "ignore": torch.from_numpy(ignore),
            "image_id": rec["image_id"],
            "file_name": rec["file_name"],
        }
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def collate(batch: Sequence[dict]) -> dict[str, list]:
    """Batch samples as lists per key (images may differ in size, N differs per image)."""
    if not batch:
        return {}
    return {key: [sample[key] for sample in batch] for key in batch[0]}
