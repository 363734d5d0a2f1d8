"""The auto-labeling job end to end on a local Ray (tiny random-weight model, 2 CPUs).

The session fixture ``autolabel_run`` (tests/conftest.py) labels tests/data/autolabel once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from possam_label.engine.autolabel import AutolabelError, AutolabelOptions, run_autolabel
from possam_label.io.coco_panoptic_validate import validate_coco_panoptic
from possam_label.io.output_store import OutputDirError, read_images_table, read_segments_table
from possam_label.io.panoptic_png import read_panoptic_png
from possam_label.io.rle import decode_rle
from possam_label.io.tables import IMAGES_SCHEMA, SEGMENTS_SCHEMA, image_id_for_path
from possam_label.vocab import load_vocabulary

DATA = Path(__file__).resolve().parent / "data" / "autolabel"
TINY = str(Path(__file__).resolve().parents[1] / "configs" / "possam_tiny.yaml")
EXPECTED_ERRORS = {
    "edge_cases/corrupt_random_bytes.jpg": "not_an_image",
    "edge_cases/truncated_half.jpg": "truncated",
    "edge_cases/zero_bytes.png": "empty",
    "edge_cases/bomb_40000x40000.png": "too_large",
    "edge_cases/bomb_10000x10000.png": "too_large",
}
EXPECTED_OK = {
    "photos/dog.jpg": (800, 534), "photos/dogs.jpg": (1072, 603), "photos/groceries.jpg": (800, 534), "photos/truck.jpg": (1800, 1200),
    "coco/000000142238.jpg": (640, 427), "coco/000000439180.jpg": (640, 360),
    "edge_cases/cmyk.jpg": (96, 64), "edge_cases/exif_rotated_6.jpg": (64, 96), "edge_cases/gray16.png": (80, 48),
    "edge_cases/gray_alpha_la.png": (96, 64), "edge_cases/grayscale.png": (96, 64), "edge_cases/palette.png": (96, 64),
    "edge_cases/palette_transparent.png": (96, 64), "edge_cases/plain.bmp": (96, 64), "edge_cases/plain.tiff": (96, 64),
    "edge_cases/rgba.png": (96, 64), "edge_cases/upper_case.JPG": (96, 64), "edge_cases/nested/deeper/nested.webp": (96, 64),
}


def test_every_input_has_exactly_one_row(autolabel_run: Path) -> None:
    images = read_images_table(autolabel_run)
    assert images.schema.equals(IMAGES_SCHEMA)
    rows = {os.path.relpath(r["file_path"], DATA): r for r in images.to_pylist()}
    assert images.num_rows == len(rows) == len(EXPECTED_ERRORS) + len(EXPECTED_OK) == 23
    for name, reason in EXPECTED_ERRORS.items():
        row = rows[name]
        assert row["status"] == "error" and row["error"].startswith(reason + ": "), row
        assert row["num_segments"] == 0 and row["panoptic_file"] is None and row["width"] is None
    for name, (width, height) in EXPECTED_OK.items():
        row = rows[name]
        assert row["status"] == "ok", row
        assert (row["width"], row["height"]) == (width, height)
        assert row["error"] is None and row["seconds"] > 0
        assert row["image_id"] == image_id_for_path(DATA / name)
        assert row["panoptic_file"] == f"panoptic/{row['image_id']}.png"
    run_ids = set(images["run_id"].to_pylist())
    assert len(run_ids) == 1


def test_png_segments_info_and_rle_agree_exactly(autolabel_run: Path) -> None:
    counts = validate_coco_panoptic(autolabel_run / "panoptic.json", autolabel_run / "panoptic")
    assert counts["images"] == counts["annotations"] == len(EXPECTED_OK)
    coco = json.loads((autolabel_run / "panoptic.json").read_text())
    vocabulary = load_vocabulary("coco")
    assert {c["id"] for c in coco["categories"]} == set(vocabulary.category_ids)
    images = {r["image_id"]: r for r in read_images_table(autolabel_run).to_pylist()}
    segments = read_segments_table(autolabel_run)
    assert segments.schema.equals(SEGMENTS_SCHEMA)
    by_image: dict[int, list[dict]] = {}
    for seg in segments.to_pylist():
        by_image.setdefault(seg["image_id"], []).append(seg)
    assert segments.num_rows == sum(r["num_segments"] for r in images.values()) == counts["segments"]
    assert segments.num_rows > 0
    coco_images = {i["id"]: i for i in coco["images"]}
    for ann in coco["annotations"]:
        image = images[ann["image_id"]]
        assert coco_images[ann["image_id"]]["file_name"] == image["file_path"]
        id_map = read_panoptic_png(autolabel_run / image["panoptic_file"])
        assert id_map.shape == (image["height"], image["width"])
        rows = sorted(by_image.get(ann["image_id"], []), key=lambda s: s["segment_id"])
        infos = ann["segments_info"]
        assert [s["segment_id"] for s in rows] == [i["id"] for i in infos] == sorted(set(np.unique(id_map).tolist()) - {0})
        for row, info in zip(rows, infos):
            mask = decode_rle(row["rle"])
            assert np.array_equal(mask, id_map == row["segment_id"])
            assert row["area"] == info["area"] == int(mask.sum())
            assert list(row["bbox"]) == [float(v) for v in info["bbox"]]
            assert info["category_id"] == row["category_id"] and info["score"] == pytest.approx(row["score"], rel=1e-6)
            assert vocabulary.names[vocabulary.category_ids.index(row["category_id"])] == row["category"]
            assert 0.0 <= row["score"] <= 1.0 and 0.0 <= row["mask_quality"] <= 1.0
            assert row["file_path"] == image["file_path"]


def test_run_json_records_provenance(autolabel_run: Path) -> None:
    run = json.loads((autolabel_run / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["counts"]["inputs"] == 23 and run["counts"]["ok"] == len(EXPECTED_OK) and run["counts"]["error"] == len(EXPECTED_ERRORS)
    assert run["model"]["config"]["name"] == "possam_tiny"
    assert run["model"]["vocabulary_identity"] == load_vocabulary("coco").identity()
    assert run["model"]["weights_sha256"] == {"sam": None, "clip": None, "heads": None}  # random weights
    assert len(run["vocabulary"]["classes"]) == 133
    assert run["packages"]["ray"] and run["packages"]["torch"] and run["packages"]["pyarrow"]
    assert run["ray"]["cluster_resources"]["CPU"] == 2.0
    assert run["execution"]["device"] == "cpu"
    assert run["started_at"] <= run["ended_at"]
    assert len(run["attempts"]) == 1 and run["attempts"][0]["summary"]["processed"] == 23
    # The driver's cost window (first result to last commit): images, CPU and wall seconds in it.
    summary = run["attempts"][0]["summary"]
    assert 0 < summary["driver_measured_images"] < 23 and summary["driver_measured_seconds"] > 0
    assert 0 < summary["driver_loop_cpu_seconds"] <= summary["driver_cpu_seconds"]
    assert run["model"]["workers"] and all(w["node_id"] for w in run["model"]["workers"])
    assert run["run_id"] == read_images_table(autolabel_run)["run_id"][0].as_py()


def test_resume_of_a_complete_run_does_nothing(autolabel_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(autolabel_run, out)
    before = sorted(p.name for p in (out / "images").iterdir())
    summary = run_autolabel(AutolabelOptions(dataset=str(DATA), out_dir=str(out), config=TINY, mode="resume", show_progress=False, durable=False))
    assert (summary.processed, summary.already_done, summary.inputs, summary.complete) == (0, 23, 23, True)
    assert sorted(p.name for p in (out / "images").iterdir()) == before
    run = json.loads((out / "run.json").read_text())
    assert len(run["attempts"]) == 2 and run["status"] == "complete"
    validate_coco_panoptic(out / "panoptic.json", out / "panoptic")


def test_refusals(autolabel_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(autolabel_run, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(OutputDirError, match="is not empty.*--resume.*--overwrite"):
        run_autolabel(AutolabelOptions(dataset=str(DATA), out_dir=str(out), config=TINY, show_progress=False))
    with pytest.raises(AutolabelError, match="output settings differ"):
        run_autolabel(AutolabelOptions(dataset=str(DATA), out_dir=str(out), config=TINY, mode="resume", min_score=0.5, show_progress=False))
    with pytest.raises(AutolabelError, match="the vocabulary differs"):
        run_autolabel(AutolabelOptions(dataset=str(DATA), out_dir=str(out), config=TINY, mode="resume", vocabulary="cat,dog", show_progress=False))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"} == {p: t for p, t in before.items() if p.name != ".lock"}


def test_overwrite_with_listing_file_and_custom_vocabulary(autolabel_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(autolabel_run, out)
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{DATA}/photos/dog.jpg\n{DATA}/edge_cases/zero_bytes.png\n{DATA}/photos/dog.jpg\n")
    listing_before = (listing.read_bytes(), listing.stat().st_mtime_ns)
    inputs_before = {p: p.stat().st_mtime_ns for p in DATA.rglob("*") if p.is_file()}
    summary = run_autolabel(
        AutolabelOptions(dataset=str(listing), out_dir=str(out), config=TINY, mode="overwrite", vocabulary="dog,cat,grass [stuff]",
                         batch_size=2, num_cpus=2, show_progress=False, durable=False)
    )
    assert (summary.inputs, summary.duplicates_dropped, summary.ok, summary.errors) == (2, 1, 1, 1)
    images = read_images_table(out)
    assert sorted(images["status"].to_pylist()) == ["error", "ok"]
    assert len(list((out / "panoptic").iterdir())) == 1
    coco = json.loads((out / "panoptic.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat", "grass"]
    assert [c["isthing"] for c in coco["categories"]] == [1, 1, 0]
    category_ids = {c["id"] for c in coco["categories"]}
    assert set(read_segments_table(out)["category_id"].to_pylist()) <= category_ids
    validate_coco_panoptic(out / "panoptic.json", out / "panoptic")
    assert (listing.read_bytes(), listing.stat().st_mtime_ns) == listing_before
    assert {p: p.stat().st_mtime_ns for p in DATA.rglob("*") if p.is_file()} == inputs_before
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert len(list((out / "images").iterdir())) == len(list((out / "segments").iterdir())) == 1
