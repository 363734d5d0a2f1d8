"""Auto-labeling building blocks without Ray: inputs, stages, the panoptic toolkit, RLE, tables, store, COCO validation, CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import import_or_unavailable, private_fiftyone_database

from pipelines.autolabel import build_parser, main as cli_main
from possam_label.engine.autolabel import (
    OPTION_GROUPS,
    AutolabelError,
    AutolabelOptions,
    DecodeImages,
    EncodeOutputs,
    list_inputs,
    to_original_size,
    unique_inputs,
)
from possam_label.io.coco_panoptic_validate import CocoPanopticValidationError, validate_coco_panoptic
from possam_label.io.coco_panoptic_writer import panoptic_png_bytes, write_coco_panoptic_json
from possam_label.io.output_store import (
    OutputDirError,
    OutputStore,
    read_images_table,
    read_segments_table,
)
from possam_label.io.panoptic_png import read_panoptic_png, rgb2id
from possam_label.io.rle import decode_rle, encode_mask, encode_panoptic_map, mask_bbox, rle_area, rle_bbox
from possam_label.io.tables import (
    IMAGES_SCHEMA,
    SEGMENTS_SCHEMA,
    image_id_for_path,
    images_table,
    predicted_segments_table,
    segments_table,
    table_from_ipc,
    table_to_ipc,
)
from possam_label.types import SegmentInfo
from test_panoptic import three_segments

DATA = Path(__file__).resolve().parent / "data" / "autolabel"
# Every image-extension file under tests/data/autolabel (README.txt and the LICENSE are not inputs).
EXPECTED_INPUTS = 23


# ----------------------------------------------------------------------------------- inputs
def test_list_inputs_directory_is_recursive_filtered_and_sorted() -> None:
    paths = list_inputs(str(DATA))
    assert len(paths) == EXPECTED_INPUTS
    assert all(os.path.isabs(p) for p in paths)
    names = {os.path.relpath(p, DATA) for p in paths}
    assert "edge_cases/nested/deeper/nested.webp" in names and "edge_cases/upper_case.JPG" in names
    assert "edge_cases/README.txt" not in names and "photos/LICENSE-segment-anything.txt" not in names
    assert paths == list_inputs(str(DATA))  # stable order


def test_list_inputs_listing_file_glob_and_single_image(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"# photos\n{DATA}/photos/dog.jpg\n\nrelative/missing.png\n   {DATA}/edge_cases/README.txt  \n")
    before = listing.read_bytes()
    paths = list_inputs(str(listing))
    assert paths == [str(DATA / "photos/dog.jpg"), str(tmp_path / "relative/missing.png"), str(DATA / "edge_cases/README.txt")]
    assert listing.read_bytes() == before
    assert len(list_inputs(f"{DATA}/**/*.png")) == 9
    assert list_inputs(str(DATA / "photos" / "dog.jpg")) == [str(DATA / "photos" / "dog.jpg")]
    with pytest.raises(AutolabelError, match="not a directory, file, glob"):
        list_inputs(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutolabelError, match="contains no images"):
        list_inputs(str(tmp_path / "empty"))
    with pytest.raises(AutolabelError, match="needs a dataset name"):
        list_inputs("fiftyone://")


def test_unique_inputs_and_stable_ids(tmp_path: Path) -> None:
    a, b = str(DATA / "photos/dog.jpg"), str(DATA / "photos/truck.jpg")
    rows, dropped = unique_inputs([a, b, a])
    assert dropped == 1 and [r["file_path"] for r in rows] == [a, b]
    assert rows[0]["image_id"] == image_id_for_path(a) == image_id_for_path(str(DATA / "photos/../photos/dog.jpg"))
    assert 0 < rows[0]["image_id"] < 2**60 and rows[0]["image_id"] != rows[1]["image_id"]


def test_resume_compatibility_and_thread_rules() -> None:
    from possam_label.engine.autolabel import default_torch_threads
    from possam_label.config import PosSAMConfig
    from possam_label.config_mapping import with_current_keys
    from possam_label.engine.autolabel.run_record import NON_INFERENCE_CONFIG_SECTIONS, check_resume_compatible, config_differences

    before = {"sam": {"img_size": 128, "depth": 2}, "train": {"lr": 1.0}, "mase": {"alpha": 0.4}}
    after = {"sam": {"img_size": 128, "depth": 2}, "train": {"lr": 2.0}, "mase": {"alpha": 0.5}, "baseline": {"x": 1}}
    # Training settings and sections added by a newer code version do not block a resume.
    assert config_differences(before, after, skip=NON_INFERENCE_CONFIG_SECTIONS["possam"]) == ["mase.alpha"]
    assert config_differences(before, before) == []
    # The baseline's settings matter to a sam-clip run, not to a PosSAM run.
    changed_baseline = {**after, "baseline": {"x": 2}}
    assert config_differences(after, changed_baseline, skip=NON_INFERENCE_CONFIG_SECTIONS["possam"]) == []
    assert config_differences(after, changed_baseline, skip=NON_INFERENCE_CONFIG_SECTIONS["sam-clip"]) == ["baseline.x"]
    # A run recorded before baseline.min_score became baseline.object_mask_threshold compares under the new name.
    recorded = {"baseline": {"min_score": 0.3, "classify": "crop"}, "mase": {"alpha": 0.4}}
    assert with_current_keys(PosSAMConfig, recorded) == {"baseline": {"object_mask_threshold": 0.3, "classify": "crop"}, "mase": {"alpha": 0.4}}
    model = {"kind": "sam-clip", "checkpoint": None, "vocabulary_identity": "v",
             "config": {"baseline": {"object_mask_threshold": 0.0, "classify": "crop"}, "mase": {"alpha": 0.4}}}
    previous = {"model": {**model, "config": recorded}, "output_settings": {}}
    with pytest.raises(AutolabelError, match=r"config differs in baseline\.object_mask_threshold"):
        check_resume_compatible(previous, model, {}, SimpleNamespace(root="OUT"))
    check_resume_compatible({**previous, "model": {**model, "config": {**recorded, "baseline": {"min_score": 0.0, "classify": "crop"}}}}, model, {}, SimpleNamespace(root="OUT"))
    assert default_torch_threads(2, 1) == 1 and default_torch_threads(16, 1) == 15 and default_torch_threads(16, 4) == 3
    assert default_torch_threads(1, 1) == 1


def test_actors_fit_decides_the_wait_for_workers() -> None:
    from possam_label.engine.autolabel import actors_fit as _actors_fit

    # One CPU actor plus a half-CPU decode/encode task.
    assert _actors_fit({"CPU": 2.0}, 1, 0.0, None) and not _actors_fit({"CPU": 1.0}, 1, 0.0, None)
    assert _actors_fit({"CPU": 8.0, "GPU": 2.0}, 4, 0.5, None) and not _actors_fit({"CPU": 8.0, "GPU": 1.0}, 4, 0.5, None)
    assert not _actors_fit({"CPU": 8.0}, 1, 1.0, None)  # GPUs asked for, none in the cluster
    assert _actors_fit({"CPU": 4.0, "labeler": 2.0}, 2, 0.0, {"labeler": 1})
    assert not _actors_fit({"CPU": 4.0}, 1, 0.0, {"labeler": 1})


# ------------------------------------------------------------------------------ encoding
def test_to_original_size_upsamples_filters_and_recomputes_area_bbox() -> None:
    id_map, segments = three_segments()
    full, kept = to_original_size(id_map, predicted_segments_table(segments), height=64, width=96, min_score=0.5)
    assert full.shape == (64, 96) and full.dtype == np.int32
    rows = kept.to_pylist()
    assert [r["segment_id"] for r in rows] == [1, 2]
    assert set(np.unique(full).tolist()) == {0, 1, 2}  # segment 3 became void
    assert rows[0]["area"] == 64 * 40 and rows[0]["bbox"] == [0.0, 0.0, 40.0, 64.0]
    assert rows[1]["area"] == 20 * 30 and rows[1]["bbox"] == [50.0, 10.0, 30.0, 20.0]
    assert rows[0]["score"] == 0.9  # float64 in flight: the model's value exactly
    # A segment listed by the model but absent from the map is dropped, and unknown map ids become void.
    id_map[0, 0] = 9
    extra = SegmentInfo(**{**segments[1].to_dict(), "id": 7})
    full, kept = to_original_size(id_map, predicted_segments_table(segments + [extra]), 32, 48, 0.0)
    assert kept.column("segment_id").to_pylist() == [1, 2, 3] and full[0, 0] == 0


def test_encode_stage_outputs_agree_with_each_other() -> None:
    id_map, segments = three_segments()
    batch = {
        "image_id": np.array([11, 12]),
        "file_path": np.array(["/a.png", "/b.png"]),
        "status": np.array(["ok", "error"]),
        "error": np.array(["", "truncated: x"]),
        "width": np.array([96, 0]),
        "height": np.array([64, 0]),
        "id_map": [id_map, np.zeros((1, 1), np.int32)],
        "predicted_segments": np.array([table_to_ipc(predicted_segments_table(segments)), b""], dtype=object),
        "seconds": np.array([0.5, 0.1]),
        "model_identity": np.array(["{}", "{}"]),
        "model_ready_at": np.array([1.0, 1.0]),
        "model_done_at": np.array([2.0, 2.0]),
        "model_seconds": np.array([0.25, 0.0]),
    }
    out = EncodeOutputs(min_score=0.0, run_id="run-x")(batch)
    assert "id_map" not in out and "predicted_segments" not in out  # consumed by this stage
    assert out["model_identity"].tolist() == ["{}", "{}"]  # earlier columns travel on
    assert out["status"].tolist() == ["ok", "error"] and out["num_segments"].tolist() == [3, 0]
    full = rgb2id(np.asarray(Image.open(__import__("io").BytesIO(out["png"][0]))))
    table = table_from_ipc(out["segments"][0])
    assert table.schema.equals(SEGMENTS_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert sorted(np.unique(full[full > 0]).tolist()) == [r["segment_id"] for r in rows]
    assert {r["run_id"] for r in rows} == {"run-x"} and {r["image_id"] for r in rows} == {11}
    for row in rows:
        mask = decode_rle(row["rle"])
        assert np.array_equal(mask, full == row["segment_id"])
        assert row["area"] == int(mask.sum()) == rle_area(row["rle"])
        assert row["bbox"] == rle_bbox(row["rle"]) == mask_bbox(mask)
    assert out["png"][1] == b"" and out["segments"][1] == b""


def test_options_groups_cover_every_field_once() -> None:
    import dataclasses

    names = [f.name for f in dataclasses.fields(AutolabelOptions)]
    grouped = [name for group in OPTION_GROUPS.values() for name in group]
    assert sorted(grouped) == sorted(names) and len(grouped) == len(set(grouped))
    options = AutolabelOptions(dataset="d", out_dir="o", min_score=0.25)
    assert options.output_settings() == {"min_score": 0.25, "max_side": None, "max_pixels": options.max_pixels}
    titles = [g.title for g in build_parser()._action_groups]
    assert all(title in titles for title in OPTION_GROUPS)


def test_decode_stage_records_errors_per_image() -> None:
    batch = {"image_id": np.array([1, 2, 3]), "file_path": np.array([str(DATA / "photos/truck.jpg"), str(DATA / "edge_cases/zero_bytes.png"), str(DATA / "edge_cases/exif_rotated_6.jpg")])}
    out = DecodeImages(max_side=128, max_pixels=10**8)(batch)
    assert out["status"].tolist() == ["ok", "error", "ok"]
    assert out["error"][1].startswith("empty: ")
    assert (out["width"].tolist(), out["height"].tolist()) == ([1800, 0, 64], [1200, 0, 96])
    assert [np.asarray(im).shape for im in out["image"]] == [(85, 128, 3), (1, 1, 3), (96, 64, 3)]


def test_model_stage_maps_model_failures_and_skips_decode_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model stage (its model in a child process): a model failure on one image and a decode
    error become that row's error; the other rows get predictions at their size."""
    from possam_label.engine.autolabel import PanopticModelActor
    from possam_label.engine.autolabel.model_process import PredictionFailed
    from possam_label.vocab import load_vocabulary

    actor = PanopticModelActor(
        model="possam", config_overrides=None, config_path=str(Path(__file__).parents[1] / "configs" / "possam_tiny.yaml"), config_rel=None, checkpoint=None,
        checkpoint_rel=None, vocabulary=load_vocabulary("cat,dog,grass [stuff]").to_dict(), device="cpu", batch_size=4, torch_threads=1,
        max_worker_retries=0,
    )
    real_predict = actor.model.predict
    sent: list[list[str]] = []

    def predict(names, images):
        # What the child answers when the model raises on "b" alone (model_process.predict_isolated).
        sent.append(list(names))
        return [PredictionFailed("RuntimeError", "poisoned image") if n == "b" else r for n, r in zip(names, real_predict(names, images))]

    monkeypatch.setattr(actor.model, "predict", predict)
    base = np.asarray(Image.open(DATA / "photos" / "dog.jpg").convert("RGB").resize((96, 64)))
    images = [base, np.ascontiguousarray(base[:, :77]), base[::-1].copy(), np.zeros((1, 1, 3), np.uint8)]
    batch = {
        "image_id": np.arange(4), "file_path": np.array(["/x/a", "/x/b", "/x/c", "/x/d"]), "status": np.array(["ok", "ok", "ok", "error"]),
        "error": np.array(["", "", "", "empty: file is empty (0 bytes)"]), "width": np.array([96, 77, 96, 0]),
        "height": np.array([64, 64, 64, 0]), "image": images, "seconds": np.zeros(4),
    }
    try:
        out = actor(batch)
    finally:
        actor.model.close()
    assert sent == [["a", "b", "c"]]  # base names of the decoded images only
    assert out["status"].tolist() == ["ok", "error", "ok", "error"]
    assert out["error"][1] == "model_failed: RuntimeError: poisoned image"
    assert out["error"][3].startswith("empty: ")
    assert [np.asarray(m).shape for m in out["id_map"]] == [(64, 96), (1, 1), (64, 96), (1, 1)]
    assert "image" not in out and out["predicted_segments"][1] == b"" and out["predicted_segments"][3] == b""
    categories = {c for j in (0, 2) for c in table_from_ipc(out["predicted_segments"][j]).column("category").to_pylist()}
    assert categories <= {"cat", "dog", "grass"}
    identities = {json.loads(i)["model_pid"] for i in out["model_identity"]}
    assert identities == {actor.last_model_pid} and json.loads(out["model_identity"][0])["pid"] == os.getpid()


