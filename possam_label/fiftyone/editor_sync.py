"""Edits made in FiftyOne's own Annotate tab, turned into corrections like the plugin's.

The App's editor (sample view, Annotate tab) writes straight to the ``possam`` Detections in the
database (JSON patches on ``/dataset/<id>/sample/<id>/<field>/<label id>``): a painted mask, a
moved box, a new class, a drawn or deleted label. None of that passes through
:mod:`.corrections`, so :func:`sync_editor_edits` finds such edits afterwards and records them:

* what a label looked like when possam-label last saw it is each sample's ``<field>_synced`` list
  (label id, class, fingerprint of class + box + mask); before the first sync it is the loader's
  baseline ``<field>_original``, so edits made before any sync are found as well;
* a changed class is a relabel (``original_label`` etc. kept, ``category_id``/``isthing`` from the
  class table; an unknown name becomes a new class); a changed mask or box is an edit: the mask is
  cropped to its tight box, ``area`` recomputed, and the pixels it now covers are taken from the
  labels it overlaps (panoptic labels do not overlap; a label left with no pixel is deleted);
* a drawn label is "added" (next free ``segment_id``); a label deleted in the editor moves to
  ``<field>_deleted`` (its loaded version, when it was a prediction);
* each is logged in ``<field>_corrections`` with ``source: "editor"``, gets a ``review_status``
  (``relabeled`` / ``edited`` / ``added``), which exports and training count as reviewer-verified,
  and ``<field>_semantic`` is repainted. :func:`~.corrections.revert_corrections` undoes them.

When it runs: the review plugin calls it on every panel refresh, before export and training, and
on revert (its operator "sync editor edits" runs it on demand); :func:`.export.export_from_dataset`
calls it too, so no edit is lost whoever exports. A sync of the whole dataset looks only at the
samples modified since the previous one (``last_modified_at``, indexed) and not since the loader
wrote them (``<field>_loaded_at``, set to the same time as ``last_modified_at`` by the loader).

:func:`prepare_annotation` readies the Annotate tab for the field: a label schema whose classes
are the vocabulary's (derived attributes read-only), activated, and an App colour scheme that
shows review status on the image.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Union

import numpy as np

import fiftyone as fo
import fiftyone.core.sample as fosample
from fiftyone import ViewField as F

from ..vocab import Vocabulary, VocabularyClass
from .convert import detection_mask_placement, label_attr, set_isthing
from .dataset import DEFAULT_LABEL_FIELD, INFO_KEY, ReviewFields, get_categories, has_possam_field, open_dataset, set_categories
from .review_baseline import baseline_fingerprint, detection_fingerprint, detection_from_baseline, fingerprint, record_state
from .review_record import (
    ADDED,
    EDITED,
    REJECTED,
    RELABELED,
    append_log,
    image_size,
    label_snapshot,
    repaint_semantic,
    set_status,
    utc_now,
)

logger = logging.getLogger(__name__)

EDITOR = "editor"
_SYNC_STAMP_KEY = "editor_synced_at"

# App colours of the review states (unreviewed labels: REVIEW_COLORS[None], the field colour).
REVIEW_COLORS = {
    None: "#ff6d04",  # needs a decision: orange
    "accepted": "#2ca02c",
    "auto_accepted": "#17becf",
    "relabeled": "#1f77b4",
    "edited": "#9467bd",
    "added": "#9467bd",
    "rejected": "#7f7f7f",
}


@dataclass
class SyncResult:
    """What :func:`sync_editor_edits` found (counts of labels, except the sample counts)."""

    num_samples_checked: int = 0
    num_samples_changed: int = 0
    relabeled: int = 0
    edited: int = 0
    added: int = 0
    deleted: int = 0
    trimmed: int = 0  # neighbours that lost pixels to an edited label
    new_classes: list[str] = field(default_factory=list)
    # The field's class table after the sync: the one passed in plus new_classes (the caller stores it).
    categories: Optional[Vocabulary] = field(default=None, repr=False)

    @property
    def num_edits(self) -> int:
        return self.relabeled + self.edited + self.added + self.deleted

    def to_dict(self) -> dict:
        counts = asdict(replace(self, categories=None))
        del counts["categories"]
        return {**counts, "num_edits": self.num_edits}


# ------------------------------------------------------------------------------ one sample
def _last_seen(sample: fo.Sample, fields: ReviewFields) -> Optional[list[dict[str, Any]]]:
    state = sample[fields.synced] if sample.has_field(fields.synced) else None
    if state is not None:
        return list(state)
    baseline = sample[fields.original] if sample.has_field(fields.original) else None
    if baseline is not None:
        return [{"label_id": e["label_id"], "label": e["label"], "hash": baseline_fingerprint(e)} for e in baseline]
    return None


def _resolve_class(det: fo.Detection, result: SyncResult) -> VocabularyClass:
    """The class named by ``det.label``; a name the table lacks becomes a new class of ``result.categories``."""
    if det.label not in result.categories:
        result.categories = result.categories.with_class(det.label, bool(label_attr(det, "isthing", True)))
        category = result.categories.by_name(det.label)
        result.new_classes.append(category.name)
        logger.info("editor: new class %r (id %d)", category.name, category.id)
    return result.categories.by_name(det.label)


def _tighten(det: fo.Detection, height: int, width: int) -> Optional[tuple[int, int, np.ndarray]]:
    """Crop the Detection's mask to its tight box (the invariant the export relies on); returns its
    placement ``(x0, y0, crop)`` in image pixels, or None without a mask or pixel."""
    placement = detection_mask_placement(det, height, width)
    if placement is None:
        return None
    x0, y0, mask = placement
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    x0, y0 = x0 + int(cols[0]), y0 + int(rows[0])
    det.mask = crop.copy()
    det.bounding_box = [x0 / width, y0 / height, crop.shape[1] / width, crop.shape[0] / height]
    det["area"] = int(crop.sum())
    return x0, y0, crop


def _next_segment_id(sample: fo.Sample, fields: ReviewFields) -> int:
    used = [0]
    for name in (fields.labels, fields.deleted):
        value = sample[name] if sample.has_field(name) else None
        used += [int(label_attr(d, "segment_id", 0)) for d in (value.detections if value is not None else [])]
    return max(used) + 1


def _move_to_deleted(sample: fo.Sample, fields: ReviewFields, det: fo.Detection, when: _dt.datetime) -> None:
    det["deleted_at"] = when
    deleted = sample[fields.deleted] if sample.has_field(fields.deleted) else None
    deleted = deleted if deleted is not None else fo.Detections(detections=[])
    deleted.detections = list(deleted.detections) + [det]
    sample[fields.deleted] = deleted


# The geometry changes of a sync: (label, its placement (top, left, crop mask)), whose pixels the
# labels they overlap give up (_resolve_overlaps).
_GeometryChanges = list[tuple[fo.Detection, tuple[int, int, np.ndarray]]]


def _record_added(
    sample: fo.Sample, fields: ReviewFields, det: fo.Detection, category: VocabularyClass, size: tuple[int, int],
    when: _dt.datetime, changed_geometry: _GeometryChanges,
) -> None:
    """A label drawn in the editor: the next free segment id, its class's ids, status "added"."""
    det["segment_id"] = _next_segment_id(sample, fields)
    det["category_id"] = int(category.id)
    set_isthing(det, category.isthing)
    placement = _tighten(det, *size)
    if placement is not None:
        changed_geometry.append((det, placement))
    set_status(det, ADDED, when)
    append_log(sample, fields, {"action": "add", "label_id": det.id, "segment_id": label_attr(det, "segment_id"),
                                "before": None, "after": label_snapshot(det), "has_mask": placement is not None,
                                "at": when, "source": EDITOR})


