"""``fiftyone://DATASET[/VIEW]`` as a training source: the labels as reviewed.

The dataset (or its saved view) is written with the review plugin's own export
(:func:`~possam_label.fiftyone.export.export_from_dataset`, panoptic format) into a snapshot folder,
which the training workers then read like any review export; they never need the FiftyOne
database, and the snapshot records exactly what a run trained on. The export's rules are the
training rules:

* relabeled segments carry their new class (a class a reviewer introduced is in the category
  table, so it extends the training vocabulary);
* rejected segments, and segments deleted in review, are void (ignored, not background);
* unreviewed labels (neither accepted nor relabeled) scored below ``min_score`` are void;
* ``reviewed_only`` keeps only the samples marked reviewed.

Importing this module registers the ``fiftyone`` scheme of
:func:`possam_label.data.sources.open_training_source`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import fiftyone as fo
from fiftyone import ViewField as F

from ..data.coco_panoptic import CocoPanopticSource
from ..data.sources import TrainingDataError, register_source_scheme
from .dataset import DEFAULT_LABEL_FIELD, DatasetNotFoundError, ReviewFields, open_dataset
from .export import ExportOptions, export_from_dataset

logger = logging.getLogger(__name__)

SCHEME = "fiftyone"


def resolve_samples(location: str) -> tuple[fo.Dataset, Any, Optional[str]]:
    """``(dataset, samples, view name)`` of ``DATASET`` or ``DATASET/VIEW`` (a saved view).

    A name that is itself a dataset wins over a dataset/view split (dataset names may hold '/').
    """
    name = location.strip().strip("/")
    if not name:
        raise TrainingDataError("fiftyone://: no dataset name (fiftyone://DATASET or fiftyone://DATASET/VIEW)")
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
        return dataset, dataset, None
    dataset_name, sep, view_name = name.rpartition("/")
    if sep and fo.dataset_exists(dataset_name):
        dataset = fo.load_dataset(dataset_name)
        if not dataset.has_saved_view(view_name):
            views = ", ".join(dataset.list_saved_views()) or "none"
            raise TrainingDataError(f"fiftyone://{name}: dataset {dataset_name!r} has no saved view {view_name!r} (saved views: {views})")
        return dataset, dataset.load_saved_view(view_name), view_name
    try:
        open_dataset(name)
    except DatasetNotFoundError as err:
        raise TrainingDataError(f"fiftyone://{name}: {err}") from None
    raise TrainingDataError(f"fiftyone://{name}: no such dataset")


def reviewer_classes(samples: Any, label_field: str) -> list[str]:
    """Classes reviewers gave to segments (the labels of relabeled Detections), sorted."""
    relabeled = samples.filter_labels(label_field, F("original_label").exists())
    return sorted(str(c) for c in relabeled.distinct(f"{label_field}.detections.label") if c)


class FiftyOneTrainingSource(CocoPanopticSource):
    """The reviewed labels of a FiftyOne dataset or saved view, snapshotted to a folder.

    Args:
        location: ``DATASET`` or ``DATASET/VIEW``.
        snapshot_dir: where the export is written (replaced if it holds a previous export);
            default: a new temporary folder.
        label_field: the possam-label Detections field.
        min_score: unreviewed labels scored below this become void (None: keep all).
        reviewed_only: only samples marked reviewed.
    Raises:
        TrainingDataError: no such dataset or view, no label field, or nothing to export.
    """

    def __init__(
        self,
        location: str,
        snapshot_dir: Union[str, os.PathLike, None] = None,
        label_field: str = DEFAULT_LABEL_FIELD,
        min_score: Optional[float] = None,
        reviewed_only: bool = False,
    ) -> None:
        dataset, samples, view_name = resolve_samples(location)
        fields = ReviewFields(label_field)
        where = f"fiftyone://{location.strip().strip('/')}"
        if not samples.has_field(fields.labels):
            raise TrainingDataError(f"{where}: no label field {label_field!r} (load an autolabel output into the dataset first)")
        if reviewed_only:
            samples = samples.match(F(fields.reviewed) == True)  # noqa: E712
            if len(samples) == 0:
                raise TrainingDataError(f"{where}: no sample is marked reviewed (field {fields.reviewed!r})")
        if len(samples.exists(fields.labels)) == 0:
            raise TrainingDataError(f"{where}: no images to train on: no sample has {label_field!r} labels")
        snapshot = Path(snapshot_dir) if snapshot_dir is not None else Path(tempfile.mkdtemp(prefix="possam-fiftyone-train-"))
        options = ExportOptions(formats=["panoptic"], min_score=min_score, reviewed_only=False, overwrite=True)
        summary = export_from_dataset(samples, snapshot, label_field=label_field, options=options, progress=False)
        logger.info("%s: snapshot of %d images, %d segments in %s", where, summary.num_images, summary.num_segments, snapshot)
        self._reviewer_classes = reviewer_classes(samples, label_field)
        super().__init__(snapshot / "panoptic.json", None, snapshot / "panoptic", kind="fiftyone", category_key="name")
        self.location = where
        self.dataset_name, self.view_name, self.label_field = dataset.name, view_name, label_field
        self.snapshot_dir = snapshot

    def reviewer_classes(self) -> list[str]:
        return list(self._reviewer_classes)

    def for_workers(self) -> CocoPanopticSource:
        """The snapshot as a plain review export: workers need no FiftyOne database."""
        source = CocoPanopticSource(self.json_path, None, self.panoptic_dir, kind="review_export", category_key="name")
        source.location = f"{self.location} (snapshot {self.snapshot_dir})"
        return source


def open_fiftyone_source(location: str, min_score: Optional[float] = None, workdir: Union[str, os.PathLike, None] = None,
                         label_field: str = DEFAULT_LABEL_FIELD, reviewed_only: bool = False, **_: Any) -> FiftyOneTrainingSource:
    """The factory of the ``fiftyone://`` scheme (``workdir``: the snapshot folder)."""
    return FiftyOneTrainingSource(location, workdir, label_field=label_field, min_score=min_score, reviewed_only=reviewed_only)


register_source_scheme(SCHEME, open_fiftyone_source)
