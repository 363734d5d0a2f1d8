"""Corrections made in review: relabel, delete, accept, reject, mark reviewed, and revert.

Every correction is stored in the dataset with its time, and the model's original prediction stays
recoverable:

* a relabeled Detection keeps ``original_label`` / ``original_category_id`` / ``original_isthing``
  (its ``confidence`` is always the model's score);
* a deleted Detection moves, untouched but for ``deleted_at``, to the ``<field>_deleted`` field;
* decisions set ``review_status`` ("accepted" | "rejected" | "relabeled"), ``corrected_at`` and a
  label tag of the same name;
* each sample's ``<field>_corrections`` list logs every action (label id, segment id, before,
  after, UTC time);
* :func:`revert_corrections` restores the predictions exactly as loaded (from the
  ``<field>_original`` baseline the loader keeps, when present, so edits made in FiftyOne's own
  Annotate tab are undone too).

Edits made in the App's Annotate tab bypass these functions; :mod:`.editor_sync` finds them (each
sample's ``<field>_synced`` list holds a fingerprint of every label as last seen here) and turns
them into the same kind of logged correction.

The semantic field (``<field>_semantic``) is repainted after each change, leaving rejected labels
void, so it always shows what an export will contain.

Selections use the App's format (``ctx.selected_labels``): dicts with ``sample_id``, ``label_id``
and ``field``; ``(sample_id, label_id)`` pairs are accepted too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import bson
import numpy as np

import fiftyone as fo

from ..io.rle import decode_rle, encode_mask
from .autolabel_output import CategoryTable
from .convert import category_map, detections_to_prediction, label_attr
from .dataset import DEFAULT_LABEL_FIELD, ReviewFields, get_categories, set_categories

logger = logging.getLogger(__name__)

ACCEPTED = "accepted"
REJECTED = "rejected"
RELABELED = "relabeled"
EDITED = "edited"  # mask or box changed by a reviewer (App editor, SAM tools, merge, split)
ADDED = "added"  # a label a reviewer drew
AUTO_ACCEPTED = "auto_accepted"  # accepted in bulk above a threshold of measured precision
REVIEW_TAGS = (ACCEPTED, REJECTED, RELABELED, EDITED, ADDED, AUTO_ACCEPTED)
# Statuses whose labels a reviewer stands behind: exports keep them whatever their confidence.
VERIFIED_STATUSES = frozenset({ACCEPTED, RELABELED, EDITED, ADDED, AUTO_ACCEPTED})
_ORIGINAL_KEYS = ("original_label", "original_category_id", "original_isthing")
_REVIEW_KEYS = ("review_status", "corrected_at", "deleted_at", "auto_accept_estimate")
# Detection attributes a baseline entry keeps (besides label, box, mask, confidence, tags).
_BASELINE_ATTRIBUTES = ("segment_id", "category_id", "isthing", "mask_quality", "in_vocab_prob", "out_vocab_prob", "area", "run_id")

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


# ------------------------------------------------------------------ baseline and fingerprints
def _crop_mask(det: fo.Detection) -> Optional[np.ndarray]:
    if det.mask is None and det.mask_path is None:
        return None
    mask = np.asarray(det.get_mask())
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask > 0


def fingerprint(label: Optional[str], bounding_box: Optional[Sequence[float]], mask: Optional[np.ndarray]) -> str:
    """A short hash of what a reviewer can change on a label: class, box and mask pixels."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(label).encode("utf-8"))
    box = [round(float(v), 6) for v in bounding_box] if bounding_box is not None else []
    digest.update(repr(box).encode("ascii"))
    if mask is not None:
        mask = np.asarray(mask) > 0
        digest.update(repr(mask.shape).encode("ascii"))
        digest.update(np.packbits(mask).tobytes())
    return digest.hexdigest()


def detection_fingerprint(det: fo.Detection) -> str:
    return fingerprint(det.label, det.bounding_box, _crop_mask(det))