# ----------------------------------------------------------------------------------- RLE
def test_rle_roundtrip_and_chunking() -> None:
    rng = np.random.default_rng(0)
    id_map = rng.integers(0, 6, size=(37, 53)).astype(np.int32)
    rles = encode_panoptic_map(id_map, range(1, 6), max_chunk_bytes=37 * 53 * 2)  # 2 masks per chunk
    for seg_id, rle in rles.items():
        assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
        assert np.array_equal(decode_rle(rle), id_map == seg_id)
        assert rle == encode_mask(id_map == seg_id)
        assert np.array_equal(decode_rle({"size": rle["size"], "counts": rle["counts"].encode()}), id_map == seg_id)
    with pytest.raises(ValueError, match="needs 'size' and 'counts'"):
        decode_rle({"counts": "x"})


# -------------------------------------------------------------------------------- tables
def _image_row(image_id: int, status: str = "ok") -> dict:
    return {"image_id": image_id, "file_path": f"/x/{image_id}.jpg", "width": 4 if status == "ok" else None, "height": 3 if status == "ok" else None,
            "status": status, "error": None if status == "ok" else "empty: file is empty (0 bytes)", "num_segments": 1 if status == "ok" else 0,
            "seconds": 0.1, "panoptic_file": f"panoptic/{image_id}.png" if status == "ok" else None, "run_id": "r"}


