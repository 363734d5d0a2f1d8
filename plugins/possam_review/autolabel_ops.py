"""Labels into the dataset: load an autolabel output directory (Parquet + PNG), or run the
autolabel job on the current view as a delegated operation and load what it writes."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from possam_label.fiftyone.autolabel_output import AutolabelOutput, AutolabelOutputError
from possam_label.fiftyone.load import load_autolabel_output

from .operator_support import (
    DelegatedOperator,
    chosen_label_field,
    delegated_operator_config,
    label_field_input,
    progress_reporter,
)


class LoadAutolabelOutput(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="load_autolabel_output",
            label="PosSAM: load autolabel output",
            description="Load an autolabel output directory (Parquet + PNG) into this or another dataset",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="/assets/icon.svg",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        output_dir = ctx.params.get("output_dir")
        error = None
        if output_dir:
            try:
                out = AutolabelOutput.open(output_dir)
                n_images, n_segments = out.count_rows()
                inputs.view("found", types.Notice(label=f"Run {out.run_id}: {n_images} images, {n_segments} segments, {len(out.categories)} classes"))
            except AutolabelOutputError as err:
                error = str(err)
        inputs.str(
            "output_dir",
            required=True,
            label="Autolabel output directory",
            description="The --out directory of python -m pipelines.autolabel (on the server's file system)",
            invalid=error is not None,
            error_message=error or "",
        )
        if error:
            inputs.view("bad_dir", types.Error(label="Not an autolabel output", description=error))
        inputs.str("dataset_name", required=False, label="Dataset", description="Leave empty to load into the current dataset",
                   default=ctx.dataset.name if ctx.dataset is not None else None)
        inputs.bool("create_dataset", default=False, label="Create the dataset if it does not exist")
        label_field_input(inputs, ctx, new_allowed=True)
        inputs.bool("replace_reviewed", default=False, label="Also replace samples already marked reviewed")
        inputs.float("review_below", required=False, min=0.0, max=1.0, label="Only images needing review: confidence below",
                     description="Empty: every image. Else only images with a segment scored below this (plus the audit sample)")
        inputs.float("audit_fraction", required=False, min=0.0, max=1.0, label="Audit sample (fraction of all images)",
                     description="Also load this random fraction of the images (same draw on every load)")
        inputs.enum("mask_storage", ["database", "files"], default="database", label="Masks",
                    description="database: inside the samples; files: PNGs next to the output (faster, smaller database)")
        return types.Property(inputs, view=types.View(label="Load PosSAM autolabel output"))

    def execute(self, ctx):
        target = ctx.params.get("dataset_name") or (ctx.dataset.name if ctx.dataset is not None else None)
        result = load_autolabel_output(
            ctx.params["output_dir"],
            target,
            label_field=chosen_label_field(ctx),
            create=bool(ctx.params.get("create_dataset", False)),
            replace_reviewed=bool(ctx.params.get("replace_reviewed", False)),
            review_below=ctx.params.get("review_below"),
            audit_fraction=ctx.params.get("audit_fraction"),
            mask_storage=ctx.params.get("mask_storage") or "database",
            progress=progress_reporter(ctx),
        )
        if not ctx.delegated:
            ctx.ops.reload_dataset()
            ctx.ops.notify(f"Loaded {result.num_segments} segments of {result.num_labeled} images into {result.dataset_name}.{result.label_field}", variant="success")
        return result.to_dict()

    def resolve_output(self, ctx):
        outputs = types.Object()
        for key in ("dataset_name", "label_field", "num_images", "num_labeled", "num_segments", "num_samples_added", "num_errors", "num_skipped_reviewed"):
            outputs.str(key, label=key.replace("_", " "))
        return types.Property(outputs, view=types.View(label="Loaded"))


class RunAutolabel(DelegatedOperator):
    @property
    def config(self):
        return delegated_operator_config(
            "run_autolabel",
            "PosSAM: run autolabel",
            "Label the current view with PosSAM (Ray job, delegated) and load the results into this dataset",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("out_dir", required=True, label="Output directory", description="Where the autolabel job writes Parquet + PNG (new, or resume/overwrite below)")
        inputs.str("config", required=False, label="PosSAM config (YAML)", description="Empty: the shipped default model")
        inputs.str("checkpoint", required=False, label="Head checkpoint", description="Empty: the config's")
        inputs.str("vocabulary", required=False, label="Vocabulary", description="coco, ade20k, a vocabulary file, or 'cat,dog,grass [stuff]' (empty: the config's)")
        inputs.int("batch_size", default=4, min=1, label="Batch size")
        inputs.int("num_cpus", required=False, min=1, label="CPUs for a local Ray (empty: all)")
        inputs.str("ray_address", required=False, label="Ray cluster address", description="Empty: RAY_ADDRESS, else a local Ray")
        modes = types.RadioGroup()
        for mode in ("new", "resume", "overwrite"):
            modes.add_choice(mode, label=mode)
        inputs.enum("mode", modes.values(), default="new", label="Output directory mode", view=modes)
        label_field_input(inputs, ctx, new_allowed=True)
        ctx.target_view()
        inputs.view("delegated", types.Notice(label="Runs as a delegated operation: start a worker with `fiftyone delegated launch`; labels load into this dataset when done"))
        return types.Property(inputs, view=types.View(label="Run PosSAM autolabel"))

    def execute(self, ctx):
        from possam_label.fiftyone.run import autolabel_samples

        result = autolabel_samples(
            ctx.target_view(),
            ctx.params["out_dir"],
            label_field=chosen_label_field(ctx),
            config=ctx.params.get("config") or None,
            checkpoint=ctx.params.get("checkpoint") or None,
            vocabulary=ctx.params.get("vocabulary") or None,
            batch_size=int(ctx.params.get("batch_size") or 4),
            num_cpus=ctx.params.get("num_cpus") or None,
            ray_address=ctx.params.get("ray_address") or None,
            mode=ctx.params.get("mode") or "new",
            progress=progress_reporter(ctx) or None,
        )
        return result.to_dict()