def _record_edited(
    sample: fo.Sample, fields: ReviewFields, det: fo.Detection, previous: dict[str, Any], category: VocabularyClass,
    size: tuple[int, int], when: _dt.datetime, changed_geometry: _GeometryChanges,
) -> bool:
    """A known label whose class (a relabel) or mask or box (an edit) changed in the editor since
    ``previous`` (its last-seen entry); returns whether its geometry changed."""
    before = label_snapshot(det)
    label_changed = det.label != previous["label"]
    geometry_changed = fingerprint(previous["label"], det.bounding_box, _mask_of(det)) != previous["hash"]
    if label_changed:
        if label_attr(det, "original_label") is None:
            det["original_label"] = previous["label"]
            det["original_category_id"] = label_attr(det, "category_id")
            det["original_isthing"] = label_attr(det, "isthing")
        before["label"] = previous["label"]
        det["category_id"] = int(category.id)
        set_isthing(det, category.isthing)
    if geometry_changed:
        placement = _tighten(det, *size)
        if placement is not None:
            changed_geometry.append((det, placement))
    set_status(det, EDITED if geometry_changed else RELABELED, when)
    action = "edit" if geometry_changed else "relabel"
    append_log(sample, fields, {"action": action, "label_id": det.id, "segment_id": label_attr(det, "segment_id"),
                                "before": before, "after": label_snapshot(det), "relabeled": label_changed,
                                "at": when, "source": EDITOR})
    return geometry_changed


