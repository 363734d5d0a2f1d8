"""``--writes driver`` and ``--writes workers`` give the same outputs on the same inputs (local
Ray, tiny random-weight model): byte-identical PNGs, equal images and segments tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from possam_label.engine.autolabel import AutolabelOptions, run_autolabel
from possam_label.io.coco_panoptic_validate import validate_coco_panoptic
from possam_label.io.output_store import read_images_table, read_segments_table

pytestmark = pytest.mark.ray

DATA = Path(__file__).resolve().parent / "data" / "autolabel"
TINY = str(Path(__file__).resolve().parents[1] / "configs" / "possam_tiny.yaml")
INPUTS = ["photos/dog.jpg", "photos/groceries.jpg", "coco/000000142238.jpg", "coco/000000439180.jpg", "edge_cases/zero_bytes.png",
          "edge_cases/exif_rotated_6.jpg", "edge_cases/palette.png"]


def _sorted_without_run_id(table: pa.Table, keys: list[str]) -> list[dict]:
    rows = [{k: v for k, v in row.items() if k not in ("run_id", "seconds")} for row in table.to_pylist()]
    return sorted(rows, key=lambda r: tuple(r[k] for k in keys))


@pytest.mark.timeout(600)
def test_both_write_modes_give_identical_outputs(tmp_path: Path) -> None:
    listing = tmp_path / "listing.txt"
    listing.write_text("\n".join(str(DATA / name) for name in INPUTS) + "\n")
    outs = {}
    for writes in ("driver", "workers"):
        out = tmp_path / writes
        # Batches of 2 against parts of 3: with driver writes a batch's rows span two parts.
        summary = run_autolabel(AutolabelOptions(
            dataset=str(listing), out_dir=str(out), config=TINY, batch_size=2, rows_per_part=3, num_cpus=2,
            show_progress=False, durable=writes == "workers", writes=writes,
        ))
        assert summary.complete and (summary.ok, summary.errors) == (6, 1)
        assert json.loads((out / "run.json").read_text())["execution"]["writes"] == writes
        validate_coco_panoptic(out / "panoptic.json", out / "panoptic")
        assert not [n for d in ("segments", "panoptic") for n in os.listdir(out / d) if n.startswith(".staged-")]
        assert sorted(os.listdir(out / "images")) == sorted(os.listdir(out / "segments"))
        outs[writes] = out
    driver, workers = outs["driver"], outs["workers"]
    pngs = sorted(os.listdir(driver / "panoptic"))
    assert len(pngs) == 6 and pngs == sorted(os.listdir(workers / "panoptic"))
    for name in pngs:
        assert (driver / "panoptic" / name).read_bytes() == (workers / "panoptic" / name).read_bytes(), name
    assert _sorted_without_run_id(read_images_table(driver), ["image_id"]) == _sorted_without_run_id(read_images_table(workers), ["image_id"])
    driver_segments = _sorted_without_run_id(read_segments_table(driver), ["image_id", "segment_id"])
    assert driver_segments == _sorted_without_run_id(read_segments_table(workers), ["image_id", "segment_id"])
    assert len(driver_segments) > 0
