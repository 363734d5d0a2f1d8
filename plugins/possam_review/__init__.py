"""FiftyOne plugin ``@possam/review``: review PosSAM auto-labels in the App.

UI only: every operator calls one function of :mod:`possam_label.fiftyone`, which does the work
and can be called from Python just the same (see docs/review.md). Found by FiftyOne when
``FIFTYONE_PLUGINS_DIR`` points at the repository's ``plugins/`` directory.
"""

from __future__ import annotations

import logging

import fiftyone.operators as foo
import fiftyone.operators.types as types

from possam_label.fiftyone.autolabel_output import AutolabelOutput, AutolabelOutputError
from possam_label.fiftyone.auto_accept import auto_accept, estimate_auto_accept
from possam_label.fiftyone.corrections import (
    accept_labels,
    delete_segments,
    describe_selection,
    mark_reviewed,
    reject_labels,
    relabel_segments,
    revert_corrections,
)
from possam_label.fiftyone.editor_sync import sync_editor_edits
from possam_label.fiftyone.mask_tools import merge_labels, split_label, undo_correction
from possam_label.fiftyone.review_queue import next_in_queue, queue_status
from possam_label.fiftyone.dataset import get_categories, has_possam_field
from possam_label.fiftyone.export import EXPORT_FORMATS, ExportOptions, export_from_dataset
from possam_label.fiftyone.load import load_autolabel_output
from possam_label.fiftyone.review import (
    CONFIDENT_TAG,
    DEFAULT_REVIEW_THRESHOLD,
    NEEDS_REVIEW_TAG,
    confident_view,
    needs_review_view,
    review_summary,
    save_review_views,
    tag_by_confidence,
)

from .operator_support import (
    DelegatedOperator,
    chosen_label_field,
    default_label_field,
    delegated_operator_config,
    possam_fields,
    progress_reporter,
)

logger = logging.getLogger(__name__)

PLUGIN = "@possam/review"


# ------------------------------------------------------------------------------------ helpers
def _label_field_input(inputs: types.Object, ctx, new_allowed: bool = False) -> None:
    fields = possam_fields(ctx)
    if fields and not new_allowed:
        dropdown = types.DropdownView()
        for name in fields:
            dropdown.add_choice(name, label=name)
        inputs.enum("label_field", dropdown.values(), default=default_label_field(ctx), required=False, label="Label field", view=dropdown)
    else:
        inputs.str("label_field", default=default_label_field(ctx), required=False, label="Label field",
                   description="The Detections field that holds (or will hold) the PosSAM labels")


def _require_labels(inputs: types.Object, ctx) -> bool:
    """Lists the selected labels (class, confidence, image); adds a warning and returns False when
    nothing is selected, and a required confirmation when the selection spans several samples."""
    if not ctx.selected_labels:
        inputs.view("no_selection", types.Warning(label="No labels selected", description="Open a sample and click the segments to correct (or select them in the grid), then run this again."))
        return False
    try:
        rows = describe_selection(ctx.dataset, ctx.selected_labels, chosen_label_field(ctx))
    except ValueError as err:
        inputs.view("bad_selection", types.Warning(label="Selection", description=str(err)))
        return False
    shown = "\n".join(f"- **{r['label']}** {r['confidence']:.2f} · {r['filename']}" for r in rows[:20])
    more = f"\n- … and {len(rows) - 20} more" if len(rows) > 20 else ""
    inputs.md(f"{len(rows)} label(s) selected:\n\n{shown}{more}", name="selection")
    num_samples = len({r["sample_id"] for r in rows})
    if num_samples > 1:
        inputs.bool("confirm_multi", default=False, required=True, label=f"Yes, act on labels of {num_samples} samples",
                    description="The selection spans several samples (selections persist across samples)")
    return True


def _check_multi_sample(ctx) -> None:
    """Refuse a selection spanning several samples unless the form's confirmation was given."""
    samples = {item.get("sample_id") for item in ctx.selected_labels or []}
    if len(samples) > 1 and not ctx.params.get("confirm_multi"):
        raise ValueError(f"the selection spans {len(samples)} samples; confirm it in the form, or clear the selection and select again")