def _segment_row(image_id: int) -> dict:
    mask = np.zeros((3, 4), bool)
    mask[1:, 1:3] = True
    return {"image_id": image_id, "file_path": f"/x/{image_id}.jpg", "segment_id": 1, "category_id": 5, "category": "cat", "isthing": True,
            "score": 0.9, "mask_quality": 0.8, "in_vocab_prob": 0.7, "out_vocab_prob": 0.6, "area": 4, "bbox": [1.0, 1.0, 2.0, 2.0],
            "rle": encode_mask(mask), "run_id": "r"}


def test_table_builders_check_columns() -> None:
    assert images_table([_image_row(1)]).schema.equals(IMAGES_SCHEMA, check_metadata=True)
    assert segments_table([_segment_row(1)]).schema.equals(SEGMENTS_SCHEMA, check_metadata=True)
    with pytest.raises(ValueError, match="missing \\['run_id'\\]"):
        images_table([{k: v for k, v in _image_row(1).items() if k != "run_id"}])


def test_store_commit_recover_and_modes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = OutputStore(out, durable=False)
    store.prepare("new")
    ok_png = panoptic_png_bytes(np.array([[0, 1], [1, 1]]))
    store.write_png(1, ok_png)
    store.commit_part("a-000000", images_table([_image_row(1), _image_row(2, "error")]), segments_table([_segment_row(1)]))
    with pytest.raises(OutputDirError, match="another autolabel job"):
        OutputStore(out).prepare("resume")  # the lock is held
    # Debris of a killed commit: PNG + segments part written, images part never renamed into place.
    store.write_png(3, ok_png)
    shutil.copyfile(store.segments_part_path("a-000000"), store.segments_part_path("a-000001"))
    (store.images_dir / ".tmp-part-a-000001.parquet.abc").write_bytes(b"half")
    store.release()

    with pytest.raises(OutputDirError, match="is not empty .*--resume.*--overwrite"):
        OutputStore(out).prepare("new")
    resumed = OutputStore(out, durable=False)
    resumed.prepare("resume")
    assert sorted(os.listdir(resumed.segments_dir)) == ["part-a-000000.parquet"]
    assert sorted(os.listdir(resumed.panoptic_dir)) == ["1.png"]
    assert not any(n.startswith(".tmp-") for n in os.listdir(resumed.images_dir))
    assert resumed.committed_image_ids() == {1, 2} and resumed.committed_image_ids("ok") == {1}
    assert resumed.drop_error_rows() == 1 and resumed.committed_image_ids() == {1}
    resumed.release()
    assert read_images_table(out).num_rows == 1
    assert read_segments_table(out, columns=["image_id", "score"], filters=[("score", ">", 0.5)]).num_rows == 1
    assert read_segments_table(out, filters=[("score", ">", 0.95)]).num_rows == 0

    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="refusing to overwrite .*notes.txt"):
        OutputStore(out).prepare("overwrite")
    (out / "notes.txt").unlink()
    again = OutputStore(out)
    again.prepare("overwrite")
    assert again.committed_parts() == [] and os.listdir(again.panoptic_dir) == []
    again.release()


