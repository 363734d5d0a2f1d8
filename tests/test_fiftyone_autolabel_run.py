"""Run autolabel from the App as a delegated operation, on a real (tiny, random-weights) PosSAM.

The operator is queued like the App queues it, then executed by FiftyOne's delegated-operation
service (what ``fiftyone delegated launch`` runs); the real Ray job writes an output directory and
the labels load into the dataset. Loading that real output is checked against its Parquet rows.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import import_or_unavailable, private_fiftyone_database  # noqa: E402

fo = import_or_unavailable("fiftyone")

from possam_label.fiftyone.convert import detection_mask_placement  # noqa: E402
from possam_label.io.rle import decode_rle  # noqa: E402

pytestmark = [pytest.mark.fiftyone, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
COCO = REPO / "tests" / "data" / "coco_panoptic_sample"
if not COCO.is_dir():
    COCO = Path("/work/shared/data/coco_panoptic_sample")
PLUGIN = "@possam/review"


@pytest.fixture(scope="module")
def db():
    server = private_fiftyone_database()
    fo.config.plugins_dir = str(REPO / "plugins")
    return server


def test_delegated_run_autolabel_loads_a_real_run(db, tmp_path: Path) -> None:
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    name = "autolabel_run_check"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples([fo.Sample(filepath=str(p)) for p in sorted((COCO / "images").glob("*.jpg"))])
    view = ds.limit(1)  # the operator labels the current view only
    out_dir = tmp_path / "run"

    queued = foo.execute_operator(
        f"{PLUGIN}/run_autolabel",
        ctx={
            "dataset": name,
            "view": view,
            "params": {"out_dir": str(out_dir), "config": str(REPO / "configs" / "possam_small.yaml"), "num_cpus": 2, "batch_size": 1},
        },
    )
    assert queued.delegated  # never runs inside the App's request
    assert not ds.has_field("possam")  # nothing ran yet

    service = DelegatedOperationService()
    (operation,) = service.get_queued_operations(operator=f"{PLUGIN}/run_autolabel", dataset_name=name)
    service.execute_operation(operation)
    done = service.get(operation.id)
    assert done.run_state == "completed", done.result
    result = done.result.result
    assert result["load"]["num_labeled"] == 1 and result["autolabel"]["ok"] == 1

    rows = pa.concat_tables([pq.read_table(p) for p in sorted((out_dir / "segments").glob("*.parquet"))]).to_pylist()
    ds.reload()
    labeled = ds.exists("possam")
    assert len(labeled) == 1 and labeled.first().filepath == view.first().filepath
    assert ds.count("possam.detections") == len(rows)
    sample = labeled.first()
    by_id = {r["segment_id"]: r for r in rows}
    height, width = sample.possam_semantic.mask.shape
    for det in sample.possam.detections:
        x0, y0, crop = detection_mask_placement(det, height, width)
        full = np.zeros((height, width), dtype=bool)
        full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        assert np.array_equal(full, decode_rle(by_id[det.segment_id]["rle"]))
        assert det.label == by_id[det.segment_id]["category"]
        assert det.confidence == pytest.approx(by_id[det.segment_id]["score"], abs=1e-6)
    assert rows and sample.possam_run_id == rows[0]["run_id"] == result["autolabel"]["run_id"]


def test_load_the_shared_real_run(db, autolabel_run: Path) -> None:
    """The session's real autolabel run over tests/data/autolabel (photos plus broken and unusual
    files): every Parquet row becomes exactly one label with the RLE's pixels, and every image that
    failed is a sample with its error and no labels."""
    from possam_label.fiftyone.load import load_autolabel_output

    name = "shared_run_check"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    result = load_autolabel_output(autolabel_run, name, progress=False)
    images = pa.concat_tables([pq.read_table(p) for p in sorted((autolabel_run / "images").glob("*.parquet"))]).to_pylist()
    rows = pa.concat_tables([pq.read_table(p) for p in sorted((autolabel_run / "segments").glob("*.parquet"))]).to_pylist()
    ds = fo.load_dataset(name)
    errors = [im for im in images if im["status"] == "error"]
    assert errors and len(errors) < len(images)  # the fixture has both kinds
    assert len(ds) == len(images) == result.num_images and result.num_errors == len(errors)
    assert ds.count("possam.detections") == len(rows) == result.num_segments
    by_path = {}
    for row in rows:
        by_path.setdefault(row["file_path"], {})[row["segment_id"]] = row
    for image in images:
        sample = ds[image["file_path"]]
        if image["status"] == "error":
            assert sample.possam is None and sample.possam_error == image["error"]
            continue
        assert sample.possam_error is None and len(sample.possam.detections) == image["num_segments"]
        for det in sample.possam.detections:
            row = by_path[image["file_path"]][det.segment_id]
            x0, y0, crop = detection_mask_placement(det, image["height"], image["width"])
            full = np.zeros((image["height"], image["width"]), dtype=bool)
            full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
            assert np.array_equal(full, decode_rle(row["rle"]))
            assert det.label == row["category"] and det.confidence == pytest.approx(row["score"], abs=1e-6)
