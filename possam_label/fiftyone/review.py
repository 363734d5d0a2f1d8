"""Review by confidence: per-class counts, a confidence histogram, review queues and tags.

A label "needs review" when its confidence is below the threshold and no reviewer has decided on
it yet (it has no ``review_status``), so the queue empties as the review progresses; it is
"confident" at or above the threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

import fiftyone as fo
from fiftyone import ViewField as F
from fiftyone.core.collections import SampleCollection

from .dataset import DEFAULT_LABEL_FIELD
from .review_stats import ReviewSnapshot, review_snapshot

# "Needs review below": the default of the App panel's slider (grid and modal), the review-view
# and tagging operators. A different idea from ``min_score`` (drop below): nothing is dropped.
DEFAULT_REVIEW_THRESHOLD = 0.5

NEEDS_REVIEW_TAG = "needs_review"
CONFIDENT_TAG = "confident"
NEEDS_REVIEW_VIEW = "needs review"
CONFIDENT_VIEW = "confident"


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"confidence threshold must be in [0, 1], got {threshold}")
    return threshold


def undecided() -> F:
    """Matches labels a reviewer has not accepted, rejected or relabeled."""
    return ~F("review_status").exists()


def needs_review_view(samples: SampleCollection, threshold: float, label_field: str = DEFAULT_LABEL_FIELD) -> fo.DatasetView:
    """Samples with undecided labels below ``threshold``, showing only those labels."""
    threshold = _check_threshold(threshold)
    return samples.filter_labels(label_field, (F("confidence") < threshold) & undecided())


def confident_view(samples: SampleCollection, threshold: float, label_field: str = DEFAULT_LABEL_FIELD) -> fo.DatasetView:
    """Samples with labels at or above ``threshold``, showing only those labels."""
    threshold = _check_threshold(threshold)
    return samples.filter_labels(label_field, F("confidence") >= threshold)


def review_view_names(label_field: str = DEFAULT_LABEL_FIELD) -> tuple[str, str]:
    """Saved-view names for a label field: "needs review"/"confident" (prefixed for other fields)."""
    if label_field == DEFAULT_LABEL_FIELD:
        return NEEDS_REVIEW_VIEW, CONFIDENT_VIEW
    return f"{label_field} {NEEDS_REVIEW_VIEW}", f"{label_field} {CONFIDENT_VIEW}"


def save_review_views(
    dataset: fo.Dataset, threshold: float, label_field: str = DEFAULT_LABEL_FIELD, base_view: Optional[SampleCollection] = None
) -> list[str]:
    """Save (or overwrite) the "needs review" and "confident" views; returns their names.

    In the App they are in the saved-view menu and at ``/datasets/<name>?view=needs-review``.
    """
    threshold = _check_threshold(threshold)
    base = base_view if base_view is not None else dataset
    needs_name, confident_name = review_view_names(label_field)
    dataset.save_view(
        needs_name,
        needs_review_view(base, threshold, label_field),
        description=f"{label_field}: undecided labels with confidence < {threshold:g}",
        color="#d9534f",
        overwrite=True,
    )
    dataset.save_view(
        confident_name,
        confident_view(base, threshold, label_field),
        description=f"{label_field}: labels with confidence >= {threshold:g}",
        color="#5cb85c",
        overwrite=True,
    )
    return [needs_name, confident_name]


def tag_by_confidence(
    samples: SampleCollection,
    threshold: float,
    label_field: str = DEFAULT_LABEL_FIELD,
    below_tag: str = NEEDS_REVIEW_TAG,
    above_tag: str = CONFIDENT_TAG,
) -> dict[str, int]:
    """Tag every label of ``samples`` by threshold (the two tags are first removed, so re-tagging
    with another threshold leaves no stale tags); returns ``{below_tag: n, above_tag: m}``."""
    threshold = _check_threshold(threshold)
    samples.untag_labels([below_tag, above_tag], label_fields=label_field)
    below = samples.filter_labels(label_field, F("confidence") < threshold)
    above = samples.filter_labels(label_field, F("confidence") >= threshold)
    below.tag_labels(below_tag, label_fields=label_field)
    above.tag_labels(above_tag, label_fields=label_field)
    counts = samples.count_label_tags(label_fields=label_field)
    return {below_tag: int(counts.get(below_tag, 0)), above_tag: int(counts.get(above_tag, 0))}


@dataclass
class ClassCount:
    label: str
    total: int
    below: int
    above: int


@dataclass
class ReviewSummary:
    """Counts for the review panel."""

    threshold: float
    num_samples: int
    num_labels: int
    num_below: int
    num_above: int
    num_reviewed_samples: int
    per_class: list[ClassCount] = field(default_factory=list)
    histogram_edges: list[float] = field(default_factory=list)  # bins + 1 edges over [0, 1]
    histogram_counts: list[int] = field(default_factory=list)
    status_counts: dict[str, int] = field(default_factory=dict)  # accepted / rejected / relabeled

    def to_dict(self) -> dict:
        return asdict(self)


# Smaller than a 16 x 16 patch: hard to see under the App's overlays and to click.
TINY_SEGMENT_AREA = 256


@dataclass
class TinySegment:
    """A label whose mask covers at most a few pixels, and where to find it."""

    sample_id: str
    label_id: str
    label: str
    area: int
    confidence: Optional[float]
    filepath: str

    def selection(self, label_field: str = DEFAULT_LABEL_FIELD) -> dict:
        """The App's selected-label form of it (``ctx.ops.set_selected_labels``)."""
        return {"sample_id": self.sample_id, "label_id": self.label_id, "field": label_field}