def baseline_entry(det: fo.Detection) -> dict[str, Any]:
    """The JSON-friendly copy of a loaded Detection kept in ``<field>_original`` (mask as RLE)."""
    mask = _crop_mask(det)
    return {
        "label_id": det.id,
        "label": det.label,
        "bounding_box": [float(v) for v in det.bounding_box] if det.bounding_box is not None else None,
        "mask": encode_mask(mask) if mask is not None else None,
        "confidence": None if det.confidence is None else float(det.confidence),
        "tags": list(det.tags or []),
        "attributes": {k: label_attr(det, k) for k in _BASELINE_ATTRIBUTES if label_attr(det, k) is not None},
    }


def baseline_entries(detections: Optional[fo.Detections]) -> Optional[list[dict[str, Any]]]:
    """Baseline of an image's loaded labels (None for an image without labels)."""
    if detections is None:
        return None
    return [baseline_entry(det) for det in detections.detections]


def detection_from_baseline(entry: Mapping[str, Any]) -> fo.Detection:
    """The Detection exactly as loaded (same id) from its baseline entry."""
    det = fo.Detection(
        label=entry["label"],
        bounding_box=entry["bounding_box"],
        mask=decode_rle(entry["mask"]) if entry.get("mask") else None,
        confidence=entry.get("confidence"),
        tags=list(entry.get("tags") or []),
        **dict(entry.get("attributes") or {}),
    )
    det.id = entry["label_id"]
    return det


def baseline_fingerprint(entry: Mapping[str, Any]) -> str:
    mask = decode_rle(entry["mask"]) if entry.get("mask") else None
    return fingerprint(entry["label"], entry["bounding_box"], mask)


def record_state(sample: fo.Sample, fields: ReviewFields) -> None:
    """Remember every current label's fingerprint: what a later editor edit is compared with."""
    detections = sample[fields.labels]
    sample[fields.synced] = [
        {"label_id": det.id, "label": det.label, "hash": detection_fingerprint(det)}
        for det in (detections.detections if detections is not None else [])
    ]


def _now() -> _dt.datetime:
    # FiftyOne stores naive UTC datetimes; keep them naive-UTC so comparisons after reload match.
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None, microsecond=0)


def _group_selection(selected: Iterable[LabelSelection], label_field: str) -> tuple["OrderedDict[str, list[str]]", int]:
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


def _load_sample(dataset: fo.Dataset, sample_id: str) -> fo.Sample:
    try:
        return dataset[sample_id]
    except (KeyError, ValueError, bson.errors.InvalidId):
        raise ValueError(f"sample {sample_id!r} is not in dataset {dataset.name!r}") from None


def _find(sample: fo.Sample, fields: ReviewFields, label_id: str) -> fo.Detection:
    detections = sample[fields.labels]
    for det in (detections.detections if detections is not None else []):
        if det.id == label_id:
            return det
    raise ValueError(f"label {label_id!r} is not a {fields.labels!r} label of sample {sample.id!r} (already deleted?)")


def _image_size(sample: fo.Sample, fields: ReviewFields) -> tuple[int, int]:
    semantic = sample[fields.semantic] if sample.has_field(fields.semantic) else None
    if semantic is not None and semantic.mask is not None:
        return int(semantic.mask.shape[0]), int(semantic.mask.shape[1])
    if sample.metadata is None or not sample.metadata.width:
        sample.compute_metadata()
    return int(sample.metadata.height), int(sample.metadata.width)


def repaint_semantic(sample: fo.Sample, fields: ReviewFields, categories: CategoryTable) -> None:
    """Recompute the sample's semantic map from its current, non-rejected Detections."""
    detections = sample[fields.labels]
    height, width = _image_size(sample, fields)
    kept = [d for d in (detections.detections if detections is not None else []) if label_attr(d, "review_status") != REJECTED] if detections else []
    if not kept:
        dtype = np.uint16 if categories.max_id() >= 256 else np.uint8
        sample[fields.semantic] = fo.Segmentation(mask=np.zeros((height, width), dtype=dtype))
        return
    prediction, _ = detections_to_prediction(kept, height, width, categories)
    semantic = category_map(prediction)
    if categories.max_id() >= 256 and semantic.dtype == np.uint8:
        semantic = semantic.astype(np.uint16)
    sample[fields.semantic] = fo.Segmentation(mask=semantic)


def _log(sample: fo.Sample, fields: ReviewFields, entry: dict[str, Any]) -> None:
    log = list(sample[fields.corrections] or []) if sample.has_field(fields.corrections) else []
    log.append(entry)
    sample[fields.corrections] = log


