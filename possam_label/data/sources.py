"""Training sources: what ``pipelines.train --data`` reads, and the one way targets are built from it.

Every source yields, per image, a :class:`PanopticTarget`: the image path, an (H, W) id map
(0 = void), the segments with their class names, and the void mask (ignored pixels: never a
target, never background). :class:`PanopticTargetDataset` turns targets into the training samples
of every source alike (labels in a training vocabulary, disjoint masks, ``ignore``).

Sources, chosen by :func:`open_training_source` from the ``--data`` string:

==========================  ==============================================================================
``DIR`` (COCO panoptic)      ``panoptic.json`` + ``images/`` + ``panoptic/``: ground truth as it is
``DIR`` (autolabel output)   ``run.json`` + ``panoptic.json`` + ``panoptic/``: pseudo-labels; segments
                             scored below ``min_score`` become void
``DIR`` (review export)      ``export.json`` + ``panoptic.json`` + ``panoptic/`` (the review plugin's
                             export: corrections applied, rejected labels already void)
``SCHEME://...``             a source registered with :func:`register_source_scheme`; ``fiftyone://``
                             is registered by :mod:`possam_label.fiftyone.training_source` (this
                             package never imports FiftyOne)
==========================  ==============================================================================

Classes: a COCO-panoptic ground truth maps its categories to the training vocabulary by category id
(its ids are the dataset's, as before); the product's own outputs (autolabel, export, FiftyOne) by
class name, since their ids are those of one run or dataset and reviewers add classes.

A source that cannot train (no image, no segment in the vocabulary, a missing or unreadable file)
fails :meth:`TrainingSource.check` with a :class:`TrainingDataError` naming the cause, before any
training worker starts.
"""

from __future__ import annotations

import abc
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from possam_label.vocab import Vocabulary

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
CATEGORY_KEYS = ("id", "name")  # how a source's classes are found in a training vocabulary


class TrainingDataError(ValueError):
    """A training source that cannot train; the message names the source and the cause."""


@dataclass(frozen=True)
class TargetSegment:
    """One segment of a target: its id in the id map and its class."""

    id: int
    category_id: int  # id in the source's categories
    category: str  # class name
    isthing: bool
    iscrowd: bool = False


@dataclass
class PanopticTarget:
    """What a source gives for one image.

    Attributes:
        image_path: the image file.
        image_id: the source's id of the image.
        file_name: the image's name as the source lists it.
        id_map: (H, W) int32 segment ids, 0 = void.
        segments: the segments of ``id_map`` (every non-zero id has one).
        label_path: the file the id map came from (for messages), if any.
        exif_oriented: the id map is in the image's EXIF-oriented frame (the product's outputs
            are; COCO ground truth is in the stored pixel frame).
    """

    image_path: Path
    image_id: Any
    file_name: str
    id_map: np.ndarray
    segments: list[TargetSegment]
    label_path: Optional[Path] = None
    exif_oriented: bool = False

    @property
    def void(self) -> np.ndarray:
        """(H, W) bool: pixels that are no target and no background (void and crowd regions)."""
        void = self.id_map == 0
        for seg in self.segments:
            if seg.iscrowd:
                void |= self.id_map == seg.id
        return void


@dataclass
class SourceSummary:
    """What :meth:`TrainingSource.check` found."""

    kind: str
    location: str
    num_images: int
    num_segments: int  # segments with a class in the vocabulary
    per_class: dict[str, int] = field(default_factory=dict)


