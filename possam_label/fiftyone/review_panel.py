"""What the review panel shows, computed in one call: the App panel's refresh and its benchmark.

A refresh first turns Annotate-tab edits into corrections (:func:`.editor_sync.sync_editor_edits`,
incremental), then reads the view's review snapshot once (:mod:`.review_stats`) for the summary,
the queue line and the auto-accept estimate at the threshold (one version check, and all three
numbers from the same state).
"""

from __future__ import annotations

from dataclasses import dataclass
import fiftyone as fo
from fiftyone.core.collections import SampleCollection

from .auto_accept import estimate_auto_accept, review_outcomes
from .dataset import DEFAULT_LABEL_FIELD
from .editor_sync import SyncResult, sync_editor_edits
from .review import ReviewSummary, review_summary
from .review_queue import QueueStatus, queue_status
from .review_stats import review_snapshot

PANEL_BOOTSTRAP_DRAWS = 100  # the panel's estimate interval: enough for ±1 point, in ~0.1 s


@dataclass
class PanelState:
    summary: ReviewSummary
    queue: QueueStatus
    synced: SyncResult
    auto_accept: str  # the estimate at the threshold in words, or why there is none

    def summary_markdown(self) -> str:
        s = self.summary
        statuses = "" if not s.status_counts else " &nbsp;·&nbsp; " + ", ".join(f"{k}: {v}" for k, v in sorted(s.status_counts.items()))
        return (
            f"**{s.num_labels}** labels in **{s.num_samples}** samples &nbsp;·&nbsp; "
            f"below {s.threshold:.2f}: **{s.num_below}** &nbsp;·&nbsp; at or above: **{s.num_above}** &nbsp;·&nbsp; "
            f"reviewed samples: **{s.num_reviewed_samples}**" + statuses
        )


def panel_state(
    dataset: fo.Dataset, view: SampleCollection, threshold: float, label_field: str = DEFAULT_LABEL_FIELD,
    sync: bool = True,
) -> PanelState:
    """The panel's numbers for ``view`` (of ``dataset``) at ``threshold``; ``sync`` first records
    the Annotate tab's edits of the whole dataset (``synced.num_edits`` > 0: the App should reload
    its samples)."""
    synced = sync_editor_edits(dataset, label_field) if sync else SyncResult()
    snapshot = review_snapshot(view, label_field)  # read once: every number below from the same state
    summary = review_summary(view, threshold, label_field, snapshot=snapshot)
    queue = queue_status(view, threshold, label_field, snapshot=snapshot)
    try:
        outcomes = review_outcomes(view, label_field, snapshot=snapshot)
        estimate = estimate_auto_accept(view, label_field, thresholds=[threshold], num_bootstrap=PANEL_BOOTSTRAP_DRAWS, outcomes=outcomes)
        auto_accept = estimate.at(threshold).describe() + f" (from {estimate.num_reviewed:,} reviewed labels)"
    except ValueError as err:
        auto_accept = f"Auto-accept estimate: {err}"
    return PanelState(summary, queue, synced, auto_accept)