def _snapshot(det: fo.Detection) -> dict[str, Any]:
    return {
        "label": det.label,
        "category_id": label_attr(det, "category_id"),
        "isthing": label_attr(det, "isthing"),
        "review_status": label_attr(det, "review_status"),
    }


def _set_status(det: fo.Detection, status: str, when: _dt.datetime) -> None:
    det["review_status"] = status
    det["corrected_at"] = when
    # A relabeled label keeps its "relabeled" tag when accepted afterwards; any other decision
    # replaces the previous one.
    keep = {RELABELED, EDITED, ADDED} if status == ACCEPTED else set()
    tags = [t for t in det.tags if t not in REVIEW_TAGS or t in keep]
    if status not in tags:
        tags.append(status)
    det.tags = tags


def _apply(
    dataset: fo.Dataset,
    selected: Iterable[LabelSelection],
    label_field: str,
    action: str,
    change,  # (sample, det, when) -> None
    repaint: bool,
    extra_log: Optional[Mapping[str, Any]] = None,
) -> CorrectionResult:
    fields = ReviewFields(label_field)
    grouped, other = _group_selection(selected, label_field)
    categories = get_categories(dataset, label_field)
    result = CorrectionResult(action=action, skipped_other_fields=other)
    when = _now()
    for sample_id, label_ids in grouped.items():
        sample = _load_sample(dataset, sample_id)
        _sync_before_change(sample, fields, categories)
        targets = [_find(sample, fields, label_id) for label_id in label_ids]  # validate all first
        for det in targets:
            before = _snapshot(det)
            change(sample, det, when)
            _log(sample, fields, {"action": action, "label_id": det.id, "segment_id": label_attr(det, "segment_id"),
                                  "before": before, "after": _snapshot(det) if action != "delete" else None, "at": when,
                                  "source": "plugin", **dict(extra_log or {})})
            result.label_ids.append(det.id)
        if repaint:
            repaint_semantic(sample, fields, categories)
        record_state(sample, fields)
        sample.save()
        result.num_labels += len(targets)
        result.num_samples += 1
    logger.info("%s: %d label(s) in %d sample(s) of %s.%s", action, result.num_labels, result.num_samples, dataset.name, label_field)
    return result


def _sync_before_change(sample: fo.Sample, fields: ReviewFields, categories: CategoryTable) -> None:
    """Log editor edits of the sample made since it was last seen before changing it further,
    so an edit is never attributed to the plugin's correction."""
    from .editor_sync import sync_sample  # editor_sync builds on this module

    sync_sample(sample, fields, categories, save=False)


def relabel_segments(
    dataset: fo.Dataset,
    selected: Iterable[LabelSelection],
    new_label: str,
    label_field: str = DEFAULT_LABEL_FIELD,
    isthing: Optional[bool] = None,
) -> CorrectionResult:
    """Give the selected segments the class ``new_label`` (a vocabulary class, or a new one).

    Args:
        new_label: class name (matched case-insensitively to the field's classes). A name not in
            the vocabulary becomes a new class (next free id, a fresh color).
        isthing: thing/stuff flag of a new class (default: that of the first selected segment);
            must agree with an existing class.
    """
    if not isinstance(new_label, str) or not new_label.strip():
        raise ValueError("the new class name must be a non-empty string")
    selected = list(selected)
    fields = ReviewFields(label_field)
    categories = get_categories(dataset, label_field)
    new_class = None
    if new_label in categories:
        category = categories.by_name(new_label)
        if isthing is not None and bool(isthing) != category.isthing:
            raise ValueError(f"class {category.name!r} is a {'thing' if category.isthing else 'stuff'} class; isthing={isthing} contradicts it")
    else:
        if isthing is None:
            grouped, _ = _group_selection(selected, label_field)
            first_sample, first_labels = next(iter(grouped.items()))
            first = _find(_load_sample(dataset, first_sample), fields, first_labels[0])
            isthing = bool(label_attr(first, "isthing", True))
        category, _ = categories.get_or_add(new_label, bool(isthing))
        from .editor_sync import store_classes  # editor_sync builds on this module

        store_classes(dataset, label_field, categories)
        new_class = category.name
        logger.info("new class %r (id %d, %s) in %s.%s", category.name, category.id, "thing" if category.isthing else "stuff", dataset.name, label_field)

    def change(sample: fo.Sample, det: fo.Detection, when: _dt.datetime) -> None:
        if label_attr(det, "original_label") is None:
            det["original_label"] = det.label
            det["original_category_id"] = label_attr(det, "category_id")
            det["original_isthing"] = label_attr(det, "isthing")
        det.label = category.name
        det["category_id"] = int(category.id)
        det["isthing"] = bool(category.isthing)
        _set_status(det, RELABELED, when)

    result = _apply(dataset, selected, label_field, "relabel", change, repaint=True)
    result.new_class = new_class
    return result