def _record_deleted(
    sample: fo.Sample, fields: ReviewFields, last_seen: dict[str, dict[str, Any]], current_ids: set[str], when: _dt.datetime
) -> int:
    """Labels deleted in the editor: kept in <field>_deleted (as loaded, when they were predictions).
    Returns how many."""
    baseline = {e["label_id"]: e for e in (sample[fields.original] or [])} if sample.has_field(fields.original) else {}
    count = 0
    for label_id, previous in last_seen.items():
        if label_id in current_ids:
            continue
        if label_id in baseline:
            _move_to_deleted(sample, fields, detection_from_baseline(baseline[label_id]), when)
        append_log(sample, fields, {"action": "delete", "label_id": label_id, "before": {"label": previous["label"]},
                                    "after": None, "at": when, "source": EDITOR})
        count += 1
    return count


def sync_sample(
    sample: fo.Sample,
    fields: ReviewFields,
    categories: Vocabulary,
    save: bool = True,
    result: Optional[SyncResult] = None,
) -> SyncResult:
    """Find and record the editor edits of one sample (see the module docstring).

    The result's ``categories`` is ``categories`` plus the classes named in the editor that it
    lacks (the caller stores it). With ``save=False`` the sample is changed but not saved (the
    caller saves it).
    """
    result = result if result is not None else SyncResult()
    result.categories = categories
    result.num_samples_checked += 1
    detections = sample[fields.labels]
    current = list(detections.detections) if detections is not None else []
    seen = _last_seen(sample, fields)
    if seen is None:
        # Labels written without a baseline (apply_model before this existed): start from now.
        if detections is not None:
            record_state(sample, fields)
            if save:
                sample.save()
        return result

    by_id = {entry["label_id"]: entry for entry in seen}
    when = utc_now()
    height = width = None
    changed_geometry: _GeometryChanges = []
    changed = False
    for det in current:
        previous = by_id.get(det.id)
        now_hash = detection_fingerprint(det)
        if previous is not None and now_hash == previous["hash"]:
            continue
        if det.label is None:
            logger.warning("editor: label %s of sample %s has no class yet; left for a later sync", det.id, sample.id)
            continue
        if height is None:
            height, width = image_size(sample, fields)
        category = _resolve_class(det, result)
        if previous is None:
            _record_added(sample, fields, det, category, (height, width), when, changed_geometry)
            result.added += 1
        elif _record_edited(sample, fields, det, previous, category, (height, width), when, changed_geometry):
            result.edited += 1
        else:
            result.relabeled += 1
        changed = True

    num_deleted = _record_deleted(sample, fields, by_id, {det.id for det in current}, when)
    result.deleted += num_deleted
    changed = changed or num_deleted > 0

    if changed_geometry:
        result.trimmed += _resolve_overlaps(sample, fields, changed_geometry, height, width, when)
    if not changed:
        return result  # the last-seen state (or the baseline standing in for it) still holds
    result.num_samples_changed += 1
    repaint_semantic(sample, fields, result.categories)
    record_state(sample, fields)
    if save:
        sample.save()
    return result


