"""Training-set export straight from an autolabel output directory (pyarrow only, no FiftyOne).

The output directory is written with the producer's own store from COCO-panoptic ground truth
(real images, real masks, seeded made-up scores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from possam_label.eval.pq_files import pq_compute
from possam_label.fiftyone.autolabel_output import AutolabelOutput, AutolabelOutputError
from possam_label.fiftyone.export import (
    ExportOptions,
    check_coco_panoptic,
    export_from_output_dir,
    merge_stuff_segments,
    safe_output_path,
)
from possam_label.fiftyone.testing import write_coco_autolabel_output
from possam_label.io.panoptic_png import read_panoptic_png
from possam_label.io.rle import decode_rle
from possam_label.types import PanopticPrediction, SegmentInfo

REPO = Path(__file__).resolve().parents[1]
COCO = REPO / "tests" / "data" / "coco_panoptic_sample"
if not COCO.is_dir():
    COCO = Path("/work/shared/data/coco_panoptic_sample")
BROKEN = REPO / "tests" / "data" / "autolabel" / "edge_cases" / "corrupt_random_bytes.jpg"


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("autolabel") / "out"
    write_coco_autolabel_output(out, COCO, seed=3, error_images=[BROKEN] if BROKEN.exists() else [])
    return out


def _rows(output_dir: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in sorted((output_dir / "segments").glob("*.parquet"))]).to_pylist()


def _by_image(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for row in rows:
        out.setdefault(int(row["image_id"]), []).append(row)
    return out


def test_export_all_formats_reproduces_the_output_exactly(output_dir: Path, tmp_path: Path) -> None:
    rows = _rows(output_dir)
    summary = export_from_output_dir(output_dir, tmp_path / "export", progress=False)
    assert summary.num_images == 2 and summary.num_segments == len(rows)
    assert summary.num_skipped_images == (1 if BROKEN.exists() else 0)  # the error image
    counts = check_coco_panoptic(tmp_path / "export" / "panoptic.json")
    assert counts == {"images": 2, "segments": len(rows)}
    # An independent implementation of panopticapi's rules accepts it: PQ of the export vs itself is 1.
    pq = pq_compute(tmp_path / "export" / "panoptic.json", tmp_path / "export" / "panoptic.json")
    assert pq["All"]["pq"] == pytest.approx(1.0)

    data = json.loads((tmp_path / "export" / "panoptic.json").read_text())
    instances = json.loads((tmp_path / "export" / "instances.json").read_text())
    semantic_table = json.loads((tmp_path / "export" / "semantic.json").read_text())
    assert semantic_table["void"] == 0
    for image_id, image_rows in _by_image(rows).items():
        ann = next(a for a in data["annotations"] if a["image_id"] == image_id)
        id_map = read_panoptic_png(tmp_path / "export" / "panoptic" / ann["file_name"])
        info = {s["id"]: s for s in ann["segments_info"]}
        semantic = np.asarray(Image.open(tmp_path / "export" / "semantic" / f"{image_id}.png"))
        for row in image_rows:
            mask = decode_rle(row["rle"])
            assert np.array_equal(id_map == row["segment_id"], mask)  # every pixel as in the RLE
            assert info[row["segment_id"]]["category_id"] == row["category_id"]
            assert (semantic[mask] == row["category_id"]).all()
        assert (semantic[id_map == 0] == 0).all()
        things = [r for r in image_rows if r["isthing"]]
        anns = [a for a in instances["annotations"] if a["image_id"] == image_id]
        assert len(anns) == len(things)  # things only by default
        for a in anns:
            row = next(r for r in things if r["category_id"] == a["category_id"] and np.array_equal(decode_rle(r["rle"]), mask_utils.decode(a["segmentation"]).astype(bool)))
            assert a["area"] == row["area"] and a["score"] == pytest.approx(row["score"], abs=1e-6)
    export = json.loads((tmp_path / "export" / "export.json").read_text())
    assert export["source"]["type"] == "autolabel_output" and export["summary"]["num_segments"] == len(rows)
    # Every file written is inside the output directory.
    root = (tmp_path / "export").resolve()
    for path in root.rglob("*"):
        assert root in path.resolve().parents


def test_export_filters_confidence_and_classes(output_dir: Path, tmp_path: Path) -> None:
    rows = _rows(output_dir)
    options = ExportOptions(formats=["panoptic", "semantic"], min_score=0.5, exclude_classes=["horse"])
    summary = export_from_output_dir(output_dir, tmp_path / "filtered", options, progress=False)
    kept = [r for r in rows if r["score"] >= 0.5 and r["category"] != "horse"]
    assert 0 < len(kept) < len(rows)
    assert summary.num_segments == len(kept)
    assert not (tmp_path / "filtered" / "instances.json").exists()
    check_coco_panoptic(tmp_path / "filtered" / "panoptic.json")
    data = json.loads((tmp_path / "filtered" / "panoptic.json").read_text())
    assert "horse" not in {c["name"] for c in data["categories"]}
    for image_id, image_rows in _by_image(rows).items():
        ann = next(a for a in data["annotations"] if a["image_id"] == image_id)
        id_map = read_panoptic_png(tmp_path / "filtered" / "panoptic" / ann["file_name"])
        for row in image_rows:
            mask = decode_rle(row["rle"])
            if row in kept:
                assert np.array_equal(id_map == row["segment_id"], mask)
            else:
                assert (id_map[mask] == 0).all()  # dropped segments leave void pixels

    only = export_from_output_dir(output_dir, tmp_path / "only", ExportOptions(formats=["instances"], include_classes=["person"]), progress=False)
    assert only.per_class == {"person": sum(r["category"] == "person" for r in rows)}
    with pytest.raises(ValueError, match="unknown class 'unicorn'"):
        export_from_output_dir(output_dir, tmp_path / "bad", ExportOptions(include_classes=["unicorn"]), progress=False)
    with pytest.raises(ValueError, match="reviewed_only needs a FiftyOne dataset"):
        export_from_output_dir(output_dir, tmp_path / "bad2", ExportOptions(reviewed_only=True), progress=False)


def test_export_refuses_a_non_empty_directory_and_paths_outside(output_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export_from_output_dir(output_dir, target, progress=False)
    export_from_output_dir(output_dir, target, ExportOptions(formats=["panoptic"], overwrite=True), progress=False)
    assert (target / "notes.txt").read_text() == "mine"  # overwrite removes only export outputs
    assert (target / "panoptic.json").is_file()
    with pytest.raises(ValueError, match="outside the output directory"):
        safe_output_path(tmp_path, "..", "escape.png")
    with pytest.raises(ValueError, match="outside the output directory"):
        safe_output_path(tmp_path, "/etc/passwd")


def test_merge_stuff_segments_joins_same_class_stuff() -> None:
    panoptic_map = np.zeros((6, 8), dtype=np.int32)
    panoptic_map[0:2, :] = 1  # sky
    panoptic_map[4:6, :] = 3  # sky again
    panoptic_map[2:4, 2:5] = 2  # a person
    segs = [
        SegmentInfo(1, 10, "sky", False, 0.4, 0.9, 0.5, 0.5, 16, [0, 0, 8, 2]),
        SegmentInfo(2, 1, "person", True, 0.8, 0.9, 0.5, 0.5, 6, [2, 2, 3, 2]),
        SegmentInfo(3, 10, "sky", False, 0.7, 0.8, 0.6, 0.4, 16, [0, 4, 8, 2]),
    ]
    merged = merge_stuff_segments(PanopticPrediction(panoptic_map, segs))
    assert [s.id for s in merged.segments] == [1, 2]
    sky = merged.segments[0]
    assert sky.area == 32 and sky.bbox == [0.0, 0.0, 8.0, 6.0] and sky.score == pytest.approx(0.7)
    assert set(np.unique(merged.panoptic_map)) == {0, 1, 2}


def test_cli_export_from_dir_without_fiftyone(output_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    code = (
        "import sys; import pipelines.export as e; rc = e.main(sys.argv[1:]); "
        "assert 'fiftyone' not in sys.modules, 'export from a directory must not import fiftyone'; sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--from-dir", str(output_dir), "--out", str(out), "--min-score", "0.3", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["num_images"] == 2 and Path(summary["files"]["panoptic"]).is_file()
    check_coco_panoptic(out / "panoptic.json")
    # --min-confidence is the deprecated alias of --min-score.
    from pipelines.export import build_parser

    alias = build_parser().parse_args(["--from-dir", "d", "--out", "o", "--min-confidence", "0.3"])
    assert alias.min_score == 0.3 and not hasattr(alias, "min_confidence")

    bad = subprocess.run([sys.executable, "-m", "pipelines.export", "--from-dir", str(tmp_path), "--out", str(tmp_path / "x")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "not an autolabel output: run.json is missing" in bad.stderr and str(tmp_path) in bad.stderr


def test_bad_output_directories_name_file_and_reason(output_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AutolabelOutputError, match="no such directory"):
        AutolabelOutput.open(tmp_path / "missing")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(AutolabelOutputError, match="not a directory"):
        AutolabelOutput.open(a_file)
    with pytest.raises(AutolabelOutputError, match="run.json is missing"):
        AutolabelOutput.open(tmp_path)

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(output_dir, broken)
    (broken / "run.json").write_text("{not json")
    with pytest.raises(AutolabelOutputError, match=r"run\.json: not valid JSON"):
        AutolabelOutput.open(broken)

    shutil.rmtree(broken)
    shutil.copytree(output_dir, broken)
    part = sorted((broken / "segments").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(part).drop_columns(["rle"]), part)
    with pytest.raises(AutolabelOutputError, match=f"{part.name}: missing column\\(s\\) rle"):
        AutolabelOutput.open(broken)
    part.write_bytes(b"PAR1 garbage")
    with pytest.raises(AutolabelOutputError, match="not a readable Parquet file"):
        AutolabelOutput.open(broken)

    shutil.rmtree(broken)
    shutil.copytree(output_dir, broken)
    part = sorted((broken / "segments").glob("*.parquet"))[0]
    table = pq.read_table(part)
    overlap = table.to_pylist()
    overlap[1]["rle"] = overlap[0]["rle"]  # two segments claiming the same pixels
    pq.write_table(pa.Table.from_pylist(overlap, schema=table.schema), part)
    with pytest.raises(AutolabelOutputError, match="overlaps another segment"):
        list(AutolabelOutput.open(broken).iter_images())
