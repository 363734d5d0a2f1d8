"""Corrections through operator forms: relabel, delete, accept, reject, merge and split the
selected labels, undo the last mask correction, mark samples reviewed, revert to the predictions."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from possam_label.fiftyone.corrections import (
    accept_labels,
    delete_segments,
    mark_reviewed,
    reject_labels,
    relabel_segments,
    revert_corrections,
)
from possam_label.fiftyone.dataset import get_categories, has_possam_field
from possam_label.fiftyone.mask_tools import merge_labels, split_label, undo_correction

from .operator_support import (
    after_correction,
    check_multi_sample,
    chosen_label_field,
    label_field_input,
    require_labels,
    scope_input,
    scope_sample_ids,
)


class RelabelSegments(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="relabel_segments", label="PosSAM: relabel selected segments",
                                  description="Give the selected segments another class of the vocabulary, or a new class", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        require_labels(inputs, ctx)
        label_field = chosen_label_field(ctx)
        names = get_categories(ctx.dataset, label_field).names if has_possam_field(ctx.dataset, label_field) else []
        choices = types.AutocompleteView(allow_user_input=True)
        for name in names:
            choices.add_choice(name, label=name)
        inputs.str("new_label", required=True, label="New class", description="A class of the vocabulary, or type a new class name", view=choices)
        new_label = (ctx.params.get("new_label") or "").strip()
        if new_label and new_label.lower() not in {n.lower() for n in names}:
            inputs.view("new_class", types.Notice(label=f"'{new_label}' is a new class: it will be added to the vocabulary of {label_field}"))
            inputs.bool("isthing", default=True, label="Thing (countable object)", description="Off for stuff (amorphous regions such as sky or grass)")
        label_field_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Relabel segments"))

    def execute(self, ctx):
        check_multi_sample(ctx)
        isthing = ctx.params.get("isthing")
        result = relabel_segments(ctx.dataset, ctx.selected_labels, ctx.params["new_label"], chosen_label_field(ctx), isthing=None if isthing is None else bool(isthing))
        after_correction(ctx, f"Relabeled {result.num_labels} segment(s) as {ctx.params['new_label']}")
        return result.to_dict()


class _SelectionOperator(foo.Operator):
    """Base of the operators that act on ``ctx.selected_labels`` without other inputs."""

    action_label = ""
    function = None

    def resolve_input(self, ctx):
        inputs = types.Object()
        require_labels(inputs, ctx)
        label_field_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label=self.config.label))

    def execute(self, ctx):
        check_multi_sample(ctx)
        result = type(self).function(ctx.dataset, ctx.selected_labels, chosen_label_field(ctx))
        after_correction(ctx, f"{self.action_label} {result.num_labels} label(s) in {result.num_samples} sample(s)")
        return result.to_dict()


class DeleteSegments(_SelectionOperator):
    action_label = "Deleted"
    function = staticmethod(delete_segments)

    @property
    def config(self):
        return foo.OperatorConfig(name="delete_segments", label="PosSAM: delete selected segments",
                                  description="Remove the selected segments (kept in <field>_deleted, recoverable)")


class AcceptLabels(_SelectionOperator):
    action_label = "Accepted"
    function = staticmethod(accept_labels)

    @property
    def config(self):
        return foo.OperatorConfig(name="accept_labels", label="PosSAM: accept selected labels",
                                  description="Mark the selected labels correct (exported whatever their confidence)")


class RejectLabels(_SelectionOperator):
    action_label = "Rejected"
    function = staticmethod(reject_labels)

    @property
    def config(self):
        return foo.OperatorConfig(name="reject_labels", label="PosSAM: reject selected labels",
                                  description="Mark the selected labels wrong (left out of exports)")


class MergeLabels(_SelectionOperator):
    action_label = "Merged"
    function = staticmethod(merge_labels)

    @property
    def config(self):
        return foo.OperatorConfig(name="merge_labels", label="PosSAM: merge selected labels",
                                  description="Merge the selected labels of one image into one (union of the masks; undoable)")


class SplitLabel(_SelectionOperator):
    action_label = "Split"
    function = staticmethod(split_label)

    @property
    def config(self):
        return foo.OperatorConfig(name="split_label", label="PosSAM: split label into connected parts",
                                  description="Each selected label becomes its connected parts (undoable)")


class UndoCorrection(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="undo_correction", label="PosSAM: undo last mask correction",
                                  description="Undo the latest merge, split or SAM correction of the open sample")

    def resolve_placement(self, ctx):
        return types.Placement(types.Places.SAMPLES_VIEWER_ACTIONS,
                               types.Button(label="PosSAM: undo last mask correction", icon="/assets/icon.svg", prompt=False))

    def execute(self, ctx):
        if not ctx.current_sample:
            raise ValueError("open a sample first")
        entry = undo_correction(ctx.dataset, ctx.current_sample, chosen_label_field(ctx))
        after_correction(ctx, f"Undid the {entry['action']}")
        return {"undone": entry["action"]}


class MarkReviewed(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="mark_reviewed", label="PosSAM: mark samples reviewed",
                                  description="Mark the current, selected or all samples of the view as reviewed (or not)")

    def resolve_input(self, ctx):
        inputs = types.Object()
        scope_input(inputs, ctx)
        inputs.bool("reviewed", default=True, label="Reviewed")
        label_field_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Mark reviewed"))

    def execute(self, ctx):
        reviewed = bool(ctx.params.get("reviewed", True))
        count = mark_reviewed(ctx.dataset, scope_sample_ids(ctx), chosen_label_field(ctx), reviewed=reviewed)
        ctx.ops.reload_samples()
        ctx.ops.notify(f"Marked {count} sample(s) {'reviewed' if reviewed else 'not reviewed'}", variant="success")
        return {"num_samples": count, "reviewed": reviewed}


class RevertCorrections(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="revert_corrections", label="PosSAM: revert corrections",
                                  description="Restore the original predictions (undo relabels, deletions and decisions)")

    def resolve_input(self, ctx):
        inputs = types.Object()
        scope_input(inputs, ctx)
        label_field_input(inputs, ctx)
        inputs.view("warning", types.Warning(label="Corrections of these samples will be undone (the corrections log keeps them)"))
        return types.Property(inputs, view=types.View(label="Revert corrections"))

    def execute(self, ctx):
        count = revert_corrections(ctx.dataset, scope_sample_ids(ctx), chosen_label_field(ctx))
        ctx.ops.clear_selected_labels()
        ctx.ops.reload_samples()
        ctx.ops.notify(f"Reverted {count} sample(s) to the original predictions", variant="success")
        return {"num_samples": count}
