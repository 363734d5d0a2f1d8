"""The review snapshot behind the panel (possam_label.fiftyone.review_stats), against FiftyOne's
own aggregations on a real database: after every kind of write (plugin corrections, an edit
straight to the dataset as the App's editor makes it, a label without a score, samples added and
deleted), read incrementally, restored from the stored copy in a new process, and on filtered views.
"""

from __future__ import annotations

import os

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

from pathlib import Path

import numpy as np
import pytest

from conftest import fresh_dataset_name, import_or_unavailable

fo = import_or_unavailable("fiftyone")
from fiftyone import ViewField as F  # noqa: E402

from possam_label.fiftyone import corrections as C  # noqa: E402
from possam_label.fiftyone import review_stats  # noqa: E402
from possam_label.fiftyone.auto_accept import review_outcomes  # noqa: E402
from possam_label.fiftyone.editor_sync import sync_editor_edits  # noqa: E402
from possam_label.fiftyone.load import load_autolabel_output  # noqa: E402
from possam_label.fiftyone.review import needs_review_view, review_summary  # noqa: E402
from possam_label.fiftyone.review_queue import next_in_queue, queue_status, queue_view  # noqa: E402

pytestmark = pytest.mark.fiftyone

THRESHOLDS = (0.0, 0.35, 0.5, 0.8, 1.0)


def _reference(view, threshold: float) -> dict:
    """The panel's numbers computed by FiftyOne's aggregations (no snapshot)."""
    totals = view.count_values("possam.detections.label")
    below = view.filter_labels("possam", F("confidence") < threshold, only_matches=False).count_values("possam.detections.label")
    counts, edges, _ = view.histogram_values("possam.detections.confidence", bins=20, range=[0.0, 1.0])
    statuses = view.count_values("possam.detections.review_status") if view.has_field("possam.detections.review_status") else {}
    queue = queue_view(view, threshold)
    return {
        "num_samples": view.count(),
        "per_class": {k: (v, below.get(k, 0)) for k, v in totals.items() if k is not None},
        "histogram": [int(c) for c in counts],
        "statuses": {k: v for k, v in statuses.items() if k is not None},
        "reviewed": view.match(F("possam_reviewed") == True).count(),  # noqa: E712
        "queue": (queue.count(), queue.count("possam.detections")),
        "decided": view.count("possam.detections.review_status"),
        "deleted": view.count("possam_deleted.detections"),
    }


def _library(view, threshold: float) -> dict:
    s = review_summary(view, threshold)
    q = queue_status(view, threshold)
    return {
        "num_samples": s.num_samples,
        "per_class": {c.label: (c.total, c.below) for c in s.per_class},
        "histogram": s.histogram_counts,
        "statuses": s.status_counts,
        "reviewed": s.num_reviewed_samples,
        "queue": (q.samples_left, q.labels_left),
        "decided": q.labels_decided,
        "deleted": q.labels_deleted,
    }


def _check(view) -> None:
    for threshold in THRESHOLDS:
        assert _library(view, threshold) == _reference(view, threshold), threshold


def _stored_files(ds) -> int:
    return len(list(review_stats._bucket().find({"filename": review_stats._store_name(ds, "possam")})))