def _shared_threshold(ctx) -> float:
    """The review threshold shared by the grid and modal panels and the queue operators."""
    try:
        value = ctx.store("possam_review").get(f"threshold:{chosen_label_field(ctx)}")
    except Exception:  # no execution store (old database): per-call default
        value = None
    return float(value) if value is not None else DEFAULT_REVIEW_THRESHOLD


def _set_shared_threshold(ctx, value: float) -> None:
    try:
        ctx.store("possam_review").set(f"threshold:{chosen_label_field(ctx)}", float(value))
    except Exception:
        logger.warning("could not store the review threshold", exc_info=True)


def _current_sample_selection(ctx) -> list:
    """The selected labels of the open sample; refuses selections of other samples."""
    if not ctx.current_sample:
        raise ValueError("open a sample first: this action works in the sample view")
    others = {s.get("sample_id") for s in ctx.selected_labels or []} - {ctx.current_sample}
    if others:
        raise ValueError(f"the selection holds labels of {len(others)} other sample(s); clear it and select labels of this sample")
    if not ctx.selected_labels:
        raise ValueError("select labels of this sample first (click them)")
    return list(ctx.selected_labels)


def _after_correction(ctx, message: str) -> None:
    """Immediate feedback: the consumed selection is cleared and the changed samples reloaded."""
    ctx.ops.clear_selected_labels()
    ctx.ops.reload_samples()
    ctx.ops.notify(message, variant="success")


def _scope_input(inputs: types.Object, ctx) -> None:
    choices = types.RadioGroup()
    default = "view"
    if ctx.current_sample:
        choices.add_choice("current", label="Current sample")
        default = "current"
    if ctx.selected:
        choices.add_choice("selected", label=f"Selected samples ({len(ctx.selected)})")
        default = "selected" if default == "view" else default
    choices.add_choice("view", label="All samples in the current view")
    inputs.enum("scope", choices.values(), default=default, label="Samples", view=choices)


def _scope_sample_ids(ctx) -> list[str]:
    scope = ctx.params.get("scope", "view")
    if scope == "current":
        if not ctx.current_sample:
            raise ValueError("no sample is open: open a sample first or choose another scope")
        return [ctx.current_sample]
    if scope == "selected":
        if not ctx.selected:
            raise ValueError("no samples are selected: select samples in the grid first or choose another scope")
        return list(ctx.selected)
    return ctx.view.values("id")


# ------------------------------------------------------------------------------------ loading
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
        _label_field_input(inputs, ctx, new_allowed=True)
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


# ------------------------------------------------------------------------------------- review
def _threshold_input(inputs: types.Object, ctx) -> None:
    inputs.float("threshold", default=DEFAULT_REVIEW_THRESHOLD, min=0.0, max=1.0, required=True, label="Confidence threshold",
                 view=types.SliderView(componentsProps={"slider": {"min": 0, "max": 1, "step": 0.01}}))


class SaveReviewViews(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="save_review_views", label="PosSAM: save 'needs review' and 'confident' views",
                                  description="Saved views of the labels below / at or above a confidence threshold")

    def resolve_input(self, ctx):
        inputs = types.Object()
        _threshold_input(inputs, ctx)
        _label_field_input(inputs, ctx)
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
        _threshold_input(inputs, ctx)
        _label_field_input(inputs, ctx)
        ctx.target_view()  # adds the App's target-view choice (dataset / current view / selection)
        return types.Property(inputs, view=types.View(label="Tag labels by confidence"))

    def execute(self, ctx):
        counts = tag_by_confidence(ctx.target_view(), ctx.params.get("threshold", DEFAULT_REVIEW_THRESHOLD), chosen_label_field(ctx))
        ctx.ops.reload_samples()
        ctx.ops.notify(", ".join(f"{n} tagged {tag}" for tag, n in counts.items()), variant="success")
        return counts


