"""The review queue: samples that still hold labels needing a decision, in the view's order.

A sample is in the queue while it is not marked reviewed and holds an undecided label (no
``review_status``) below the threshold; accepting, rejecting, relabeling, editing or deleting its
doubtful labels, or marking it reviewed, takes it out. :func:`next_in_queue` is the App's
"next" step; :func:`queue_status` the panel's "left / done" line (from the review snapshot, :mod:`.review_stats`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from fiftyone import ViewField as F
from fiftyone.core.collections import SampleCollection

from .dataset import DEFAULT_LABEL_FIELD, ReviewFields
from .review import undecided
from .review_stats import ReviewSnapshot, review_snapshot


def _check(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"confidence threshold must be in [0, 1], got {threshold}")
    return threshold


def queue_view(samples: SampleCollection, threshold: float, label_field: str = DEFAULT_LABEL_FIELD) -> SampleCollection:
    """Samples of the queue, showing only their labels that need a decision."""
    fields = ReviewFields(label_field)
    view = samples
    if samples.has_field(fields.reviewed):
        view = view.match(F(fields.reviewed) != True)  # noqa: E712
    return view.filter_labels(label_field, (F("confidence") < _check(threshold)) & undecided())


@dataclass
class QueueStatus:
    samples_left: int  # samples still in the queue
    labels_left: int  # undecided labels below the threshold in them
    samples_done: int  # samples marked reviewed
    labels_decided: int  # labels with a review status (accepted, rejected, relabeled, edited, added, auto-accepted)
    labels_deleted: int

    def describe(self) -> str:
        return (f"left in queue: {self.labels_left:,} labels in {self.samples_left:,} samples · done: {self.samples_done:,} samples "
                f"reviewed, {self.labels_decided:,} labels decided, {self.labels_deleted:,} deleted")

    def to_dict(self) -> dict:
        return asdict(self)


def _waiting(snapshot: ReviewSnapshot, threshold: float) -> np.ndarray:
    """Label rows in the queue: undecided, below the threshold, in a sample not marked reviewed."""
    return snapshot.current() & ~snapshot.reviewed[snapshot.sample_row] & snapshot.below(_check(threshold)) & (snapshot.status < 0)


def queue_status(
    samples: SampleCollection, threshold: float, label_field: str = DEFAULT_LABEL_FIELD, snapshot: Optional[ReviewSnapshot] = None
) -> QueueStatus:
    """The queue's size and the review's progress, from the review snapshot (:mod:`.review_stats`;
    ``snapshot``: one already read for ``samples``)."""
    snapshot = snapshot if snapshot is not None else review_snapshot(samples, label_field)
    current = snapshot.current()
    waiting = _waiting(snapshot, threshold)
    return QueueStatus(
        samples_left=int(np.unique(snapshot.sample_row[waiting]).size),
        labels_left=int(waiting.sum()),
        samples_done=snapshot.num_reviewed_samples,
        labels_decided=int((current & (snapshot.status >= 0)).sum()),
        labels_deleted=int(snapshot.deleted_rows().sum()),
    )


def next_in_queue(
    samples: SampleCollection, threshold: float, current_sample_id: Optional[str] = None, label_field: str = DEFAULT_LABEL_FIELD
) -> Optional[str]:
    """The id of the first queue sample after ``current_sample_id`` in the order of ``samples``
    (wrapping around; the current sample only if it is the last one left); None when the queue is empty."""
    snapshot = review_snapshot(samples, label_field)
    queued = {snapshot.sample_ids[row].hex() for row in np.unique(snapshot.sample_row[_waiting(snapshot, threshold)])}  # str(ObjectId)
    if not queued:
        return None
    order = samples.values("id")
    start = order.index(current_sample_id) + 1 if current_sample_id in order else 0
    for sample_id in order[start:] + order[:start]:
        if sample_id in queued:
            return sample_id
    return None