def test_snapshot_matches_database_aggregations_through_every_kind_of_write(fiftyone_db, coco_autolabel_output) -> None:
    name = fresh_dataset_name("review_stats")
    load_autolabel_output(coco_autolabel_output(seed=3), name, progress=False)
    ds = fo.load_dataset(name)
    assert _stored_files(ds) == 1  # the loader leaves the snapshot stored for the App
    # The first editor sync skips what the loader wrote and nothing changed since (not read at all).
    assert sync_editor_edits(ds, "possam").num_samples_checked == 0
    review_stats.clear_cache()
    _check(ds)
    _check(ds.view())

    a, b = list(ds.sort_by("filepath"))[:2]
    copy = a.copy()
    copy.filepath = a.filepath + "#copy.jpg"
    ds.add_sample(copy)
    _check(ds)
    dets_a, dets_b = a["possam"].detections, b["possam"].detections
    sel = lambda sample, det: [{"sample_id": sample.id, "label_id": det.id, "field": "possam"}]  # noqa: E731
    C.accept_labels(ds, sel(a, dets_a[0]))
    C.relabel_segments(ds, sel(a, dets_a[1]), "brand_new_class")
    C.reject_labels(ds, sel(b, dets_b[0]))
    C.delete_segments(ds, sel(b, dets_b[1]))
    C.mark_reviewed(ds, [b.id])
    _check(ds)  # incremental: only the two samples are read again

    # As the App's editor writes: straight to the dataset, no plugin call (class changed, a drawn
    # label with no score: the plain-path read no longer lines up for this sample).
    c = ds[copy.id]
    c["possam"].detections[0].label = "edited_in_app"
    c["possam"].detections.append(fo.Detection(label="drawn", bounding_box=[0.1, 0.1, 0.2, 0.2]))
    c.save()
    _check(ds)
    snapshot = review_stats.review_snapshot(ds, "possam")
    assert np.isnan(snapshot.confidence[snapshot.current()]).sum() == 1

    # A new App process: restored from the stored copy (written before these writes), then only
    # the samples changed since are read again.
    review_stats.clear_cache()
    _check(ds)

    # Samples added and deleted.
    clone = b.copy()
    clone.filepath = b.filepath + "#copy.jpg"
    ds.add_sample(clone)
    _check(ds)
    ds.delete_samples(clone.id)
    _check(ds)

    # Views: a label filter and a sample filter, each cached under its own key.
    _check(needs_review_view(ds, 0.5))
    _check(ds.match(F("possam_reviewed") != True))  # noqa: E712
    C.accept_labels(ds, sel(a, ds[a.id]["possam"].detections[2]))
    _check(needs_review_view(ds, 0.5))
    _check(ds.limit(2))  # not incremental: read whole each time

    # Outcomes for auto-accept: accepted right; rejected, relabeled, deleted wrong; the undecided
    # labels of the sample marked reviewed right; the drawn label (no score) none.
    outcomes = review_outcomes(ds)
    reviewed_rest = sum(1 for d in ds[b.id]["possam"].detections if not d.has_field("review_status") or d["review_status"] is None)
    assert outcomes.correct.sum() == 2 + reviewed_rest and (~outcomes.correct).sum() == 3
    assert "brand_new_class" not in set(outcomes.label)  # scored by the class the model predicted
    pending = ds.match(F("possam_reviewed") != True).filter_labels(  # noqa: E712
        "possam", F("confidence").exists() & ~F("review_status").exists(), only_matches=False)
    assert len(outcomes.unreviewed_confidence) == pending.count("possam.detections")
    assert sorted(outcomes.unreviewed_confidence) == sorted(pending.values("possam.detections.confidence", unwind=True))
    first = next_in_queue(ds, 0.5)
    assert first in set(queue_view(ds, 0.5).values("id"))

    assert review_stats.delete_stored_snapshots(ds) == 1
    review_stats.clear_cache()
    review_stats.review_snapshot(ds, "possam")  # read whole and stored again
    assert _stored_files(ds) == 1
    stale = review_stats._store_name(ds, "possam")
    fo.delete_dataset(name)
    review_stats.prune_stored_snapshots()  # what the next store of any dataset does
    assert not list(review_stats._bucket().find({"filename": stale}))


def test_tiny_segments_are_listed_smallest_first_and_selectable_from_the_panel(fiftyone_db, coco_autolabel_output) -> None:
    from types import SimpleNamespace

    from possam_label.fiftyone.review import TINY_SEGMENT_AREA, tiny_segments

    name = fresh_dataset_name("tiny_segments")
    load_autolabel_output(coco_autolabel_output(seed=4), name, progress=False)
    ds = fo.load_dataset(name)
    every = [(s.id, d.id, d.label, d["area"]) for s in ds for d in s["possam"].detections]
    max_area = sorted(area for *_, area in every)[len(every) // 4]  # the smallest quarter
    expected = sorted((area, sid, lid) for sid, lid, _, area in every if area <= max_area)
    found = tiny_segments(ds, max_area, limit=None)
    assert sorted((t.area, t.sample_id, t.label_id) for t in found) == expected
    assert [t.area for t in found] == sorted(t.area for t in found) and len(found) >= 2
    assert tiny_segments(ds, max_area, limit=2) == found[:2]
    assert all(t.area <= TINY_SEGMENT_AREA for t in tiny_segments(ds))

    # The panel lists them and a row's "Select" opens its sample with that label selected.
    import fiftyone.operators as foo

    fo.config.plugins_dir = str(Path(__file__).resolve().parents[1] / "plugins")
    calls: list = []
    ops = SimpleNamespace(open_sample=lambda id: calls.append(("open", id)), set_selected_labels=lambda labels: calls.append(("select", labels)))
    ctx = SimpleNamespace(view=ds.view(), dataset=ds, panel=SimpleNamespace(state=SimpleNamespace(label_field="possam")), params={}, ops=ops)
    panel = foo.get_operator("@possam/review/review_panel")  # the plugin as FiftyOne loads it
    panel.find_tiny_segments(ctx)
    small = tiny_segments(ds, TINY_SEGMENT_AREA, limit=50)
    assert [row["area"] for row in ctx.panel.state.tiny_table] == [t.area for t in small]
    assert small, "the COCO fixture has segments of at most 256 pixels"
    ctx.params = {"row": 0}
    panel.select_tiny_segment(ctx)
    assert calls == [("open", small[0].sample_id), ("select", [small[0].selection("possam")])]
    fo.delete_dataset(name)