# -------------------------------------------------------------------------- COCO panoptic
def _write_small_coco(tmp_path: Path, id_map: np.ndarray, segments_info: list[dict]) -> Path:
    png_dir = tmp_path / "panoptic"
    png_dir.mkdir(exist_ok=True)
    (png_dir / "7.png").write_bytes(panoptic_png_bytes(id_map))
    path = tmp_path / "panoptic.json"
    write_coco_panoptic_json(
        path,
        images=iter([{"id": 7, "file_name": "/x/7.jpg", "width": id_map.shape[1], "height": id_map.shape[0]}]),
        annotations=iter([{"image_id": 7, "file_name": "7.png", "segments_info": segments_info}]),
        categories=[{"id": 1, "name": "cat", "isthing": 1, "color": [1, 2, 3]}, {"id": 2, "name": "sky", "isthing": 0, "color": [4, 5, 6]}],
        info={"description": "test"},
        durable=False,
    )
    return path


def test_validate_coco_panoptic_accepts_valid_and_lists_every_problem(tmp_path: Path) -> None:
    id_map = np.zeros((6, 8), np.int32)
    id_map[:, :3] = 5
    id_map[2:4, 5:7] = 300  # an id above 255 exercises the G channel
    good = [{"id": 5, "category_id": 2, "area": 18, "bbox": [0, 0, 3, 6], "iscrowd": 0, "score": 0.5},
            {"id": 300, "category_id": 1, "area": 4, "bbox": [5, 2, 2, 2], "iscrowd": 0}]
    path = _write_small_coco(tmp_path, id_map, good)
    assert validate_coco_panoptic(path, tmp_path / "panoptic") == {"images": 1, "annotations": 1, "segments": 2, "categories": 2}
    assert np.array_equal(read_panoptic_png(tmp_path / "panoptic" / "7.png"), id_map)

    bad = [{"id": 5, "category_id": 2, "area": 17, "bbox": [0, 0, 3, 6], "iscrowd": 0},  # wrong area
           {"id": 9, "category_id": 42, "area": 4, "bbox": [5, 2, 2, 2], "iscrowd": 0}]  # not in PNG, unknown category
    path = _write_small_coco(tmp_path, id_map, bad)
    with pytest.raises(CocoPanopticValidationError) as info:
        validate_coco_panoptic(path, tmp_path / "panoptic")
    text = str(info.value)
    assert "area 17 != 18" in text
    assert "category_id 42 is not a category" in text
    assert "PNG ids [300] have no segments_info entry" in text
    assert "segments_info ids [9] do not appear in the PNG" in text

    data = json.loads(path.read_text())
    data["images"].append({"id": 8, "file_name": "/x/8.jpg", "width": 8, "height": 6})
    data["annotations"][0]["segments_info"] = good
    data["categories"][0]["isthing"] = True
    with pytest.raises(CocoPanopticValidationError) as info:
        validate_coco_panoptic(data, tmp_path / "panoptic")
    assert "image 8 has no annotation" in str(info.value)
    assert "'isthing' must be 0 or 1" in str(info.value)
    (tmp_path / "panoptic" / "7.png").unlink()
    with pytest.raises(CocoPanopticValidationError, match="does not exist"):
        validate_coco_panoptic(path, tmp_path / "panoptic")


