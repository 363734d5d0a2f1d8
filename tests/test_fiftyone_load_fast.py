"""The bulk loader's options on real files: mask storage in files, worker processes, loading only
what needs review or an audit sample, and a bad part that does not stop the others.

The output holds COCO-panoptic ground-truth masks (``write_coco_autolabel_output``) in one part per
image; the database is a private ``mongod`` (see test_fiftyone_review.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import fresh_dataset_name, import_or_unavailable  # noqa: E402

fo = import_or_unavailable("fiftyone")

from possam_label.fiftyone import corrections as C  # noqa: E402
from possam_label.fiftyone.autolabel_output import AutolabelOutput  # noqa: E402
from possam_label.fiftyone.bulk_load import LoadSelection  # noqa: E402
from possam_label.fiftyone.convert import detection_mask_placement, label_attr, prediction_to_labels  # noqa: E402
from possam_label.fiftyone.drawing import MASK_ONLY_ATTRIBUTE  # noqa: E402
from possam_label.fiftyone.export import check_coco_panoptic, export_from_dataset  # noqa: E402
from possam_label.fiftyone.load import load_autolabel_output  # noqa: E402
from possam_label.fiftyone.review_baseline import baseline_entries  # noqa: E402
from possam_label.io.panoptic_png import read_panoptic_png  # noqa: E402
from possam_label.io.rle import decode_rle  # noqa: E402

pytestmark = pytest.mark.fiftyone

REPO = Path(__file__).resolve().parents[1]
BROKEN = REPO / "tests" / "data" / "autolabel" / "edge_cases" / "corrupt_random_bytes.jpg"


@pytest.fixture(scope="module")
def output_dir(coco_autolabel_output) -> Path:
    return coco_autolabel_output(seed=7, error_images=[BROKEN], images_per_part=1)


@pytest.fixture(scope="module")
def rows(output_dir: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in sorted((output_dir / "segments").glob("*.parquet"))]).to_pylist()


def _full_mask(det, height: int, width: int) -> np.ndarray:
    x0, y0, mask = detection_mask_placement(det, height, width)
    full = np.zeros((height, width), dtype=bool)
    full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
    return full


def test_files_storage_masks_match_the_rles_and_fiftyone_objects(fiftyone_db, output_dir: Path, rows: list[dict], tmp_path: Path) -> None:
    masks_dir = tmp_path / "masks"
    result = load_autolabel_output(output_dir, fresh_dataset_name("fast_files"), mask_storage="files", masks_dir=masks_dir, progress=False)
    assert result.num_segments == len(rows) and result.num_errors == 1 and result.part_errors == []
    assert result.masks_dir == str(masks_dir)
    ds = fo.load_dataset("fast_files")
    assert ds.media_type == "image" and len(ds) == 3
    expected = {(r["file_path"], r["segment_id"]): r for r in rows}
    predictions = {item.record.file_path: item.prediction for item in AutolabelOutput.open(output_dir).iter_images()}
    checked = 0
    for sample in ds:
        if sample.possam is None:
            assert "decode" in sample.possam_error and sample.filepath == str(BROKEN)
            continue
        height, width = sample.metadata.height, sample.metadata.width
        semantic = sample.possam_semantic
        assert semantic.mask is None and Path(semantic.mask_path).parent.parent == masks_dir
        reference, _ = prediction_to_labels(predictions[sample.filepath])  # what the FiftyOne-object path builds
        for det, ref in zip(sample.possam.detections, reference.detections):
            assert det.mask is None and Path(det.mask_path).is_file() and Path(det.mask_path).is_relative_to(masks_dir)
            row = expected[(sample.filepath, det.segment_id)]
            assert np.array_equal(_full_mask(det, height, width), decode_rle(row["rle"]))
            assert np.array_equal(det.get_mask() > 0, ref.mask)
            assert det.bounding_box == ref.bounding_box and det.label == ref.label and det.area == ref.area
            # Both paths give a stuff label the App's mask-only drawing hint, a thing none.
            assert label_attr(det, MASK_ONLY_ATTRIBUTE) == label_attr(ref, MASK_ONLY_ATTRIBUTE) == (None if row["isthing"] else [[0.0, 0.0]])
            assert (semantic.get_mask()[decode_rle(row["rle"])] == row["category_id"]).all()
            checked += 1
        # The review baseline is what review_baseline.py would record for these Detections.
        assert sample.possam_original == baseline_entries(sample.possam)
    assert checked == len(rows)


def test_corrections_and_export_work_on_file_masks(fiftyone_db, output_dir: Path, tmp_path: Path) -> None:
    name = fresh_dataset_name("fast_files_review")
    load_autolabel_output(output_dir, name, mask_storage="files", masks_dir=tmp_path / "masks", progress=False)
    ds = fo.load_dataset(name)
    sample = ds.match(fo.ViewField("possam").exists()).first()
    det = sample.possam.detections[0]
    C.relabel_segments(ds, [{"sample_id": sample.id, "label_id": det.id, "field": "possam"}], "dog")
    sample.reload()
    assert sample.possam.detections[0].label == "dog"
    dog = next(c["id"] for c in ds.info["possam_label"]["possam"]["categories"] if c["name"] == "dog")
    full = _full_mask(sample.possam.detections[0], sample.metadata.height, sample.metadata.width)
    assert (sample.possam_semantic.get_mask()[full] == dog).all()  # repainted from the file masks
    export_from_dataset(ds, tmp_path / "export", progress=False)
    check_coco_panoptic(tmp_path / "export" / "panoptic.json", tmp_path / "export" / "panoptic")
    pngs = sorted((tmp_path / "export" / "panoptic").glob("*.png"))
    assert len(pngs) == 2 and all(read_panoptic_png(png).max() > 0 for png in pngs)


def test_workers_write_what_one_process_writes(fiftyone_db, output_dir: Path) -> None:
    one = load_autolabel_output(output_dir, fresh_dataset_name("fast_w1"), workers=1, progress=False)
    two = load_autolabel_output(output_dir, fresh_dataset_name("fast_w2"), workers=2, progress=False)
    assert two.workers == 2 and one.workers == 1
    assert (two.num_segments, two.num_samples_added, two.num_errors) == (one.num_segments, one.num_samples_added, one.num_errors)
    a, b = fo.load_dataset("fast_w1"), fo.load_dataset("fast_w2")
    for path in a.values("filepath"):
        sa, sb = a[path], b[path]
        if sa.possam is None:
            assert sb.possam is None and sb.possam_error == sa.possam_error
            continue
        assert [(d.segment_id, d.label, d.bounding_box, d.confidence) for d in sa.possam.detections] == [
            (d.segment_id, d.label, d.bounding_box, d.confidence) for d in sb.possam.detections
        ]
        assert all(np.array_equal(x.mask, y.mask) for x, y in zip(sa.possam.detections, sb.possam.detections))
        assert np.array_equal(sa.possam_semantic.mask, sb.possam_semantic.mask)
    # Loading again with workers replaces, never duplicates.
    again = load_autolabel_output(output_dir, "fast_w2", workers=2, progress=False)
    assert again.num_samples_added == 0 and len(b) == 3 and b.count("possam.detections") == one.num_segments


def test_needs_review_and_audit_selection(fiftyone_db, output_dir: Path, rows: list[dict]) -> None:
    scores: dict[str, list[float]] = {}
    for row in rows:
        scores.setdefault(row["file_path"], []).append(row["score"])
    threshold = float(np.median([min(s) for s in scores.values()]) + 1e-6)  # between the images' lowest scores
    below = {path for path, s in scores.items() if min(s) < threshold}
    assert 0 < len(below) < len(scores)
    result = load_autolabel_output(output_dir, fresh_dataset_name("fast_review"), review_below=threshold, progress=False)
    ds = fo.load_dataset("fast_review")
    assert set(ds.values("filepath")) == below
    assert result.num_not_selected == 3 - len(below)  # the error image is not "needs review"
    loaded = [s for s in ds.iter_samples()]
    assert sum(len(s.possam.detections) for s in loaded) == sum(len(scores[p]) for p in below)  # whole images, every label
    run = ds.info["possam_label"]["possam"]["runs"][-1]
    assert run["selection"]["review_below"] == threshold

    everything = load_autolabel_output(output_dir, fresh_dataset_name("fast_audit_all"), audit_fraction=1.0, progress=False)
    assert everything.num_not_selected == 0 and len(fo.load_dataset("fast_audit_all")) == 3
    nothing = load_autolabel_output(output_dir, fresh_dataset_name("fast_audit_none"), audit_fraction=0.0, progress=False)
    assert nothing.num_labeled == 0 and len(fo.load_dataset("fast_audit_none")) == 0

    # The audit draw depends on the seed and the path only: the same in every load and worker.
    selection = LoadSelection(audit_fraction=0.5, audit_seed=3)
    drawn = {p for p in list(scores) + [str(BROKEN)] if selection.audited(p)}
    audit = load_autolabel_output(output_dir, fresh_dataset_name("fast_audit"), audit_fraction=0.5, audit_seed=3, workers=2, progress=False)
    assert set(fo.load_dataset("fast_audit").values("filepath")) == drawn
    assert audit.num_not_selected == 3 - len(drawn)
    both = load_autolabel_output(output_dir, fresh_dataset_name("fast_both"), review_below=threshold, audit_fraction=0.5, audit_seed=3, progress=False)
    assert set(fo.load_dataset("fast_both").values("filepath")) == below | drawn and both.num_labeled == len(below | drawn)
    with pytest.raises(ValueError, match="review_below must be in"):
        load_autolabel_output(output_dir, "fast_bad", review_below=1.5)
    with pytest.raises(ValueError, match="mask_storage must be one of"):
        load_autolabel_output(output_dir, "fast_bad", mask_storage="s3")


def test_a_bad_part_is_reported_and_the_others_load(fiftyone_db, output_dir: Path, rows: list[dict], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(output_dir, broken)
    part = sorted((broken / "segments").glob("*.parquet"))[0]
    table = pq.read_table(part)
    overlap = table.to_pylist()
    overlap[1]["rle"] = overlap[0]["rle"]  # two segments claiming the same pixels
    pq.write_table(pa.Table.from_pylist(overlap, schema=table.schema), part)
    bad_path = overlap[0]["file_path"]
    result = load_autolabel_output(broken, fresh_dataset_name("fast_broken"), progress=False)
    assert len(result.part_errors) == 1 and part.name in result.part_errors[0] and "overlaps another segment" in result.part_errors[0]
    ds = fo.load_dataset("fast_broken")
    assert bad_path not in ds.values("filepath") and len(ds) == 2
    assert result.num_segments == sum(1 for r in rows if r["file_path"] != bad_path)