def _mask_of(det: fo.Detection) -> Optional[np.ndarray]:
    if det.mask is None and det.mask_path is None:
        return None
    mask = np.asarray(det.get_mask())
    return (mask[..., 0] if mask.ndim == 3 else mask) > 0


def _resolve_overlaps(
    sample: fo.Sample,
    fields: ReviewFields,
    edited: list[tuple[fo.Detection, tuple[int, int, np.ndarray]]],
    height: int,
    width: int,
    when: _dt.datetime,
) -> int:
    """The edited labels keep the pixels they now cover; their neighbours lose them."""
    claimed = np.zeros((height, width), dtype=bool)
    for _det, (x0, y0, crop) in edited:
        claimed[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] |= crop
    edited_ids = {det.id for det, _ in edited}
    detections = sample[fields.labels]
    trimmed = 0
    emptied = []
    for det in list(detections.detections):
        if det.id in edited_ids or label_attr(det, "review_status") == REJECTED:
            continue
        placement = detection_mask_placement(det, height, width)
        if placement is None:
            continue
        x0, y0, mask = placement
        lost = mask & claimed[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        if not lost.any():
            continue
        before_area = int(mask.sum())
        det.mask = mask & ~lost
        det.bounding_box = [x0 / width, y0 / height, mask.shape[1] / width, mask.shape[0] / height]
        if _tighten(det, height, width) is None:
            emptied.append(det)
        append_log(sample, fields, {"action": "trim", "label_id": det.id, "segment_id": label_attr(det, "segment_id"),
                                    "lost_pixels": int(lost.sum()), "area_before": before_area,
                                    "by": sorted(edited_ids), "at": when, "source": EDITOR})
        trimmed += 1
    if emptied:
        gone = {det.id for det in emptied}
        detections.detections = [d for d in detections.detections if d.id not in gone]
        for det in emptied:
            _move_to_deleted(sample, fields, det, when)
            append_log(sample, fields, {"action": "delete", "label_id": det.id, "reason": "every pixel taken by an edited label",
                                        "at": when, "source": EDITOR})
    return trimmed


# --------------------------------------------------------------------------- collections
def _sync_stamp(dataset: fo.Dataset, label_field: str) -> Optional[_dt.datetime]:
    value = ((dataset.info.get(INFO_KEY) or {}).get(label_field) or {}).get(_SYNC_STAMP_KEY)
    return _dt.datetime.fromisoformat(value) if value else None


def _set_sync_stamp(dataset: fo.Dataset, label_field: str, stamp: _dt.datetime) -> None:
    info = dict(dataset.info)
    per_dataset = dict(info.get(INFO_KEY) or {})
    per_field = dict(per_dataset.get(label_field) or {})
    per_field[_SYNC_STAMP_KEY] = stamp.isoformat()
    per_dataset[label_field] = per_field
    info[INFO_KEY] = per_dataset
    dataset.info = info
    dataset.save()


def sync_editor_edits(
    samples: Union[str, fo.Dataset, Any], label_field: str = DEFAULT_LABEL_FIELD, full: bool = False
) -> SyncResult:
    """Record the App-editor edits of ``samples`` (a dataset, view, sample or dataset name).

    For a whole dataset only the samples modified since its previous sync are read (``full=True``
    reads them all); a view or a sample is read entirely. Returns the counts.
    """
    if isinstance(samples, (fo.Sample, fosample.SampleView)):
        dataset = samples._dataset
        fields = ReviewFields(label_field)
        if not has_possam_field(dataset, label_field):
            return SyncResult()
        sample = dataset[samples.id]  # a view's sample may hide labels: read it whole
        result = sync_sample(sample, fields, get_categories(dataset, label_field))
        if result.new_classes:
            store_classes(dataset, label_field, result.categories)
        return result
    if isinstance(samples, str):
        samples = open_dataset(samples)
    dataset = samples._dataset
    result = SyncResult()
    if not has_possam_field(dataset, label_field):
        return result
    fields = ReviewFields(label_field)
    result.categories = get_categories(dataset, label_field)
    whole = isinstance(samples, fo.Dataset)
    started = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None) - _dt.timedelta(milliseconds=5)
    since = _sync_stamp(dataset, label_field) if whole and not full else None
    if whole:
        view = dataset if since is None else dataset.match(F("last_modified_at") >= since)
        if dataset.has_field(fields.loaded_at):
            # A sample nothing wrote since the loader did holds its labels as loaded: nothing to
            # find there, and reading it (masks included) is what would cost minutes at 100k samples.
            view = view.match(F("last_modified_at") != F(fields.loaded_at))
    else:
        # A view may filter labels: read its samples whole, or a hidden label would look deleted.
        view = dataset.select(samples.values("id"))
    for sample in view.iter_samples(progress=False):
        sync_sample(sample, fields, result.categories, result=result)
    if result.new_classes:
        store_classes(dataset, label_field, result.categories)
    if whole and (since is None or result.num_samples_checked):
        # Only when something was read: an unchanged stamp is still right, and no dataset write
        # happens on a refresh that found nothing modified.
        _set_sync_stamp(dataset, label_field, started)
    if result.num_edits:
        logger.info("editor edits of %s.%s: %s", dataset.name, label_field, result.to_dict())
    return result