# -------------------------------------------------------------------------------- corrections
class RelabelSegments(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="relabel_segments", label="PosSAM: relabel selected segments",
                                  description="Give the selected segments another class of the vocabulary, or a new class", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        _require_labels(inputs, ctx)
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
        _label_field_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Relabel segments"))

    def execute(self, ctx):
        _check_multi_sample(ctx)
        isthing = ctx.params.get("isthing")
        result = relabel_segments(ctx.dataset, ctx.selected_labels, ctx.params["new_label"], chosen_label_field(ctx), isthing=None if isthing is None else bool(isthing))
        _after_correction(ctx, f"Relabeled {result.num_labels} segment(s) as {ctx.params['new_label']}")
        return result.to_dict()


class _SelectionOperator(foo.Operator):
    """Base of the operators that act on ``ctx.selected_labels`` without other inputs."""

    action_label = ""
    function = None

    def resolve_input(self, ctx):
        inputs = types.Object()
        _require_labels(inputs, ctx)
        _label_field_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label=self.config.label))

    def execute(self, ctx):
        _check_multi_sample(ctx)
        result = type(self).function(ctx.dataset, ctx.selected_labels, chosen_label_field(ctx))
        _after_correction(ctx, f"{self.action_label} {result.num_labels} label(s) in {result.num_samples} sample(s)")
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
                                  description="Undo the latest merge or split of the open sample")

    def resolve_placement(self, ctx):
        return types.Placement(types.Places.SAMPLES_VIEWER_ACTIONS,
                               types.Button(label="PosSAM: undo last mask correction", icon="/assets/icon.svg", prompt=False))

    def execute(self, ctx):
        if not ctx.current_sample:
            raise ValueError("open a sample first")
        entry = undo_correction(ctx.dataset, ctx.current_sample, chosen_label_field(ctx))
        _after_correction(ctx, f"Undid the {entry['action']}")
        return {"undone": entry["action"]}


class MarkReviewed(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="mark_reviewed", label="PosSAM: mark samples reviewed",
                                  description="Mark the current, selected or all samples of the view as reviewed (or not)")

    def resolve_input(self, ctx):
        inputs = types.Object()
        _scope_input(inputs, ctx)
        inputs.bool("reviewed", default=True, label="Reviewed")
        _label_field_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Mark reviewed"))

    def execute(self, ctx):
        reviewed = bool(ctx.params.get("reviewed", True))
        count = mark_reviewed(ctx.dataset, _scope_sample_ids(ctx), chosen_label_field(ctx), reviewed=reviewed)
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
        _scope_input(inputs, ctx)
        _label_field_input(inputs, ctx)
        inputs.view("warning", types.Warning(label="Corrections of these samples will be undone (the corrections log keeps them)"))
        return types.Property(inputs, view=types.View(label="Revert corrections"))

    def execute(self, ctx):
        count = revert_corrections(ctx.dataset, _scope_sample_ids(ctx), chosen_label_field(ctx))
        ctx.ops.clear_selected_labels()
        ctx.ops.reload_samples()
        ctx.ops.notify(f"Reverted {count} sample(s) to the original predictions", variant="success")
        return {"num_samples": count}


# ------------------------------------------------------------------- sample-viewer one-clicks
class _QuickAction(foo.Operator):
    """One click in the sample viewer's action bar on the selected labels of the open sample."""

    action_label = ""
    function = None
    button = ""

    def resolve_placement(self, ctx):
        return types.Placement(types.Places.SAMPLES_VIEWER_ACTIONS,
                               types.Button(label=self.config.label, icon="/assets/icon.svg", prompt=False))

    def execute(self, ctx):
        selection = _current_sample_selection(ctx)
        result = type(self).function(ctx.dataset, selection, chosen_label_field(ctx))
        _after_correction(ctx, f"{self.action_label} {result.num_labels} label(s)")
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
        threshold = float(ctx.params.get("threshold", _shared_threshold(ctx)))
        label_field = chosen_label_field(ctx)
        sync_editor_edits(ctx.dataset, label_field)
        sample_id = next_in_queue(ctx.view, threshold, ctx.current_sample, label_field)
        ctx.ops.clear_selected_labels()
        if sample_id is None:
            ctx.ops.notify(f"The queue is empty: no undecided label below {threshold:.2f} in this view", variant="success")
            return {"sample_id": None}
        ctx.ops.open_sample(id=sample_id)
        return {"sample_id": sample_id}


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
        inputs.float("threshold", default=_shared_threshold(ctx), min=0.0, max=1.0, required=True, label="Accept labels with confidence at or above")
        _label_field_input(inputs, ctx)
        threshold = float(ctx.params.get("threshold", _shared_threshold(ctx)))
        try:
            estimate = estimate_auto_accept(ctx.view, chosen_label_field(ctx), thresholds=[threshold], num_bootstrap=100)
            inputs.view("estimate", types.Notice(label=estimate.at(threshold).describe(),
                                                 description=f"from {estimate.num_reviewed} reviewed labels (95 % bootstrap interval)"))
        except ValueError as err:
            inputs.view("no_estimate", types.Warning(label="No estimate yet", description=str(err)))
        return types.Property(inputs, view=types.View(label="Auto-accept"))

    def execute(self, ctx):
        threshold = float(ctx.params.get("threshold", _shared_threshold(ctx)))
        result = auto_accept(ctx.view, threshold, chosen_label_field(ctx))
        _after_correction(ctx, f"Auto-accepted {result.num_labels} label(s) at or above {threshold:.2f}")
        return result.to_dict()