def accept_labels(dataset: fo.Dataset, selected: Iterable[LabelSelection], label_field: str = DEFAULT_LABEL_FIELD) -> CorrectionResult:
    """Mark the selected labels accepted (kept by every export, whatever their confidence)."""
    return _apply(dataset, selected, label_field, "accept", lambda s, d, w: _set_status(d, ACCEPTED, w), repaint=True)


def reject_labels(dataset: fo.Dataset, selected: Iterable[LabelSelection], label_field: str = DEFAULT_LABEL_FIELD) -> CorrectionResult:
    """Mark the selected labels rejected (left out of every export; their pixels become void)."""
    return _apply(dataset, selected, label_field, "reject", lambda s, d, w: _set_status(d, REJECTED, w), repaint=True)


def delete_segments(dataset: fo.Dataset, selected: Iterable[LabelSelection], label_field: str = DEFAULT_LABEL_FIELD) -> CorrectionResult:
    """Remove the selected segments from the label field; they are kept in ``<field>_deleted``."""
    fields = ReviewFields(label_field)

    def change(sample: fo.Sample, det: fo.Detection, when: _dt.datetime) -> None:
        current = sample[fields.labels]
        current.detections = [d for d in current.detections if d.id != det.id]
        det["deleted_at"] = when
        deleted = sample[fields.deleted] if sample.has_field(fields.deleted) else None
        deleted = deleted if deleted is not None else fo.Detections(detections=[])
        deleted.detections = list(deleted.detections) + [det]
        sample[fields.deleted] = deleted

    return _apply(dataset, selected, label_field, "delete", change, repaint=True)


def mark_reviewed(
    dataset: fo.Dataset, sample_ids: Iterable[str], label_field: str = DEFAULT_LABEL_FIELD, reviewed: bool = True
) -> int:
    """Mark samples reviewed (or not); returns how many were changed."""
    fields = ReviewFields(label_field)
    when = _now()
    count = 0
    ids = [str(s) for s in sample_ids]
    if not ids:
        raise ValueError("no samples given: open a sample or select samples first")
    for sample_id in ids:
        sample = _load_sample(dataset, sample_id)
        sample[fields.reviewed] = bool(reviewed)
        sample[fields.reviewed_at] = when if reviewed else None
        _log(sample, fields, {"action": "mark_reviewed" if reviewed else "unmark_reviewed", "at": when})
        sample.save()
        count += 1
    return count


