"""Corrections made in review: relabel, delete, accept, reject, mark reviewed, and revert.

Every correction is stored in the dataset with its time (how: :mod:`.review_record`), and the
model's original prediction stays recoverable:

* a relabeled Detection keeps ``original_label`` / ``original_category_id`` / ``original_isthing``
  (its ``confidence`` is always the model's score);
* a deleted Detection moves, untouched but for ``deleted_at``, to the ``<field>_deleted`` field;
* decisions set ``review_status`` ("accepted" | "rejected" | "relabeled"), ``corrected_at`` and a
  label tag of the same name;
* each sample's ``<field>_corrections`` list logs every action (label id, segment id, before,
  after, UTC time);
* :func:`revert_corrections` restores the predictions exactly as loaded (from the
  ``<field>_original`` baseline the loader keeps, :mod:`.review_baseline`, when present, so edits
  made in FiftyOne's own Annotate tab are undone too).

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
import logging
from typing import Any, Iterable, Mapping, Optional

import fiftyone as fo

from ..vocab import Vocabulary
from .convert import label_attr, set_isthing
from .dataset import DEFAULT_LABEL_FIELD, ReviewFields, get_categories
from .editor_sync import store_classes, sync_editor_edits, sync_sample
from .review_baseline import detection_from_baseline, record_state
from .review_record import (
    ACCEPTED,
    REJECTED,
    RELABELED,
    REVIEW_TAGS,
    CorrectionResult,
    LabelSelection,
    append_log,
    find_label,
    group_selection,
    label_snapshot,
    load_sample,
    repaint_semantic,
    set_status,
    utc_now,
)

logger = logging.getLogger(__name__)

_ORIGINAL_KEYS = ("original_label", "original_category_id", "original_isthing")
_REVIEW_KEYS = ("review_status", "corrected_at", "deleted_at", "auto_accept_estimate")


def apply_correction(
    dataset: fo.Dataset,
    selected: Iterable[LabelSelection],
    label_field: str,
    action: str,
    change,  # (sample, det, when) -> None
    repaint: bool,
    extra_log: Optional[Mapping[str, Any]] = None,
) -> CorrectionResult:
    fields = ReviewFields(label_field)
    grouped, other = group_selection(selected, label_field)
    categories = get_categories(dataset, label_field)
    result = CorrectionResult(action=action, skipped_other_fields=other)
    when = utc_now()
    for sample_id, label_ids in grouped.items():
        sample = load_sample(dataset, sample_id)
        categories = sync_before_change(sample, fields, categories)
        targets = [find_label(sample, fields, label_id) for label_id in label_ids]  # validate all first
        for det in targets:
            before = label_snapshot(det)
            change(sample, det, when)
            append_log(sample, fields, {"action": action, "label_id": det.id, "segment_id": label_attr(det, "segment_id"),
                                        "before": before, "after": label_snapshot(det) if action != "delete" else None, "at": when,
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


def sync_before_change(sample: fo.Sample, fields: ReviewFields, categories: Vocabulary) -> Vocabulary:
    """Log editor edits of the sample made since it was last seen before changing it further,
    so an edit is never attributed to the plugin's correction. Returns ``categories`` with the
    classes named in the editor that it lacked."""
    return sync_sample(sample, fields, categories, save=False).categories


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
            grouped, _ = group_selection(selected, label_field)
            first_sample, first_labels = next(iter(grouped.items()))
            first = find_label(load_sample(dataset, first_sample), fields, first_labels[0])
            isthing = bool(label_attr(first, "isthing", True))
        categories = categories.with_class(new_label, bool(isthing))
        category = categories.by_name(new_label)
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
        set_isthing(det, category.isthing)
        set_status(det, RELABELED, when)

    result = apply_correction(dataset, selected, label_field, "relabel", change, repaint=True)
    result.new_class = new_class
    return result


def accept_labels(dataset: fo.Dataset, selected: Iterable[LabelSelection], label_field: str = DEFAULT_LABEL_FIELD) -> CorrectionResult:
    """Mark the selected labels accepted (kept by every export, whatever their confidence)."""
    return apply_correction(dataset, selected, label_field, "accept", lambda s, d, w: set_status(d, ACCEPTED, w), repaint=True)


def reject_labels(dataset: fo.Dataset, selected: Iterable[LabelSelection], label_field: str = DEFAULT_LABEL_FIELD) -> CorrectionResult:
    """Mark the selected labels rejected (left out of every export; their pixels become void)."""
    return apply_correction(dataset, selected, label_field, "reject", lambda s, d, w: set_status(d, REJECTED, w), repaint=True)


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

    return apply_correction(dataset, selected, label_field, "delete", change, repaint=True)


def mark_reviewed(
    dataset: fo.Dataset, sample_ids: Iterable[str], label_field: str = DEFAULT_LABEL_FIELD, reviewed: bool = True
) -> int:
    """Mark samples reviewed (or not); returns how many were changed."""
    fields = ReviewFields(label_field)
    when = utc_now()
    count = 0
    ids = [str(s) for s in sample_ids]
    if not ids:
        raise ValueError("no samples given: open a sample or select samples first")
    for sample_id in ids:
        sample = load_sample(dataset, sample_id)
        sample[fields.reviewed] = bool(reviewed)
        sample[fields.reviewed_at] = when if reviewed else None
        append_log(sample, fields, {"action": "mark_reviewed" if reviewed else "unmark_reviewed", "at": when})
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
    when = utc_now()
    if sample_ids is None:
        sync_editor_edits(dataset, label_field)  # editor edits not yet seen are logged, so found below
        sample_ids = dataset.exists(fields.corrections).values("id")
    count = 0
    for sample_id in list(sample_ids):
        sample = load_sample(dataset, str(sample_id))
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
                    set_isthing(det, label_attr(det, "original_isthing", True))
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
        append_log(sample, fields, {"action": "revert", "at": when})
        repaint_semantic(sample, fields, categories)
        record_state(sample, fields)
        sample.save()
        count += 1
    return count


def describe_selection(dataset: fo.Dataset, selected: Iterable[LabelSelection], label_field: str = DEFAULT_LABEL_FIELD) -> list[dict[str, Any]]:
    """The selected labels of ``label_field`` as ``{sample_id, filename, label_id, label, confidence}``
    (what a confirmation form lists), in selection order; unknown ids are left out."""
    grouped, _ = group_selection(selected, label_field)
    view = dataset.select(list(grouped))
    ids, paths, label_ids, labels, confs = view.values(
        ["id", "filepath", f"{label_field}.detections.id", f"{label_field}.detections.label", f"{label_field}.detections.confidence"]
    )
    by_label = {}
    for sid, path, lids, names, scores in zip(ids, paths, label_ids, labels, confs):
        for lid, name, score in zip(lids or [], names or [], scores or []):
            by_label[(sid, lid)] = {"sample_id": sid, "filename": path.rsplit("/", 1)[-1], "label_id": lid, "label": name, "confidence": score}
    return [by_label[(sid, lid)] for sid, lids in grouped.items() for lid in lids if (sid, lid) in by_label]