class TrainingSource(abc.ABC):
    """Images with panoptic targets, for training or validation.

    Subclasses set ``kind`` and ``location`` and implement :meth:`categories`, :meth:`__len__`,
    :meth:`target` and :meth:`segment_classes`. A source is picklable (it travels to the training
    workers); one whose data lives in a service the workers may not reach returns a file-backed
    copy from :meth:`for_workers`.
    """

    kind: str = "source"
    location: str = ""
    category_key: str = "name"  # "id" or "name": how classes map into a vocabulary

    @abc.abstractmethod
    def categories(self) -> list[dict[str, Any]]:
        """The classes as COCO categories (``id``, ``name``, ``isthing``, optional ``synonyms``, ``color``)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        ...

    @abc.abstractmethod
    def target(self, index: int) -> PanopticTarget:
        """The target of image ``index``; ValueError naming the file when it cannot be read."""

    @abc.abstractmethod
    def segment_classes(self, index: int) -> list[tuple[str, int, bool]]:
        """``(class name, category id, iscrowd)`` of each segment of image ``index``, without reading pixels."""

    @abc.abstractmethod
    def check_files(self, index: int) -> None:
        """Raise ValueError naming the file when image ``index`` or its label file is missing or unreadable."""

    def reviewer_classes(self) -> list[str]:
        """Classes a reviewer introduced (they extend any training vocabulary given explicitly)."""
        return []

    def for_workers(self) -> "TrainingSource":
        """The source the training workers read (self, unless it lives in a service)."""
        return self

    def describe(self) -> str:
        return f"{self.kind} {self.location}"

    def label_of(self, vocabulary: "Vocabulary") -> Callable[[str, int], int]:
        """``(class name, category id) -> vocabulary index`` (-1: not in the vocabulary)."""
        if self.category_key == "id":
            index = {cid: i for i, cid in enumerate(vocabulary.category_ids)}
            return lambda name, cid: index.get(int(cid), -1)

        def by_name(name: str, cid: int) -> int:
            try:
                return vocabulary.index_of(name)
            except KeyError:
                return -1

        return by_name

    def check(self, vocabulary: "Vocabulary", max_problems: int = 10) -> SourceSummary:
        """Make sure the source can train with ``vocabulary``: it has images, segments of the
        vocabulary's classes, and every file exists and can be read (headers only).

        Raises:
            TrainingDataError: naming the source and the cause (up to ``max_problems`` files).
        """
        where = self.describe()
        if len(self) == 0:
            raise TrainingDataError(f"{where}: no images to train on")
        label = self.label_of(vocabulary)
        per_class: dict[str, int] = {}
        problems: list[str] = []
        num_problems = 0
        num_segments = 0
        num_any = 0
        for index in range(len(self)):
            try:
                self.check_files(index)
            except (ValueError, OSError) as err:
                num_problems += 1
                if len(problems) < max_problems:
                    problems.append(str(err))
                continue
            for name, cid, iscrowd in self.segment_classes(index):
                num_any += 0 if iscrowd else 1
                if not iscrowd and label(name, cid) >= 0:
                    num_segments += 1
                    per_class[name] = per_class.get(name, 0) + 1
        if num_problems:
            raise TrainingDataError(
                f"{where}: {num_problems} of {len(self)} images cannot be read:\n  " + "\n  ".join(problems)
                + ("\n  ..." if num_problems > len(problems) else "")
            )
        if num_segments == 0:
            if num_any == 0:
                cause = "every image is void (no segment; with a score threshold, every segment is below it)"
            else:
                cause = f"none of its {num_any} segments has a class of the training vocabulary ({', '.join(vocabulary.names[:10])}{' ...' if len(vocabulary) > 10 else ''})"
            raise TrainingDataError(f"{where}: no segments to train on: {cause}")
        return SourceSummary(self.kind, self.location, len(self), num_segments, per_class)


class PanopticTargetDataset(Dataset):
    """Torch dataset of a :class:`TrainingSource`'s targets in a training vocabulary.

    Args:
        source: the images and targets.
        vocabulary: classes to train on; default: the source's categories.
        transform: optional callable ``sample -> sample`` applied last (e.g.
            :class:`possam_label.data.augment.LargeScaleJitter`).

    A sample is a dict:
        ``image``: uint8 (3, H, W); ``labels``: int64 (N,) vocabulary indices;
        ``masks``: bool (N, H, W), pairwise disjoint; ``ignore``: bool (H, W), pixels that are
        void, crowd or of a class outside the vocabulary; ``image_id``; ``file_name`` (image).
    """

    def __init__(self, source: TrainingSource, vocabulary: Optional["Vocabulary"] = None, transform: Optional[Callable[[dict], dict]] = None) -> None:
        self.source = source
        self.transform = transform
        if vocabulary is None:
            from possam_label.vocab import Vocabulary

            try:
                vocabulary = Vocabulary.from_coco_categories(source.categories())
            except ValueError as err:
                raise ValueError(f"{source.describe()}: {err}") from None
        self.vocabulary = vocabulary
        self._label = source.label_of(vocabulary)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        target = self.source.target(index)
        image = read_rgb(target.image_path, target.exif_oriented)
        ids = target.id_map
        if image.shape[:2] != ids.shape:
            raise ValueError(
                f"{target.label_path or target.image_path}: PNG is {ids.shape[1]}x{ids.shape[0]} but image {target.image_path} "
                f"is {image.shape[1]}x{image.shape[0]}"
            )
        labels, masks = [], []
        ignore = ids == 0
        for seg in target.segments:
            mask = ids == seg.id
            label = self._label(seg.category, seg.category_id)
            if seg.iscrowd or label < 0:
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
            "image_id": target.image_id,
            "file_name": target.file_name,
        }
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def read_rgb(path: PathLike, exif_oriented: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image, turned by its EXIF orientation when ``exif_oriented``."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            return np.asarray((ImageOps.exif_transpose(img) if exif_oriented else img).convert("RGB"))
    except OSError as err:
        raise ValueError(f"{path}: cannot read image: {err}") from None


def image_size(path: PathLike, exif_oriented: bool = False, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` from the header (swapped for EXIF orientations 5-8 when ``exif_oriented``)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1) if exif_oriented else 1
    except OSError as err:
        raise ValueError(f"{path}: cannot read {what}: {err}") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# ------------------------------------------------------------------------------------ resolver
SchemeFactory = Callable[..., TrainingSource]
_SCHEMES: dict[str, SchemeFactory] = {}


def register_source_scheme(scheme: str, factory: SchemeFactory) -> None:
    """Make ``scheme://rest`` strings open with ``factory(rest, **options)``."""
    _SCHEMES[scheme] = factory