def revert_corrections(
    dataset: fo.Dataset, sample_ids: Optional[Iterable[str]] = None, label_field: str = DEFAULT_LABEL_FIELD
) -> int:
    """Restore the predictions of the given samples (default: all) exactly as they were loaded.

    With the loader's baseline (``<field>_original``) every change is undone whoever made it:
    relabels, deletions, decisions, masks and boxes edited in the App or by the SAM tools, labels
    drawn in the App (dropped). Without one (labels written by ``apply_model``) relabels, deletions
    and decisions are undone from the labels' own ``original_*`` attributes. Review marks are
    cleared; the corrections log keeps its entries and gains a "revert" entry. Returns the samples
    reverted.
    """
    fields = ReviewFields(label_field)
    categories = get_categories(dataset, label_field)
    when = _now()
    if sample_ids is None:
        from .editor_sync import sync_editor_edits

        sync_editor_edits(dataset, label_field)  # editor edits not yet seen are logged, so found below
        sample_ids = dataset.exists(fields.corrections).values("id")
    count = 0
    for sample_id in list(sample_ids):
        sample = _load_sample(dataset, str(sample_id))
        current = sample[fields.labels]
        deleted = sample[fields.deleted] if sample.has_field(fields.deleted) else None
        baseline = sample[fields.original] if sample.has_field(fields.original) else None
        if baseline is not None:
            restored = [detection_from_baseline(entry) for entry in baseline]
        else:
            if current is None and deleted is None:
                continue  # an image the run could not label: nothing to restore
            restored = list(current.detections if current is not None else []) + list(deleted.detections if deleted is not None else [])
            for det in restored:
                if label_attr(det, "original_label") is not None:
                    det.label = label_attr(det, "original_label")
                    det["category_id"] = label_attr(det, "original_category_id")
                    det["isthing"] = label_attr(det, "original_isthing")
                for key in _ORIGINAL_KEYS + _REVIEW_KEYS:
                    if det.has_field(key):
                        try:
                            del det[key]  # drop the attribute itself, not only its value
                        except (KeyError, AttributeError):
                            pass
                det.tags = [t for t in det.tags if t not in REVIEW_TAGS]
            restored.sort(key=lambda d: label_attr(d, "segment_id", 0))
        sample[fields.labels] = fo.Detections(detections=restored)
        sample[fields.deleted] = None
        sample[fields.reviewed] = False
        sample[fields.reviewed_at] = None
        _log(sample, fields, {"action": "revert", "at": when})
        repaint_semantic(sample, fields, categories)
        record_state(sample, fields)
        sample.save()
        count += 1
    return count


def original_predictions(sample: fo.Sample, label_field: str = DEFAULT_LABEL_FIELD) -> list[dict[str, Any]]:
    """The model's predictions of a sample as loaded, whatever was corrected since:
    ``[{label_id, segment_id, label, category_id, isthing, confidence}]`` sorted by segment id."""
    fields = ReviewFields(label_field)
    baseline = sample[fields.original] if sample.has_field(fields.original) else None
    if baseline is not None:
        return sorted(
            (
                {
                    "label_id": e["label_id"],
                    "segment_id": (e.get("attributes") or {}).get("segment_id"),
                    "label": e["label"],
                    "category_id": (e.get("attributes") or {}).get("category_id"),
                    "isthing": (e.get("attributes") or {}).get("isthing"),
                    "confidence": e.get("confidence"),
                }
                for e in baseline
            ),
            key=lambda d: (d["segment_id"] or 0),
        )
    current = sample[fields.labels]
    deleted = sample[fields.deleted] if sample.has_field(fields.deleted) else None
    out = []
    for det in list(current.detections if current is not None else []) + list(deleted.detections if deleted is not None else []):
        relabeled = label_attr(det, "original_label") is not None
        out.append(
            {
                "label_id": det.id,
                "segment_id": label_attr(det, "segment_id"),
                "label": label_attr(det, "original_label") if relabeled else det.label,
                "category_id": label_attr(det, "original_category_id" if relabeled else "category_id"),
                "isthing": label_attr(det, "original_isthing" if relabeled else "isthing"),
                "confidence": det.confidence,
            }
        )
    return sorted(out, key=lambda d: (d["segment_id"] or 0))


def describe_selection(dataset: fo.Dataset, selected: Iterable[LabelSelection], label_field: str = DEFAULT_LABEL_FIELD) -> list[dict[str, Any]]:
    """The selected labels of ``label_field`` as ``{sample_id, filename, label_id, label, confidence}``
    (what a confirmation form lists), in selection order; unknown ids are left out."""
    grouped, _ = _group_selection(selected, label_field)
    view = dataset.select(list(grouped))
    ids, paths, label_ids, labels, confs = view.values(
        ["id", "filepath", f"{label_field}.detections.id", f"{label_field}.detections.label", f"{label_field}.detections.confidence"]
    )
    by_label = {}
    for sid, path, lids, names, scores in zip(ids, paths, label_ids, labels, confs):
        for lid, name, score in zip(lids or [], names or [], scores or []):
            by_label[(sid, lid)] = {"sample_id": sid, "filename": path.rsplit("/", 1)[-1], "label_id": lid, "label": name, "confidence": score}
    return [by_label[(sid, lid)] for sid, lids in grouped.items() for lid in lids if (sid, lid) in by_label]
