"""Export the reviewed labels as a training set: COCO panoptic, COCO instances (RLE), semantic PNGs."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from possam_label.fiftyone.dataset import get_categories, has_possam_field
from possam_label.fiftyone.export import EXPORT_FORMATS, ExportOptions, export_from_dataset

from .operator_support import chosen_label_field, label_field_input, progress_reporter


class ExportTrainingSet(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="export_training_set",
            label="PosSAM: export training set",
            description="Export reviewed labels as COCO panoptic, COCO instances (RLE) and semantic PNG masks",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("out_dir", required=True, label="Output directory", description="Created if missing; must be empty unless 'overwrite' is on")
        for fmt in EXPORT_FORMATS:
            inputs.bool(f"format_{fmt}", default=True, label={"panoptic": "COCO panoptic (PNG + JSON)", "instances": "COCO instances (RLE masks)", "semantic": "Semantic PNG masks"}[fmt])
        inputs.float("min_score", required=False, min=0.0, max=1.0, label="Minimum confidence",
                     description="Drop unreviewed labels below this (accepted and relabeled labels are always kept)")
        inputs.bool("reviewed_only", default=False, label="Only samples marked reviewed")
        label_field = chosen_label_field(ctx)
        names = get_categories(ctx.dataset, label_field).names if ctx.dataset is not None and has_possam_field(ctx.dataset, label_field) else []
        for key, label in (("include_classes", "Only these classes"), ("exclude_classes", "Leave out these classes")):
            choices = types.AutocompleteView(allow_user_input=False)
            for name in names:
                choices.add_choice(name, label=name)
            inputs.list(key, types.String(), required=False, label=label, view=choices)
        inputs.bool("instances_include_stuff", default=False, label="Also write stuff segments to instances.json")
        inputs.bool("overwrite", default=False, label="Overwrite a previous export in the directory")
        label_field_input(inputs, ctx)
        ctx.target_view()
        return types.Property(inputs, view=types.View(label="Export training set"))

    def execute(self, ctx):
        formats = [fmt for fmt in EXPORT_FORMATS if ctx.params.get(f"format_{fmt}", True)]
        options = ExportOptions(
            formats=formats,
            min_score=ctx.params.get("min_score"),
            reviewed_only=bool(ctx.params.get("reviewed_only", False)),
            include_classes=ctx.params.get("include_classes") or None,
            exclude_classes=ctx.params.get("exclude_classes") or None,
            instances_include_stuff=bool(ctx.params.get("instances_include_stuff", False)),
            overwrite=bool(ctx.params.get("overwrite", False)),
        )
        summary = export_from_dataset(ctx.target_view(), ctx.params["out_dir"], chosen_label_field(ctx), options, progress=progress_reporter(ctx))
        if not ctx.delegated:
            ctx.ops.notify(f"Exported {summary.num_images} images, {summary.num_segments} segments to {summary.out_dir}", variant="success")
        return summary.to_dict()