def source_scheme(spec: PathLike) -> Optional[str]:
    """The ``scheme`` of a ``scheme://...`` string, else None."""
    text = os.fspath(spec)
    head, sep, _ = text.partition("://")
    return head if sep and head.isidentifier() else None


def open_training_source(spec: Union[PathLike, TrainingSource], *, min_score: Optional[float] = None, **options: Any) -> TrainingSource:
    """The training source a ``--data`` string names (see the module doc).

    Args:
        spec: a folder, or ``scheme://...`` for a registered scheme; a source is returned as is.
        min_score: segments scored below this become void (sources with scores: autolabel
            outputs; FiftyOne: unreviewed labels only).
        options: passed to a scheme's factory (e.g. ``label_field``, ``reviewed_only``, ``workdir``).
    Raises:
        TrainingDataError: an unknown scheme or a folder that is none of the layouts.
    """
    if isinstance(spec, TrainingSource):
        return spec
    if min_score is not None and not 0.0 <= float(min_score) <= 1.0:
        raise TrainingDataError(f"min_score must be in [0, 1], got {min_score}")
    scheme = source_scheme(spec)
    if scheme is not None:
        if scheme not in _SCHEMES:
            known = ", ".join(f"{s}://" for s in sorted(_SCHEMES)) or "none registered"
            raise TrainingDataError(f"{spec}: unknown data scheme {scheme!r} (known: {known})")
        return _SCHEMES[scheme](os.fspath(spec)[len(scheme) + 3 :], min_score=min_score, **options)
    return open_folder_source(spec, min_score=min_score)


def open_folder_source(root: PathLike, min_score: Optional[float] = None) -> TrainingSource:
    """The source of a folder: an autolabel output (``run.json``), a review export (``export.json``)
    or a COCO-panoptic folder (``panoptic.json``, ``images/``, ``panoptic/``)."""
    from .autolabel_source import AutolabelOutputSource
    from .coco_panoptic import CocoPanopticSource, MissingFileError, coco_panoptic_layout

    root = Path(root)
    if not root.is_dir():
        raise TrainingDataError(f"{root}: no such folder (--data takes a folder or fiftyone://DATASET)")
    if (root / "run.json").is_file():
        return AutolabelOutputSource(root, min_score=min_score)
    if (root / "export.json").is_file():
        if not (root / "panoptic.json").is_file():
            raise TrainingDataError(f"{root}: review export without panoptic.json: it was exported without the panoptic format")
        if not (root / "panoptic").is_dir():
            raise MissingFileError(f"{root}: missing folder {root / 'panoptic'}")
        return CocoPanopticSource(root / "panoptic.json", None, root / "panoptic", min_score=min_score, kind="review_export", category_key="name")
    return CocoPanopticSource(*coco_panoptic_layout(root), min_score=min_score)
