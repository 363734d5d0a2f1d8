"""Review by confidence: per-class counts, a confidence histogram, review queues and tags.

A label "needs review" when its confidence is below the threshold and no reviewer has decided on
it yet (it has no ``review_status``), so the queue empties as the review progresses; it is
"confident" at or above the threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import fiftyone as fo
from fiftyone import ViewField as F
from fiftyone.core.aggregations import Aggregation
from fiftyone.core.collections import SampleCollection

from .dataset import DEFAULT_LABEL_FIELD

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


class ClassConfidenceCounts(Aggregation):
    """Per class: the number of labels and of those scored below ``threshold``, in one
    ``$unwind``/``$group`` (so it joins the other aggregations of one ``aggregate`` call: a single
    pass over the collection instead of one per count). Result: ``{label: (total, below)}``."""

    def __init__(self, label_field: str, threshold: float) -> None:
        super().__init__(f"{label_field}.detections")
        self._label_field = label_field
        self._threshold = float(threshold)

    def _kwargs(self) -> list:
        return [["label_field", self._label_field], ["threshold", self._threshold]]

    def default_result(self) -> dict:
        return {}

    def parse_result(self, d: dict) -> dict:
        return {row["label"]: (int(row["total"]), int(row["below"])) for row in d["result"] if row["label"] is not None}

    def to_mongo(self, sample_collection: SampleCollection, context=None) -> list:
        below = {"$cond": [{"$lt": ["$label.confidence", self._threshold]}, 1, 0]}  # None counts below, as F("confidence") < t
        return [
            {"$project": {"label": f"${self._label_field}.detections"}},
            {"$unwind": "$label"},
            {"$group": {"_id": "$label.label", "total": {"$sum": 1}, "below": {"$sum": below}}},
            {"$group": {"_id": None, "result": {"$push": {"label": "$_id", "total": "$total", "below": "$below"}}}},
        ]


def review_summary(
    samples: SampleCollection, threshold: float, label_field: str = DEFAULT_LABEL_FIELD, bins: int = 20
) -> ReviewSummary:
    """Per-class label counts below/above ``threshold``, a confidence histogram over [0, 1] and
    review progress, computed by one database aggregation (one ``$facet``: a single pass over the
    samples, no labels loaded into Python)."""
    threshold = _check_threshold(threshold)
    confidence = f"{label_field}.detections.confidence"
    status = f"{label_field}.detections.review_status"
    reviewed = f"{label_field}_reviewed"
    aggregations = [
        fo.Count(),
        ClassConfidenceCounts(label_field, threshold),
        fo.HistogramValues(confidence, bins=bins, range=[0.0, 1.0]),
    ]
    has_status = samples.has_field(status)
    if has_status:
        aggregations.append(fo.CountValues(status))
    if samples.has_field(reviewed):
        aggregations.append(fo.CountValues(reviewed))
    results = samples.aggregate(aggregations)
    num_samples, counts, (hist_counts, hist_edges, _other) = results[0], results[1], results[2]
    rest = results[3:]
    statuses = {str(k): int(v) for k, v in (rest.pop(0) if has_status else {}).items() if k is not None}
    reviewed_counts = rest.pop(0) if rest else {}
    per_class = [
        ClassCount(label=str(name), total=total, below=below, above=total - below)
        for name, (total, below) in sorted(counts.items(), key=lambda kv: (-kv[1][0], str(kv[0])))
    ]
    num_labels = sum(c.total for c in per_class)
    num_below = sum(c.below for c in per_class)
    return ReviewSummary(
        threshold=threshold,
        num_samples=int(num_samples),
        num_labels=num_labels,
        num_below=num_below,
        num_above=num_labels - num_below,
        num_reviewed_samples=int(reviewed_counts.get(True, 0)),
        per_class=per_class,
        histogram_edges=[float(e) for e in hist_edges],
        histogram_counts=[int(c) for c in hist_counts],
        status_counts=statuses,
    )