# ---------------------------------------------------------------------------------- CLI
def test_cli_flags_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    args = parser.parse_args(["--dataset", "d", "--out", "o", "--vocab", "cat,dog", "--batch-size", "8", "--workers", "2",
                              "--gpus-per-worker", "0.5", "--ray-address", "auto", "--resume", "--min-score", "0.3"])
    assert (args.vocab, args.batch_size, args.workers, args.gpus_per_worker, args.ray_address, args.resume, args.min_score) == (
        "cat,dog", 8, 2, 0.5, "auto", True, 0.3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "d", "--out", "o", "--resume", "--overwrite"])
    help_text = parser.format_help()
    for flag in ("--dataset", "--out", "--vocab", "--config", "--checkpoint", "--batch-size", "--workers", "--gpus-per-worker",
                 "--ray-address", "--resume", "--overwrite", "--min-score"):
        assert flag in help_text

    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("{}")
    assert cli_main(["--dataset", str(DATA), "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert cli_main(["--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "o2"), "--config", str(Path(__file__).parents[1] / "configs/possam_tiny.yaml")]) == 2
    assert "is not a directory, file, glob pattern" in capsys.readouterr().err
    tiny = str(Path(__file__).parents[1] / "configs/possam_tiny.yaml")
    assert cli_main(["--dataset", str(DATA), "--out", str(tmp_path / "o3"), "--vocab", "nosuchvocab", "--config", tiny]) == 2
    assert "bad vocabulary" in capsys.readouterr().err
    assert cli_main(["--dataset", str(DATA), "--out", str(tmp_path / "o4"), "--retry-errors"]) == 2
    assert not (tmp_path / "o4").exists()
    # Bounded retries are always on: a default, and a clear refusal of a negative count.
    assert parser.parse_args(["--dataset", "d", "--out", "o"]).max_worker_retries == AutolabelOptions(dataset="d", out_dir="o").max_worker_retries == 2
    capsys.readouterr()
    assert cli_main(["--dataset", str(DATA), "--out", str(tmp_path / "o5"), "--max-worker-retries", "-1"]) == 2
    assert "--max-worker-retries must be >= 0" in capsys.readouterr().err
    for bad in (-1, None, 1.5):
        with pytest.raises(ValueError, match=f"max_worker_retries must be an integer >= 0, got {bad!r}"):
            AutolabelOptions(dataset="d", out_dir="o", max_worker_retries=bad).check(("possam",))
    # A hung model process is bounded too: per-image deadline, default and refusal.
    assert parser.parse_args(["--dataset", "d", "--out", "o", "--model-timeout-s", "30"]).model_timeout_s == 30.0
    assert AutolabelOptions(dataset="d", out_dir="o").model_timeout_s == 600.0
    assert cli_main(["--dataset", str(DATA), "--out", str(tmp_path / "o6"), "--model-timeout-s", "0"]) == 2
    assert "--model-timeout-s must be >= 0.001" in capsys.readouterr().err
    with pytest.raises(ValueError, match="model_timeout_s must be > 0"):
        AutolabelOptions(dataset="d", out_dir="o", model_timeout_s=0).check(("possam",))


@pytest.mark.fiftyone
def test_fiftyone_source_reads_filepaths_only() -> None:
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    fo = import_or_unavailable("fiftyone")
    private_fiftyone_database()
    name = "autolabel_source_check"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    files = [DATA / "photos" / "dog.jpg", DATA / "edge_cases" / "cmyk.jpg", DATA / "coco" / "000000439180.jpg"]
    dataset.add_samples([fo.Sample(filepath=str(f)) for f in files])
    fields_before = sorted(dataset.get_field_schema())
    try:
        assert sorted(list_inputs(f"fiftyone://{name}")) == sorted(str(f) for f in files)
        assert sorted(dataset.get_field_schema()) == fields_before and len(dataset) == 3
        with pytest.raises(AutolabelError, match="does not exist"):
            list_inputs("fiftyone://no_such_dataset_here")
    finally:
        fo.delete_dataset(name)
