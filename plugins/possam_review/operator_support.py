"""What the review plugin's operators and panel share: the label field they act on, the form
inputs they have in common (label field, selection, scope, threshold), the review threshold shared
by the panels and the queue, the feedback after a correction, progress reporting, and the
configuration of the operators that always run delegated."""

from __future__ import annotations

import logging
from typing import Callable, Union

import fiftyone.operators as foo
import fiftyone.operators.types as types

from possam_label.fiftyone.corrections import describe_selection
from possam_label.fiftyone.dataset import DEFAULT_LABEL_FIELD, possam_label_fields
from possam_label.fiftyone.review import DEFAULT_REVIEW_THRESHOLD

logger = logging.getLogger(__name__)

PLUGIN = "@possam/review"


def possam_fields(ctx) -> list[str]:
    """The dataset's PosSAM label fields (none without a dataset)."""
    return possam_label_fields(ctx.dataset) if ctx.dataset is not None else []


def default_label_field(ctx) -> str:
    """``possam`` when the dataset has it (or no PosSAM field yet), else its first PosSAM field."""
    fields = possam_fields(ctx)
    if DEFAULT_LABEL_FIELD in fields or not fields:
        return DEFAULT_LABEL_FIELD
    return fields[0]


def chosen_label_field(ctx) -> str:
    """The ``label_field`` parameter, else :func:`default_label_field`."""
    return ctx.params.get("label_field") or default_label_field(ctx)


def progress_reporter(ctx) -> Union[Callable[[float, str], None], bool]:
    """Loader/exporter/job progress callback: reports to the delegated-operation record when
    delegated; False (no progress bar) when run in the App's process."""
    if not ctx.delegated:
        return False

    def report(fraction: float, message: str) -> None:
        ctx.set_progress(progress=fraction, label=message)

    return report


def delegated_operator_config(name: str, label: str, description: str) -> foo.OperatorConfig:
    """The config of an operator that takes minutes to hours (inference, training): dynamic inputs,
    delegated execution only (an OSS worker runs it: ``fiftyone delegated launch``)."""
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        allow_immediate_execution=False,
        allow_delegated_execution=True,
        default_choice_to_delegated=True,
    )


class DelegatedOperator(foo.Operator):
    """Base of the operators configured by :func:`delegated_operator_config`: never block the App."""

    def resolve_delegation(self, ctx):
        return True


# ------------------------------------------------------------------------ form inputs and feedback
def label_field_input(inputs: types.Object, ctx, new_allowed: bool = False) -> None:
    fields = possam_fields(ctx)
    if fields and not new_allowed:
        dropdown = types.DropdownView()
        for name in fields:
            dropdown.add_choice(name, label=name)
        inputs.enum("label_field", dropdown.values(), default=default_label_field(ctx), required=False, label="Label field", view=dropdown)
    else:
        inputs.str("label_field", default=default_label_field(ctx), required=False, label="Label field",
                   description="The Detections field that holds (or will hold) the PosSAM labels")


def require_labels(inputs: types.Object, ctx) -> bool:
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


def check_multi_sample(ctx) -> None:
    """Refuse a selection spanning several samples unless the form's confirmation was given."""
    samples = {item.get("sample_id") for item in ctx.selected_labels or []}
    if len(samples) > 1 and not ctx.params.get("confirm_multi"):
        raise ValueError(f"the selection spans {len(samples)} samples; confirm it in the form, or clear the selection and select again")


def shared_threshold(ctx) -> float:
    """The review threshold shared by the grid and modal panels and the queue operators."""
    try:
        value = ctx.store("possam_review").get(f"threshold:{chosen_label_field(ctx)}")
    except Exception:  # no execution store (old database): per-call default
        value = None
    return float(value) if value is not None else DEFAULT_REVIEW_THRESHOLD


def set_shared_threshold(ctx, value: float) -> None:
    try:
        ctx.store("possam_review").set(f"threshold:{chosen_label_field(ctx)}", float(value))
    except Exception:
        logger.warning("could not store the review threshold", exc_info=True)


def current_sample_selection(ctx) -> list:
    """The selected labels of the open sample; refuses selections of other samples."""
    if not ctx.current_sample:
        raise ValueError("open a sample first: this action works in the sample view")
    others = {s.get("sample_id") for s in ctx.selected_labels or []} - {ctx.current_sample}
    if others:
        raise ValueError(f"the selection holds labels of {len(others)} other sample(s); clear it and select labels of this sample")
    if not ctx.selected_labels:
        raise ValueError("select labels of this sample first (click them)")
    return list(ctx.selected_labels)


def after_correction(ctx, message: str) -> None:
    """Immediate feedback: the consumed selection is cleared and the changed samples reloaded."""
    ctx.ops.clear_selected_labels()
    ctx.ops.reload_samples()
    ctx.trigger(f"{PLUGIN}/refresh_open_sample")
    ctx.ops.notify(message, variant="success")


def scope_input(inputs: types.Object, ctx) -> None:
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


def scope_sample_ids(ctx) -> list[str]:
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


def threshold_input(inputs: types.Object, ctx) -> None:
    inputs.float("threshold", default=DEFAULT_REVIEW_THRESHOLD, min=0.0, max=1.0, required=True, label="Confidence threshold",
                 view=types.SliderView(componentsProps={"slider": {"min": 0, "max": 1, "step": 0.01}}))