# ------------------------------------------------------------------------------------- export
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
        _label_field_input(inputs, ctx)
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


# ---------------------------------------------------------------------------------- autolabel
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
        _label_field_input(inputs, ctx, new_allowed=True)
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


# -------------------------------------------------------------------------------------- panel
class ReviewPanel(foo.Panel):
    """Confidence review: threshold slider, histogram, per-class counts, review views and actions."""

    @property
    def config(self):
        return foo.PanelConfig(
            name="review_panel",
            label="PosSAM review",
            surfaces="grid modal",
            icon="/assets/icon.svg",
            help_markdown="Pick a confidence threshold, look at what falls below it, correct the labels, then export. See docs/review.md.",
        )

    # ---------------------------------------------------------------- state
    def on_load(self, ctx):
        if ctx.panel.state.label_field is None:
            ctx.panel.state.label_field = default_label_field(ctx)
        # One threshold for the grid and the modal panel (and the queue operators).
        ctx.panel.state.threshold = _shared_threshold(ctx)
        self._refresh(ctx)

    def _refresh(self, ctx):
        label_field = ctx.panel.state.label_field or default_label_field(ctx)
        if ctx.dataset is None or not has_possam_field(ctx.dataset, label_field):
            ctx.panel.state.ready = False
            return
        threshold = float(ctx.panel.state.threshold if ctx.panel.state.threshold is not None else DEFAULT_REVIEW_THRESHOLD)
        # Edits made in the Annotate tab since the last refresh become corrections (incremental).
        synced = sync_editor_edits(ctx.dataset, label_field)
        if synced.num_edits:
            ctx.ops.reload_samples()
        summary = review_summary(ctx.view, threshold, label_field)
        ctx.panel.state.ready = True
        ctx.panel.state.queue_md = queue_status(ctx.view, threshold, label_field).describe()
        try:
            estimate = estimate_auto_accept(ctx.view, label_field, thresholds=[threshold], num_bootstrap=100)
            ctx.panel.state.auto_accept_md = estimate.at(threshold).describe() + f" (from {estimate.num_reviewed:,} reviewed labels)"
        except ValueError as err:
            ctx.panel.state.auto_accept_md = f"Auto-accept estimate: {err}"
        ctx.panel.state.summary_md = (
            f"**{summary.num_labels}** labels in **{summary.num_samples}** samples &nbsp;·&nbsp; "
            f"below {threshold:.2f}: **{summary.num_below}** &nbsp;·&nbsp; at or above: **{summary.num_above}** &nbsp;·&nbsp; "
            f"reviewed samples: **{summary.num_reviewed_samples}**"
            + ("" if not summary.status_counts else " &nbsp;·&nbsp; " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.status_counts.items())))
        )
        centers = [(a + b) / 2 for a, b in zip(summary.histogram_edges[:-1], summary.histogram_edges[1:])]
        colors = ["#d9534f" if c < threshold else "#5cb85c" for c in centers]
        ctx.panel.data.histogram = [{"type": "bar", "x": centers, "y": summary.histogram_counts, "marker": {"color": colors}, "name": "labels"}]
        ctx.panel.state.class_table = [
            {"label": c.label, "total": c.total, "below": c.below, "above": c.above} for c in summary.per_class
        ]

    def on_change_view(self, ctx):
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.state.label_field = default_label_field(ctx)
        self._refresh(ctx)

    def set_threshold(self, ctx):
        value = ctx.params.get("value")
        if value is not None:
            ctx.panel.state.threshold = round(float(value), 2)
            _set_shared_threshold(ctx, ctx.panel.state.threshold)
        self._refresh(ctx)

    def set_label_field(self, ctx):
        value = ctx.params.get("value")
        if value:
            ctx.panel.state.label_field = value
        self._refresh(ctx)

    # -------------------------------------------------------------- actions
    def _threshold(self, ctx) -> float:
        return float(ctx.panel.state.threshold if ctx.panel.state.threshold is not None else DEFAULT_REVIEW_THRESHOLD)

    def show_needs_review(self, ctx):
        ctx.ops.set_view(view=needs_review_view(ctx.dataset, self._threshold(ctx), ctx.panel.state.label_field))

    def show_confident(self, ctx):
        ctx.ops.set_view(view=confident_view(ctx.dataset, self._threshold(ctx), ctx.panel.state.label_field))

    def clear_view(self, ctx):
        ctx.ops.clear_view()

    def save_views(self, ctx):
        names = save_review_views(ctx.dataset, self._threshold(ctx), ctx.panel.state.label_field)
        ctx.ops.notify(f"Saved views: {', '.join(names)}", variant="success")

    def tag_labels(self, ctx):
        counts = tag_by_confidence(ctx.view, self._threshold(ctx), ctx.panel.state.label_field)
        ctx.ops.reload_samples()
        ctx.ops.notify(", ".join(f"{n} tagged {tag}" for tag, n in counts.items()), variant="success")
        self._refresh(ctx)

    def _selection_action(self, ctx, function, verb):
        if not ctx.selected_labels:
            ctx.ops.notify("Select labels first (click segments in the sample view)", variant="warning")
            return
        if len({s.get("sample_id") for s in ctx.selected_labels}) > 1:
            # Per-sample buttons never act on a selection left over from other samples; the
            # operator form lists such a selection and asks for confirmation.
            ctx.prompt(f"{PLUGIN}/{self._operators[verb]}", params={"label_field": ctx.panel.state.label_field})
            return
        result = function(ctx.dataset, ctx.selected_labels, ctx.panel.state.label_field)
        _after_correction(ctx, f"{verb} {result.num_labels} label(s)")
        self._refresh(ctx)

    _operators = {"Accepted": "accept_labels", "Rejected": "reject_labels", "Deleted": "delete_segments"}

    def next_sample(self, ctx):
        sample_id = next_in_queue(ctx.view, self._threshold(ctx), ctx.current_sample, ctx.panel.state.label_field)
        ctx.ops.clear_selected_labels()
        if sample_id is None:
            ctx.ops.notify("The queue is empty", variant="success")
            return
        ctx.ops.open_sample(id=sample_id)

    def open_auto_accept(self, ctx):
        ctx.prompt(f"{PLUGIN}/auto_accept", params={"threshold": self._threshold(ctx), "label_field": ctx.panel.state.label_field})

    def accept_selected(self, ctx):
        self._selection_action(ctx, accept_labels, "Accepted")

    def reject_selected(self, ctx):
        self._selection_action(ctx, reject_labels, "Rejected")

    def delete_selected(self, ctx):
        self._selection_action(ctx, delete_segments, "Deleted")

    def relabel_selected(self, ctx):
        ctx.prompt(f"{PLUGIN}/relabel_segments", params={"label_field": ctx.panel.state.label_field})

    def mark_current_reviewed(self, ctx):
        ids = [ctx.current_sample] if ctx.current_sample else list(ctx.selected)
        if not ids:
            ctx.ops.notify("Open a sample or select samples first", variant="warning")
            return
        count = mark_reviewed(ctx.dataset, ids, ctx.panel.state.label_field)
        ctx.ops.notify(f"Marked {count} sample(s) reviewed", variant="success")
        self._refresh(ctx)

    def open_load(self, ctx):
        ctx.prompt(f"{PLUGIN}/load_autolabel_output")

    def open_export(self, ctx):
        ctx.prompt(f"{PLUGIN}/export_training_set", params={"label_field": ctx.panel.state.label_field})

    # --------------------------------------------------------------- layout
    def render(self, ctx):
        panel = types.Object()
        if not ctx.panel.state.ready:
            panel.md(
                "This dataset has no PosSAM labels yet. Load an autolabel output directory "
                "(`python -m pipelines.autolabel --out DIR`), or run autolabel on this dataset.",
                name="empty",
            )
            panel.btn("load", label="Load autolabel output", on_click=self.open_load, variant="contained")
            return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, padding=2))

        fields = possam_fields(ctx)
        if len(fields) > 1:
            dropdown = types.DropdownView()
            for name in fields:
                dropdown.add_choice(name, label=name)
            panel.enum("label_field", dropdown.values(), default=ctx.panel.state.label_field, label="Label field", view=dropdown, on_change=self.set_label_field)
        panel.float(
            "threshold",
            default=self._threshold(ctx),
            min=0.0,
            max=1.0,
            label="Threshold",
            view=types.SliderView(label="Threshold", componentsProps={"slider": {"min": 0, "max": 1, "step": 0.01}}),
            on_change=self.set_threshold,
        )
        panel.md(f"Threshold **{self._threshold(ctx):.2f}** &nbsp;·&nbsp; " + (ctx.panel.state.summary_md or ""), name="summary")
        panel.md(ctx.panel.state.queue_md or "", name="queue")
        auto = panel.h_stack("auto", gap=1)
        auto.md(ctx.panel.state.auto_accept_md or "", name="auto_accept_md")
        auto.btn("auto_accept", label="Auto-accept…", on_click=self.open_auto_accept)

        views = panel.h_stack("views", gap=1)
        views.btn("needs_review", label="Show needs review", on_click=self.show_needs_review, variant="contained")
        views.btn("confident", label="Show confident", on_click=self.show_confident)
        views.btn("clear", label="Clear view", on_click=self.clear_view)
        views.btn("save_views", label="Save views", on_click=self.save_views)
        views.btn("tag", label="Tag by threshold", on_click=self.tag_labels)

        actions = panel.h_stack("actions", gap=1)
        actions.btn("accept", label="Accept selected", on_click=self.accept_selected)
        actions.btn("reject", label="Reject selected", on_click=self.reject_selected)
        actions.btn("relabel", label="Relabel selected…", on_click=self.relabel_selected)
        actions.btn("delete", label="Delete selected", on_click=self.delete_selected)
        actions.btn("reviewed", label="Mark reviewed", on_click=self.mark_current_reviewed)
        actions.btn("next", label="Next in queue", on_click=self.next_sample)
        actions.btn("export", label="Export…", on_click=self.open_export, variant="contained")

        panel.plot(
            "histogram",
            layout={
                "title": {"text": "Confidence histogram (red: below threshold)", "font": {"size": 13}},
                "xaxis": {"title": "confidence", "range": [0, 1]},
                "yaxis": {"title": "labels"},
                "height": 260,
                "margin": {"l": 50, "r": 10, "t": 40, "b": 40},
                "bargap": 0.05,
            },
            config={"displayModeBar": False},
            height=32,
        )
        table = types.TableView()
        table.add_column("label", label="Class")
        table.add_column("total", label="Labels")
        table.add_column("below", label="Below")
        table.add_column("above", label="At/above")
        panel.list("class_table", types.Object(), view=table, label="Per-class counts")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, padding=2))


def register(p):
    for cls in (
        LoadAutolabelOutput,
        SaveReviewViews,
        TagByConfidence,
        RelabelSegments,
        DeleteSegments,
        AcceptLabels,
        RejectLabels,
        MarkReviewed,
        RevertCorrections,
        ExportTrainingSet,
        RunAutolabel,
        QuickAccept,
        QuickReject,
        QuickDelete,
        NextInQueue,
        SyncEditorEdits,
        AutoAccept,
        MergeLabels,
        SplitLabel,
        UndoCorrection,
        ReviewPanel,
    ):
        p.register(cls)
    from .train_ops import OPERATORS as TRAIN_OPERATORS  # train on reviewed samples, relabel with these heads

    for cls in TRAIN_OPERATORS:
        p.register(cls)