def tiny_segments(
    samples: SampleCollection, max_area: int = TINY_SEGMENT_AREA, label_field: str = DEFAULT_LABEL_FIELD, limit: Optional[int] = 100
) -> list[TinySegment]:
    """Labels of ``samples`` whose mask has at most ``max_area`` pixels (the ``area`` attribute),
    smallest first (then lowest confidence): up to ``limit`` of them (None: all)."""
    view = samples.filter_labels(label_field, F("area") <= int(max_area))
    base = f"{label_field}.detections"
    ids, paths, label_ids, labels, areas, scores = view.values(
        ["id", "filepath", f"{base}.id", f"{base}.label", f"{base}.area", f"{base}.confidence"])
    found = [
        TinySegment(sample_id, label_id, str(label), int(area), None if score is None else float(score), path)
        for sample_id, path, *per_label in zip(ids, paths, label_ids, labels, areas, scores)
        for label_id, label, area, score in zip(*(values or [] for values in per_label))
    ]
    found.sort(key=lambda t: (t.area, 2.0 if t.confidence is None else t.confidence, t.sample_id, t.label_id))
    return found if limit is None else found[: int(limit)]


def review_summary(
    samples: SampleCollection, threshold: float, label_field: str = DEFAULT_LABEL_FIELD, bins: int = 20,
    snapshot: Optional[ReviewSnapshot] = None,
) -> ReviewSummary:
    """Per-class label counts below/above ``threshold``, a confidence histogram over [0, 1] and
    review progress, from the collection's review snapshot (:mod:`.review_stats`: one read of the
    labels' scores and statuses, kept current incrementally; a threshold change reads nothing).

    As database aggregations would count them: a label without confidence is below every
    threshold; the histogram's bins are [e_i, e_i+1) (a confidence of exactly 1.0, or none, falls
    outside them); labels without a class are not counted. ``snapshot``: one already read for
    ``samples`` (default: read it)."""
    threshold = _check_threshold(threshold)
    snapshot = snapshot if snapshot is not None else review_snapshot(samples, label_field)
    current = snapshot.current()
    classes = snapshot.label[current]
    named = classes >= 0
    below = snapshot.below(threshold)[current]
    totals = np.bincount(classes[named], minlength=len(snapshot.classes))
    belows = np.bincount(classes[named & below], minlength=len(snapshot.classes))
    per_class = sorted(
        (ClassCount(label=str(snapshot.classes[i]), total=int(totals[i]), below=int(belows[i]), above=int(totals[i] - belows[i]))
         for i in np.flatnonzero(totals)),
        key=lambda c: (-c.total, c.label),
    )
    edges = np.linspace(0.0, 1.0, bins + 1)
    confidence = snapshot.confidence[current]
    bin_index = np.searchsorted(edges, confidence[~np.isnan(confidence)], side="right") - 1
    histogram = np.bincount(bin_index[(bin_index >= 0) & (bin_index < bins)], minlength=bins)
    statuses = snapshot.status[current]
    status_counts = np.bincount(statuses[statuses >= 0], minlength=len(snapshot.statuses))
    num_labels = sum(c.total for c in per_class)
    num_below = sum(c.below for c in per_class)
    return ReviewSummary(
        threshold=threshold,
        num_samples=snapshot.num_samples,
        num_labels=num_labels,
        num_below=num_below,
        num_above=num_labels - num_below,
        num_reviewed_samples=snapshot.num_reviewed_samples,
        per_class=per_class,
        histogram_edges=[float(e) for e in edges],
        histogram_counts=[int(c) for c in histogram],
        status_counts={name: int(status_counts[i]) for i, name in enumerate(snapshot.statuses) if status_counts[i]},
    )