# ------------------------------------------------------------------------------ App set-up
# Attributes the loader and the review write; the editor shows them read-only (recomputed here).
_DERIVED_ATTRIBUTES = (
    "confidence", "segment_id", "category_id", "isthing", "mask_quality", "in_vocab_prob", "out_vocab_prob", "area",
    "run_id", "review_status", "corrected_at", "deleted_at", "original_label", "original_category_id",
    "original_isthing", "auto_accept_estimate",
)


def label_schema(dataset: fo.Dataset, label_field: str = DEFAULT_LABEL_FIELD) -> dict[str, Any]:
    """The Annotate-tab schema of ``label_field``: the vocabulary's classes in a dropdown, the
    derived attributes read-only (sync recomputes them), tags editable."""
    categories = get_categories(dataset, label_field)
    generated = dataset.generate_label_schemas(fields=[label_field], scan_samples=False)[label_field]
    attributes = []
    for attr in generated.get("attributes", []):
        attr = dict(attr)
        if attr["name"] in _DERIVED_ATTRIBUTES or attr.get("type") == "id":
            attr["read_only"] = True
        attributes.append(attr)
    return {**generated, "component": "dropdown", "classes": list(categories.names), "attributes": attributes}


def store_classes(dataset: fo.Dataset, label_field: str, categories: Vocabulary) -> None:
    """Store a class table that gained classes: dataset info, colours and the Annotate-tab classes."""
    set_categories(dataset, label_field, categories)
    if label_field in dataset.label_schemas:
        dataset.update_label_schema(label_field, label_schema(dataset, label_field))


def prepare_annotation(dataset: fo.Dataset, label_field: str = DEFAULT_LABEL_FIELD) -> None:
    """Ready the App for reviewing ``label_field``: its label schema (activated) and colour scheme;
    an index on ``last_modified_at`` for :func:`sync_editor_edits`."""
    dataset.update_label_schema(label_field, label_schema(dataset, label_field))
    if label_field not in dataset.active_label_schemas:
        dataset.activate_label_schemas([label_field], prepend=True)
    set_review_colors(dataset, label_field)
    dataset.create_index("last_modified_at")


def set_review_colors(dataset: fo.Dataset, label_field: str = DEFAULT_LABEL_FIELD) -> None:
    """Colour ``label_field`` by ``review_status`` (orange: needs a decision); the semantic field
    keeps the vocabulary colours. Other fields' entries are kept."""
    scheme = dataset.app_config.color_scheme or fo.ColorScheme()
    kept = [f for f in (scheme.fields or []) if f.get("path") != label_field]
    kept.append({
        "path": label_field,
        "fieldColor": REVIEW_COLORS[None],
        "colorByAttribute": "review_status",
        "valueColors": [{"value": status, "color": color} for status, color in REVIEW_COLORS.items() if status],
    })
    scheme.fields = kept
    dataset.app_config.color_scheme = scheme
    dataset.save()
