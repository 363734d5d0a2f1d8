"""What a heads training run trains on: the training source of a ``--data`` value, its
vocabulary and the dataset of augmented samples."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import PosSAMConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainData:
    """A COCO-panoptic training set (detectron2 layout)."""

    json_path: str
    image_dir: str
    panoptic_dir: str

    @classmethod
    def from_dir(cls, root: str | Path) -> "TrainData":
        """``root/panoptic.json``, ``root/images/``, ``root/panoptic/`` (the layout of our writers)."""
        from ..data.coco_panoptic import coco_panoptic_layout

        return cls(*(str(p) for p in coco_panoptic_layout(root)))

    def source(self) -> Any:
        """This folder as a :class:`~possam_label.data.sources.TrainingSource`."""
        from ..data.coco_panoptic import CocoPanopticSource

        return CocoPanopticSource(self.json_path, self.image_dir, self.panoptic_dir)


def resolve_training_source(
    spec: Any,
    *,
    min_score: Optional[float] = None,
    workdir: Optional[str | Path] = None,
    label_field: str = "possam",
    reviewed_only: bool = False,
) -> Any:
    """The :class:`~possam_label.data.sources.TrainingSource` of a ``--data`` value: a folder
    (COCO panoptic, autolabel output, review export), ``fiftyone://DATASET[/VIEW]`` (snapshotted
    into ``workdir``), a :class:`TrainData` or a source."""
    from ..data.sources import TrainingSource, open_training_source, source_scheme

    if isinstance(spec, TrainingSource):
        return spec
    if isinstance(spec, TrainData):
        return spec.source()
    if source_scheme(spec) == "fiftyone":
        from ..fiftyone import training_source  # noqa: F401  (registers the scheme; needs FiftyOne)
    return open_training_source(spec, min_score=min_score, workdir=workdir, label_field=label_field, reviewed_only=reviewed_only)


def with_reference_synonyms(vocabulary: Any, references: list[Any]) -> Any:
    """Classes listed by name only (exports keep no synonyms) take the synonyms of the same class
    in a reference vocabulary (the config's), so their text embeddings are the ones labeling used."""
    from ..vocab import Vocabulary

    synonyms = list(vocabulary.synonyms)
    changed = False
    for i, (name, syns) in enumerate(zip(vocabulary.names, vocabulary.synonyms)):
        if len(syns) > 1:
            continue
        for reference in references:
            try:
                j = reference.index_of(name)
            except KeyError:
                continue
            if reference.names[j].casefold() == name.casefold() and len(reference.synonyms[j]) > 1:
                synonyms[i] = (name,) + tuple(s for s in reference.synonyms[j] if s.casefold() != name.casefold())
                changed = True
                break
    if not changed:
        return vocabulary
    return Vocabulary(names=vocabulary.names, synonyms=tuple(synonyms), isthing=vocabulary.isthing, category_ids=vocabulary.category_ids, colors=vocabulary.colors)


def training_vocabulary(data: Any, spec: Optional[str] = None, references: Optional[list[Any]] = None) -> Any:
    """The vocabulary a run trains on: ``spec`` (``load_vocabulary``) extended with the classes
    reviewers introduced, or (no spec) the source's categories, new classes included.

    Args:
        data: a :class:`TrainData` or a training source.
        references: vocabularies whose synonyms fill in classes the source lists by name only.
    """
    from ..vocab import Vocabulary, load_vocabulary

    source = resolve_training_source(data)
    categories = source.categories()
    if spec is None:
        vocabulary = Vocabulary.from_coco_categories(categories)
        return with_reference_synonyms(vocabulary, references or [])
    vocabulary = load_vocabulary(spec)
    new = [name for name in source.reviewer_classes() if _index_or_none(vocabulary, name) is None]
    if not new:
        return vocabulary
    by_name = {str(c.get("name")): c for c in categories}
    extra = Vocabulary.from_coco_categories([by_name[n] for n in new if n in by_name])
    logger.info("classes introduced in review extend the training vocabulary: %s", ", ".join(extra.names))
    taken = set(vocabulary.category_ids)
    next_id = max(taken, default=0) + 1
    ids = []
    for cid in extra.category_ids:
        if cid in taken:
            cid, next_id = next_id, next_id + 1
        taken.add(cid)
        ids.append(cid)
    return Vocabulary(
        names=vocabulary.names + extra.names,
        synonyms=vocabulary.synonyms + extra.synonyms,
        isthing=vocabulary.isthing + extra.isthing,
        category_ids=vocabulary.category_ids + tuple(ids),
        colors=vocabulary.colors + extra.colors,
    )


def _index_or_none(vocabulary: Any, name: str) -> Optional[int]:
    try:
        return vocabulary.index_of(name)
    except KeyError:
        return None


def build_dataset(cfg: PosSAMConfig, data: Any, vocabulary: Any, seed: int, augment: bool = True):
    """The training dataset of ``data`` (a :class:`TrainData` or a training source): large-scale
    jitter to the SAM input size, or (``augment=False``) SAM's resize-longest-side-and-pad."""
    from ..data.augment import LargeScaleJitter, ResizeLongestSidePad
    from ..data.sources import PanopticTargetDataset

    size = cfg.sam.resolved().img_size
    if augment:
        transform = LargeScaleJitter(size, cfg.train.lsj_min_scale, cfg.train.lsj_max_scale, seed=seed)
    else:
        transform = ResizeLongestSidePad(size)
    return PanopticTargetDataset(resolve_training_source(data), vocabulary=vocabulary, transform=transform)
