"""PosSAM's SAM in the review: refine the selected labels from their boxes; segment and classify the
boxes drawn without a mask in the open sample. Both call :mod:`possam_label.fiftyone.sam_tools`
(models built once per App server process) and are undone by "undo last mask correction"."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from possam_label.fiftyone.sam_tools import boxes_without_masks, refine_labels, segment_new_boxes

from .operator_support import after_correction, check_multi_sample, chosen_label_field, label_field_input, require_labels


class RefineLabels(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="refine_labels", label="PosSAM: refine selected labels with SAM",
                                  description="Re-segment the selected labels of one image with SAM prompted by their boxes; "
                                              "classes kept (undoable)", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        require_labels(inputs, ctx)
        label_field_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Refine with SAM"))

    def execute(self, ctx):
        check_multi_sample(ctx)
        result = refine_labels(ctx.dataset, ctx.selected_labels, chosen_label_field(ctx))
        after_correction(ctx, f"Refined {result.num_labels} label(s) with SAM")
        return result.to_dict()


class SegmentNewBoxes(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="segment_new_boxes", label="PosSAM: segment and classify drawn boxes",
                                  description="Boxes drawn without a mask in the open sample get SAM's mask and "
                                              "PosSAM's class and confidence (undoable)", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if not ctx.current_sample:
            inputs.view("no_sample", types.Warning(label="No sample open",
                                                   description="Open a sample, draw boxes in the Annotate tab, then run this again."))
            return types.Property(inputs, view=types.View(label="Segment drawn boxes"))
        label_field = chosen_label_field(ctx)
        boxes = boxes_without_masks(ctx.dataset[ctx.current_sample], label_field)
        if boxes:
            shown = "\n".join(f"- box {d.id[-6:]}{f' ({d.label})' if d.label else ''}" for d in boxes[:20])
            inputs.md(f"{len(boxes)} box(es) without a mask in this sample:\n\n{shown}", name="boxes")
        else:
            inputs.view("no_boxes", types.Warning(label=f"No box without a mask in {label_field}",
                                                  description="Draw a box (no mask) in the Annotate tab first."))
        label_field_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Segment drawn boxes"))

    def execute(self, ctx):
        if not ctx.current_sample:
            raise ValueError("open a sample first: this action works on the boxes of the open sample")
        result = segment_new_boxes(ctx.dataset, ctx.current_sample, chosen_label_field(ctx))
        after_correction(ctx, f"Segmented and classified {result.num_labels} box(es)")
        return result.to_dict()


OPERATORS = (RefineLabels, SegmentNewBoxes)
