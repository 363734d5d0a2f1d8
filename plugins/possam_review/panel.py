"""The review panel (grid and modal): threshold slider, confidence histogram, per-class counts,
the review queue and auto-accept estimate, review views and the actions on the selected labels."""

from __future__ import annotations

import os

import fiftyone.operators as foo
import fiftyone.operators.types as types

from possam_label.fiftyone.corrections import accept_labels, delete_segments, mark_reviewed, reject_labels
from possam_label.fiftyone.dataset import has_possam_field
from possam_label.fiftyone.review import (
    DEFAULT_REVIEW_THRESHOLD,
    TINY_SEGMENT_AREA,
    confident_view,
    needs_review_view,
    save_review_views,
    tag_by_confidence,
    tiny_segments,
)
from possam_label.fiftyone.review_panel import panel_state
from possam_label.fiftyone.review_queue import next_in_queue

from .operator_support import (
    PLUGIN,
    after_correction,
    default_label_field,
    possam_fields,
    set_shared_threshold,
    shared_threshold,
)


TINY_LIST_SIZE = 50  # rows of the panel's tiny-segment list


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
        ctx.panel.state.threshold = shared_threshold(ctx)
        self._refresh(ctx)

    def _refresh(self, ctx):
        label_field = ctx.panel.state.label_field or default_label_field(ctx)
        if ctx.dataset is None or not has_possam_field(ctx.dataset, label_field):
            ctx.panel.state.ready = False
            return
        threshold = float(ctx.panel.state.threshold if ctx.panel.state.threshold is not None else DEFAULT_REVIEW_THRESHOLD)
        # Edits made in the Annotate tab since the last refresh become corrections (incremental).
        state = panel_state(ctx.dataset, ctx.view, threshold, label_field)
        if state.synced.num_edits:
            ctx.ops.reload_samples()
        summary = state.summary
        ctx.panel.state.ready = True
        ctx.panel.state.queue_md = state.queue.describe()
        ctx.panel.state.auto_accept_md = state.auto_accept
        ctx.panel.state.summary_md = state.summary_markdown()
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
            set_shared_threshold(ctx, ctx.panel.state.threshold)
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
        after_correction(ctx, f"{verb} {result.num_labels} label(s)")
        self._refresh(ctx)

    _operators = {"Accepted": "accept_labels", "Rejected": "reject_labels", "Deleted": "delete_segments"}

    def next_sample(self, ctx):
        sample_id = next_in_queue(ctx.view, self._threshold(ctx), ctx.current_sample, ctx.panel.state.label_field)
        ctx.ops.clear_selected_labels()
        if sample_id is None:
            ctx.ops.notify("The queue is empty", variant="success")
            return
        ctx.ops.open_sample(id=sample_id)

    def find_tiny_segments(self, ctx):
        label_field = ctx.panel.state.label_field or default_label_field(ctx)
        found = tiny_segments(ctx.view, TINY_SEGMENT_AREA, label_field, limit=TINY_LIST_SIZE)
        ctx.panel.state.tiny_refs = [t.selection(label_field) for t in found]
        ctx.panel.state.tiny_table = [
            {"label": t.label, "area": t.area, "confidence": "" if t.confidence is None else f"{t.confidence:.2f}",
             "image": os.path.basename(t.filepath)}
            for t in found
        ]
        ctx.panel.state.tiny_md = (f"{len(found)} label(s) of at most {TINY_SEGMENT_AREA} px in this view"
                                   + (f" (the {TINY_LIST_SIZE} smallest)" if len(found) == TINY_LIST_SIZE else "")
                                   + ": select one to open its sample with the label selected.")

    def select_tiny_segment(self, ctx):
        refs = ctx.panel.state.tiny_refs or []
        row = ctx.params.get("row")
        if row is None or not 0 <= int(row) < len(refs):
            return
        ref = refs[int(row)]
        ctx.ops.open_sample(id=ref["sample_id"])
        ctx.ops.set_selected_labels([ref])

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

        tiny = panel.h_stack("tiny", gap=1)
        tiny.btn("find_tiny", label=f"Find tiny segments (≤ {TINY_SEGMENT_AREA} px)", on_click=self.find_tiny_segments)
        tiny.md(ctx.panel.state.tiny_md or "", name="tiny_md")
        if ctx.panel.state.tiny_table:
            tiny_view = types.TableView()
            tiny_view.add_column("label", label="Class")
            tiny_view.add_column("area", label="Pixels")
            tiny_view.add_column("confidence", label="Confidence")
            tiny_view.add_column("image", label="Image")
            tiny_view.add_row_action("select", self.select_tiny_segment, label="Select", icon="ads_click")
            panel.list("tiny_table", types.Object(), view=tiny_view, label="Tiny segments")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, padding=2))
