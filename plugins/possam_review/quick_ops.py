"""One-click actions in the sample viewer's action bar: accept, reject or delete the selected
labels of the open sample, and open the next sample of the review queue."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from possam_label.fiftyone.corrections import accept_labels, delete_segments, reject_labels
from possam_label.fiftyone.editor_sync import sync_editor_edits
from possam_label.fiftyone.review_queue import next_in_queue

from .operator_support import after_correction, chosen_label_field, current_sample_selection, shared_threshold


class _QuickAction(foo.Operator):
    """One click in the sample viewer's action bar on the selected labels of the open sample."""

    action_label = ""
    function = None
    button = ""

    def resolve_placement(self, ctx):
        return types.Placement(types.Places.SAMPLES_VIEWER_ACTIONS,
                               types.Button(label=self.config.label, icon="/assets/icon.svg", prompt=False))

    def execute(self, ctx):
        selection = current_sample_selection(ctx)
        result = type(self).function(ctx.dataset, selection, chosen_label_field(ctx))
        after_correction(ctx, f"{self.action_label} {result.num_labels} label(s)")
        return result.to_dict()


class QuickAccept(_QuickAction):
    action_label = "Accepted"
    function = staticmethod(accept_labels)

    @property
    def config(self):
        return foo.OperatorConfig(name="quick_accept", label="PosSAM: accept", description="Accept the selected labels of this sample")


class QuickReject(_QuickAction):
    action_label = "Rejected"
    function = staticmethod(reject_labels)

    @property
    def config(self):
        return foo.OperatorConfig(name="quick_reject", label="PosSAM: reject", description="Reject the selected labels of this sample")


class QuickDelete(_QuickAction):
    action_label = "Deleted"
    function = staticmethod(delete_segments)

    @property
    def config(self):
        return foo.OperatorConfig(name="quick_delete", label="PosSAM: delete", description="Delete the selected labels of this sample")


class NextInQueue(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="next_in_queue", label="PosSAM: next in queue",
                                  description="Open the next sample of the view that still has labels needing review")

    def resolve_placement(self, ctx):
        return types.Placement(types.Places.SAMPLES_VIEWER_ACTIONS,
                               types.Button(label="PosSAM: next in queue", icon="/assets/icon.svg", prompt=False))

    def execute(self, ctx):
        threshold = float(ctx.params.get("threshold", shared_threshold(ctx)))
        label_field = chosen_label_field(ctx)
        sync_editor_edits(ctx.dataset, label_field)
        sample_id = next_in_queue(ctx.view, threshold, ctx.current_sample, label_field)
        ctx.ops.clear_selected_labels()
        if sample_id is None:
            ctx.ops.notify(f"The queue is empty: no undecided label below {threshold:.2f} in this view", variant="success")
            return {"sample_id": None}
        ctx.ops.open_sample(id=sample_id)
        return {"sample_id": sample_id}
