"""What every review correction shares: statuses, the selection, the log entry, the semantic map.

The plugin's corrections (:mod:`.corrections`, :mod:`.mask_tools`, :mod:`.auto_accept`) and the
editor's (:mod:`.editor_sync`) record a change the same way:

* decisions set ``review_status`` (one of :data:`REVIEW_TAGS`), ``corrected_at`` and a label tag of
  the same name (:func:`set_status`);
* each sample's ``<field>_corrections`` list logs every action (:func:`append_log`: label id,
  segment id, before and after as :func:`label_snapshot`, UTC time from :func:`utc_now`);
* ``<field>_semantic`` is repainted from the labels that are not rejected (:func:`repaint_semantic`),
  so it always shows what an export will contain.

Selections use the App's format (``ctx.selected_labels``): dicts with ``sample_id``, ``label_id``
and ``field``; ``(sample_id, label_id)`` pairs are accepted too (:func:`group_selection`).
"""

from __future__ import annotations

import datetime as _dt
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import bson
import numpy as np

import fiftyone as fo

from .convert import category_map, detections_to_prediction, label_attr
from ..vocab import Vocabulary
from .dataset import ReviewFields

ACCEPTED = "accepted"
REJECTED = "rejected"
RELABELED = "relabeled"
EDITED = "edited"  # mask or box changed by a reviewer (App editor, SAM tools, merge, split)
ADDED = "added"  # a label a reviewer drew
AUTO_ACCEPTED = "auto_accepted"  # accepted in bulk above a threshold of measured precision
REVIEW_TAGS = (ACCEPTED, REJECTED, RELABELED, EDITED, ADDED, AUTO_ACCEPTED)
# Statuses whose labels a reviewer stands behind: exports keep them whatever their confidence.
VERIFIED_STATUSES = frozenset({ACCEPTED, RELABELED, EDITED, ADDED, AUTO_ACCEPTED})

LabelSelection = Union[Mapping[str, Any], Sequence[str]]


@dataclass
class CorrectionResult:
    """What a correction did."""

    action: str
    num_labels: int = 0
    num_samples: int = 0
    skipped_other_fields: int = 0
    new_class: Optional[str] = None
    label_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def utc_now() -> _dt.datetime:
    # FiftyOne stores naive UTC datetimes; keep them naive-UTC so comparisons after reload match.
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None, microsecond=0)


def group_selection(selected: Iterable[LabelSelection], label_field: str) -> tuple["OrderedDict[str, list[str]]", int]:
    """{sample_id: [label_id, ...]} of the labels of ``label_field``; count of other-field labels."""
    grouped: "OrderedDict[str, list[str]]" = OrderedDict()
    other = 0
    for item in selected:
        if isinstance(item, Mapping):
            if item.get("field") not in (None, label_field):
                other += 1
                continue
            sample_id, label_id = item.get("sample_id"), item.get("label_id")
        else:
            sample_id, label_id = item
        if not sample_id or not label_id:
            raise ValueError(f"a selected label needs sample_id and label_id, got {item!r}")
        ids = grouped.setdefault(str(sample_id), [])
        if str(label_id) not in ids:
            ids.append(str(label_id))
    if not grouped:
        if other:
            raise ValueError(f"none of the {other} selected label(s) belongs to the field {label_field!r}; select labels of {label_field!r}")
        raise ValueError("no labels selected: select one or more labels (click them in the sample view) first")
    return grouped, other


def load_sample(dataset: fo.Dataset, sample_id: str) -> fo.Sample:
    try:
        return dataset[sample_id]
    except (KeyError, ValueError, bson.errors.InvalidId):
        raise ValueError(f"sample {sample_id!r} is not in dataset {dataset.name!r}") from None


def find_label(sample: fo.Sample, fields: ReviewFields, label_id: str) -> fo.Detection:
    detections = sample[fields.labels]
    for det in (detections.detections if detections is not None else []):
        if det.id == label_id:
            return det
    raise ValueError(f"label {label_id!r} is not a {fields.labels!r} label of sample {sample.id!r} (already deleted?)")


def image_size(sample: fo.Sample, fields: ReviewFields) -> tuple[int, int]:
    semantic = sample[fields.semantic] if sample.has_field(fields.semantic) else None
    if semantic is not None and semantic.mask is not None:
        return int(semantic.mask.shape[0]), int(semantic.mask.shape[1])
    if sample.metadata is None or not sample.metadata.width:
        sample.compute_metadata()
    return int(sample.metadata.height), int(sample.metadata.width)


def repaint_semantic(sample: fo.Sample, fields: ReviewFields, categories: Vocabulary) -> None:
    """Recompute the sample's semantic map from its current, non-rejected Detections."""
    detections = sample[fields.labels]
    height, width = image_size(sample, fields)
    kept = [d for d in (detections.detections if detections is not None else []) if label_attr(d, "review_status") != REJECTED] if detections else []
    if not kept:
        dtype = np.uint16 if categories.max_category_id >= 256 else np.uint8
        sample[fields.semantic] = fo.Segmentation(mask=np.zeros((height, width), dtype=dtype))
        return
    prediction, _ = detections_to_prediction(kept, height, width, categories)
    semantic = category_map(prediction)
    if categories.max_category_id >= 256 and semantic.dtype == np.uint8:
        semantic = semantic.astype(np.uint16)
    sample[fields.semantic] = fo.Segmentation(mask=semantic)


def append_log(sample: fo.Sample, fields: ReviewFields, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the sample's ``<field>_corrections`` log (saved with the sample)."""
    log = list(sample[fields.corrections] or []) if sample.has_field(fields.corrections) else []
    log.append(entry)
    sample[fields.corrections] = log


def label_snapshot(det: fo.Detection) -> dict[str, Any]:
    """What a log entry records of a label before and after a change."""
    return {
        "label": det.label,
        "category_id": label_attr(det, "category_id"),
        "isthing": label_attr(det, "isthing"),
        "review_status": label_attr(det, "review_status"),
    }


def set_status(det: fo.Detection, status: str, when: _dt.datetime) -> None:
    det["review_status"] = status
    det["corrected_at"] = when
    # A relabeled label keeps its "relabeled" tag when accepted afterwards; any other decision
    # replaces the previous one.
    keep = {RELABELED, EDITED, ADDED} if status == ACCEPTED else set()
    tags = [t for t in det.tags if t not in REVIEW_TAGS or t in keep]
    if status not in tags:
        tags.append(status)
    det.tags = tags
