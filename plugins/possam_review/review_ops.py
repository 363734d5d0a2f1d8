"""Confidence review of a view: saved 'needs review' / 'confident' views, tags by confidence,
auto-accept above a threshold (with its estimated precision), and recording the App editor's edits
as corrections."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from possam_label.fiftyone.auto_accept import auto_accept, estimate_auto_accept
from possam_label.fiftyone.editor_sync import sync_editor_edits
from possam_label.fiftyone.review import (
    CONFIDENT_TAG,
    DEFAULT_REVIEW_THRESHOLD,
    NEEDS_REVIEW_TAG,
    save_review_views,
    tag_by_confidence,
)

from .operator_support import after_correction, chosen_label_field, label_field_input, shared_threshold, threshold_input


class SaveReviewViews(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="save_review_views", label="PosSAM: save 'needs review' and 'confident' views",
                                  description="Saved views of the labels below / at or above a confidence threshold")

    def resolve_input(self, ctx):
        inputs = types.Object()
        threshold_input(inputs, ctx)
        label_field_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Save review views"))

    def execute(self, ctx):
        names = save_review_views(ctx.dataset, ctx.params.get("threshold", DEFAULT_REVIEW_THRESHOLD), chosen_label_field(ctx))
        ctx.ops.notify(f"Saved views: {', '.join(names)}", variant="success")
        return {"views": names}


class TagByConfidence(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="tag_by_confidence", label="PosSAM: tag labels by confidence",
                                  description=f"Tag labels '{NEEDS_REVIEW_TAG}' below the threshold and '{CONFIDENT_TAG}' at or above it")

    def resolve_input(self, ctx):
        inputs = types.Object()
        threshold_input(inputs, ctx)
        label_field_input(inputs, ctx)
        ctx.target_view()  # adds the App's target-view choice (dataset / current view / selection)
        return types.Property(inputs, view=types.View(label="Tag labels by confidence"))

    def execute(self, ctx):
        counts = tag_by_confidence(ctx.target_view(), ctx.params.get("threshold", DEFAULT_REVIEW_THRESHOLD), chosen_label_field(ctx))
        ctx.ops.reload_samples()
        ctx.ops.notify(", ".join(f"{n} tagged {tag}" for tag, n in counts.items()), variant="success")
        return counts


class SyncEditorEdits(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="sync_editor_edits", label="PosSAM: record App-editor edits",
                                  description="Log the edits made in the Annotate tab as corrections (the panel, export and revert also do this)")

    def execute(self, ctx):
        result = sync_editor_edits(ctx.dataset, chosen_label_field(ctx), full=bool(ctx.params.get("full", False)))
        if result.num_edits:
            ctx.ops.reload_samples()
        ctx.ops.notify(f"Recorded {result.num_edits} editor edit(s) in {result.num_samples_changed} sample(s)", variant="success")
        return result.to_dict()


class AutoAccept(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="auto_accept", label="PosSAM: auto-accept above a threshold",
                                  description="Accept every unreviewed label at or above a threshold, with the precision estimated from the labels already reviewed",
                                  dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.float("threshold", default=shared_threshold(ctx), min=0.0, max=1.0, required=True, label="Accept labels with confidence at or above")
        label_field_input(inputs, ctx)
        threshold = float(ctx.params.get("threshold", shared_threshold(ctx)))
        try:
            estimate = estimate_auto_accept(ctx.view, chosen_label_field(ctx), thresholds=[threshold], num_bootstrap=100)
            inputs.view("estimate", types.Notice(label=estimate.at(threshold).describe(),
                                                 description=f"from {estimate.num_reviewed} reviewed labels (95 % bootstrap interval)"))
        except ValueError as err:
            inputs.view("no_estimate", types.Warning(label="No estimate yet", description=str(err)))
        return types.Property(inputs, view=types.View(label="Auto-accept"))

    def execute(self, ctx):
        threshold = float(ctx.params.get("threshold", shared_threshold(ctx)))
        result = auto_accept(ctx.view, threshold, chosen_label_field(ctx))
        after_correction(ctx, f"Auto-accepted {result.num_labels} label(s) at or above {threshold:.2f}")
        return result.to_dict()
