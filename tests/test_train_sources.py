"""Training from what the product writes: autolabel outputs, review exports and fiftyone:// datasets.

The autolabel output is written with the producer's own store (real COCO images and masks, seeded
scores); the FiftyOne dataset is loaded from it with the library loader and corrected with the
plugin's library calls (a relabel to a new class, a rejection, a deletion, an acceptance), in a
private ``mongod``. The targets training builds are checked pixel by pixel against the corrected
labels, and ``pipelines.train`` runs 2 iterations of the tiny config from the dataset and the export.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np
import pytest

from conftest import import_or_unavailable, private_fiftyone_database  # noqa: E402

from possam_label.data.sources import PanopticTargetDataset, TrainingDataError, open_training_source
from possam_label.engine.train_data import resolve_training_source, training_vocabulary
from possam_label.fiftyone.testing import write_coco_autolabel_output
from possam_label.io.output_store import read_segments_table
from possam_label.io.panoptic_png import read_panoptic_png

REPO = Path(__file__).resolve().parents[1]
COCO = REPO / "tests" / "data" / "coco_panoptic_sample"
TINY = REPO / "configs" / "possam_tiny.yaml"
NEW_CLASS = "unicorn"


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("autolabel") / "out"
    write_coco_autolabel_output(out, COCO, seed=7)
    return out


def _rows(output_dir: Path) -> dict[int, list[dict]]:
    rows: dict[int, list[dict]] = {}
    for row in read_segments_table(output_dir, columns=["image_id", "segment_id", "category", "score"]).to_pylist():
        rows.setdefault(row["image_id"], []).append(row)
    return rows


def _label_map(sample: dict) -> np.ndarray:
    """(H, W) vocabulary index of every pixel, -1 where no mask covers it."""
    masks = sample["masks"].numpy()
    out = np.full(masks.shape[1:] if masks.ndim == 3 else sample["ignore"].shape, -1, dtype=np.int64)
    for label, mask in zip(sample["labels"].tolist(), masks):
        assert (out[mask] == -1).all(), "target masks overlap"
        out[mask] = label
    return out


# ------------------------------------------------------------------------------ autolabel output


def test_autolabel_output_source_voids_low_scores_pixel_by_pixel(output_dir: Path):
    source = open_training_source(output_dir, min_score=0.5)
    assert source.kind == "autolabel_output" and len(source) == 2
    rows = _rows(output_dir)
    vocabulary = training_vocabulary(source)
    dataset = PanopticTargetDataset(source, vocabulary)
    for index in range(len(source)):
        target = source.target(index)
        png = read_panoptic_png(target.label_path)
        segments = rows[target.image_id]
        low = [r for r in segments if r["score"] < 0.5]
        high = [r for r in segments if r["score"] >= 0.5]
        assert low and high  # both kinds occur: the check below means something
        expected_ids = np.where(np.isin(png, [r["segment_id"] for r in high]), png, 0)
        assert np.array_equal(target.id_map, expected_ids)
        assert [s.id for s in target.segments] == [r["segment_id"] for r in high]
        sample = dataset[index]
        labels = _label_map(sample)
        expected = np.full(png.shape, -1)
        for r in high:
            expected[png == r["segment_id"]] = vocabulary.index_of(r["category"])
        assert np.array_equal(labels, expected)
        # Low-scored segments are void (ignored), not background: no target covers them.
        assert np.array_equal(sample["ignore"].numpy(), expected == -1)
        assert sample["ignore"].numpy()[np.isin(png, [r["segment_id"] for r in low])].all()


def test_sources_that_cannot_train_name_the_cause(output_dir: Path, tmp_path: Path):
    source = open_training_source(output_dir, min_score=1.0)
    with pytest.raises(TrainingDataError, match=r"no segments to train on: every image is void"):
        source.check(training_vocabulary(source))
    images = tmp_path / "coco"
    shutil.copytree(COCO, images)
    broken = tmp_path / "broken"
    write_coco_autolabel_output(broken, images, seed=7)
    unreadable = sorted((images / "images").iterdir())[0]
    unreadable.write_bytes(b"not an image")  # a file of the run, damaged since
    moved = open_training_source(broken)
    with pytest.raises(TrainingDataError, match=rf"1 of 2 images cannot be read:\n  {unreadable}: cannot read image"):
        moved.check(training_vocabulary(moved))
    with pytest.raises(TrainingDataError, match="no such folder"):
        open_training_source(tmp_path / "missing")
    with pytest.raises(TrainingDataError, match=r"unknown data scheme 'labelstudio'"):
        open_training_source("labelstudio://project")
    with pytest.raises(FileNotFoundError, match="no panoptic.json"):
        open_training_source(tmp_path)


# ------------------------------------------------------------------------------------ FiftyOne


@pytest.fixture(scope="module")
def db():
    import_or_unavailable("fiftyone")
    return private_fiftyone_database()


@pytest.fixture(scope="module")
def reviewed(db, output_dir: Path) -> dict:
    """A dataset loaded from the output, with one image corrected the way the plugin does."""
    import fiftyone as fo

    from possam_label.fiftyone import corrections as C
    from possam_label.fiftyone.load import load_autolabel_output

    name = "train_sources_reviewed"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    load_autolabel_output(output_dir, name, progress=False)
    dataset = fo.load_dataset(name)
    sample = dataset.first()
    dets = sorted(sample["possam"].detections, key=lambda d: d.confidence)
    threshold = (dets[1].confidence + dets[2].confidence) / 2  # dets[0], dets[1] are below it
    below_kept, below_void = dets[0], dets[1]
    things = [d for d in dets[2:] if d["isthing"]]
    relabeled, rejected, deleted = things[-1], things[-2], things[-3]

    def sel(*labels):
        return [{"sample_id": sample.id, "label_id": d.id, "field": "possam"} for d in labels]

    assert C.relabel_segments(dataset, sel(relabeled), NEW_CLASS).new_class == NEW_CLASS
    C.reject_labels(dataset, sel(rejected))
    C.delete_segments(dataset, sel(deleted))
    C.accept_labels(dataset, sel(below_kept))
    C.mark_reviewed(dataset, [sample.id])
    return {
        "name": name, "sample_id": sample.id, "filepath": sample.filepath, "threshold": threshold,
        "relabeled": relabeled.id, "rejected": rejected.id, "deleted": deleted.id,
        "below_kept": below_kept.id, "below_void": below_void.id,
    }


def _full_masks(sample) -> dict[str, tuple[str, np.ndarray]]:
    """{label id: (class, full-image mask)} of the sample's current and deleted Detections."""
    from possam_label.fiftyone.convert import detection_mask_placement

    height, width = sample.metadata.height, sample.metadata.width
    out = {}
    for field in ("possam", "possam_deleted"):
        for det in (sample[field].detections if sample[field] is not None else []):
            x0, y0, crop = detection_mask_placement(det, height, width)
            full = np.zeros((height, width), dtype=bool)
            full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
            out[det.id] = (det.label, full)
    return out


@pytest.mark.fiftyone
def test_fiftyone_targets_reflect_every_correction_pixel_by_pixel(reviewed: dict, tmp_path: Path):
    import fiftyone as fo

    source = resolve_training_source(f"fiftyone://{reviewed['name']}", min_score=reviewed["threshold"], workdir=tmp_path / "snap")
    assert source.kind == "fiftyone" and len(source) == 2
    assert source.reviewer_classes() == [NEW_CLASS]
    vocabulary = training_vocabulary(source)
    assert NEW_CLASS in vocabulary.names  # the reviewer's class extends the vocabulary
    # An explicit vocabulary is extended with it too.
    coco = training_vocabulary(source, "coco")
    assert coco.names[-1] == NEW_CLASS and len(coco) == 134
    summary = source.check(vocabulary)
    assert summary.per_class[NEW_CLASS] == 1

    sample = fo.load_dataset(reviewed["name"])[reviewed["sample_id"]]
    masks = _full_masks(sample)
    index = next(i for i in range(len(source)) if str(source.target(i).image_path) == reviewed["filepath"])
    target = source.target(index)
    dataset_sample = PanopticTargetDataset(source, vocabulary)[index]
    labels = _label_map(dataset_sample)

    expected = np.full(labels.shape, -1)
    voided = {reviewed["rejected"], reviewed["deleted"], reviewed["below_void"]}
    for label_id, (name, mask) in masks.items():
        if label_id not in voided:
            expected[mask] = vocabulary.index_of(name)
    assert np.array_equal(labels, expected)
    assert np.array_equal(dataset_sample["ignore"].numpy(), expected == -1)
    assert np.array_equal(target.void, expected == -1)
    # Each correction, one by one.
    assert masks[reviewed["relabeled"]][0] == NEW_CLASS
    assert (labels[masks[reviewed["relabeled"]][1]] == vocabulary.index_of(NEW_CLASS)).all()
    for label_id in voided:  # rejected, deleted, and unreviewed below the threshold: void
        assert masks[label_id][1].any() and dataset_sample["ignore"].numpy()[masks[label_id][1]].all()
    kept_name, kept_mask = masks[reviewed["below_kept"]]  # accepted: kept below the threshold
    assert (labels[kept_mask] == vocabulary.index_of(kept_name)).all()

    # The plugin's own export gives the same targets when trained from as a folder.
    from possam_label.fiftyone.export import ExportOptions, export_from_dataset

    export = tmp_path / "export"
    export_from_dataset(fo.load_dataset(reviewed["name"]), export, options=ExportOptions(min_score=reviewed["threshold"]), progress=False)
    exported = open_training_source(export)
    assert exported.kind == "review_export"
    other = next(i for i in range(len(exported)) if str(exported.target(i).image_path) == reviewed["filepath"])
    assert np.array_equal(_label_map(PanopticTargetDataset(exported, vocabulary)[other]), expected)


@pytest.mark.fiftyone
def test_fiftyone_source_errors_name_the_cause(reviewed: dict, tmp_path: Path):
    import fiftyone as fo

    with pytest.raises(TrainingDataError, match=r"fiftyone://no_such_dataset_x: .*does not exist"):
        resolve_training_source("fiftyone://no_such_dataset_x", workdir=tmp_path / "a")
    with pytest.raises(TrainingDataError, match=r"has no saved view 'nope'"):
        resolve_training_source(f"fiftyone://{reviewed['name']}/nope", workdir=tmp_path / "b")
    dataset = fo.load_dataset(reviewed["name"])
    from fiftyone import ViewField as F

    dataset.save_view("reviewed_only", dataset.match(F("possam_reviewed") == True), overwrite=True)  # noqa: E712
    view_source = resolve_training_source(f"fiftyone://{reviewed['name']}/reviewed_only", workdir=tmp_path / "c")
    assert len(view_source) == 1
    empty = "train_sources_empty"
    if fo.dataset_exists(empty):
        fo.delete_dataset(empty)
    fo.Dataset(empty, persistent=True)
    with pytest.raises(TrainingDataError, match="no label field 'possam'"):
        resolve_training_source(f"fiftyone://{empty}", workdir=tmp_path / "d")


# ---------------------------------------------------------------------------- pipelines.train


@pytest.fixture(scope="module")
def ray_session():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


def _train(out: Path, *args: str) -> tuple[int, str]:
    import contextlib
    import io

    from pipelines.train import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["--config", str(TINY), "--out", str(out), "--max-iters", "2", "--cpus-per-worker", "1", *args])
    return code, stdout.getvalue() + stderr.getvalue()


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ray  # Ray Train in this process
@pytest.mark.slow
@pytest.mark.fiftyone
def test_pipelines_train_runs_from_each_new_source(reviewed: dict, output_dir: Path, tmp_path: Path, ray_session):
    """Two Ray Train runs cover the three new sources: heads from ``fiftyone://`` (a reviewed dataset),
    then a fine-tune of those heads on the review plugin's export, validated on the autolabel output
    (an autolabel output as ``--data`` runs end to end in tests/test_bootstrap.py)."""
    import fiftyone as fo

    from possam_label.fiftyone.export import ExportOptions, export_from_dataset
    from possam_label.predictor import PosSAMPredictor

    export = tmp_path / "review_export"
    export_from_dataset(fo.load_dataset(reviewed["name"]), export, options=ExportOptions(formats=["panoptic"]), progress=False)
    out = tmp_path / "fiftyone"
    code, log = _train(out, "--data", f"fiftyone://{reviewed['name']}", "--min-score", f"{reviewed['threshold']}")
    assert code == 0, log[-3000:]
    assert [m["iteration"] for m in _metrics(out)] == [1, 2]
    record = json.loads((out / "train_config.json").read_text())
    assert record["data_summary"]["images"] == 2 and record["source"].startswith("fiftyone ")
    assert NEW_CLASS in [c["name"] for c in record["vocabulary"]["classes"]]
    PosSAMPredictor.from_config(TINY, checkpoint=str(out / "heads.safetensors"), device="cpu")
    # The FiftyOne run trained on a snapshot in its output folder, not on the live database.
    assert (out / "train_data" / "panoptic.json").is_file()

    # Fine-tuning those heads on the export with a validation set: PQ reported, best heads kept.
    finetuned = tmp_path / "finetune"
    code, log = _train(
        finetuned, "--data", str(export), "--schedule", "finetune", "--set", f"train.init_heads={out / 'heads.safetensors'}",
        "--val-data", str(output_dir), "--val-every", "1",
    )
    assert code == 0, log[-3000:]
    metrics = _metrics(finetuned)
    assert [m["iteration"] for m in metrics] == [1, 2] and all(0.0 <= m["val_pq"] <= 1.0 for m in metrics)
    best = json.loads((finetuned / "best_metrics.json").read_text())
    assert best["pq"] == max(m["val_pq"] for m in metrics) and best["num_images"] == 2
    assert best["iteration"] == next(m["iteration"] for m in metrics if m["val_pq"] == best["pq"])
    assert (finetuned / "best.safetensors").is_file()
    config = json.loads((finetuned / "train_config.json").read_text())
    assert config["schedule"] == "finetune" and config["config"]["train"]["lr"] == pytest.approx(0.2 * 1e-4)
    assert config["data_summary"]["images"] == 2 and config["source"].startswith("review_export")
    # The reviewer's new class travels through the export into the training vocabulary.
    assert NEW_CLASS in [c["name"] for c in config["vocabulary"]["classes"]]
    PosSAMPredictor.from_config(TINY, checkpoint=str(finetuned / "best.safetensors"), device="cpu")


def test_data_that_cannot_train_fails_before_any_worker(output_dir: Path, tmp_path: Path):
    out = tmp_path / "void"
    code, log = _train(out, "--data", str(output_dir), "--min-score", "1.0")
    assert code == 1 and "no segments to train on: every image is void" in log
    assert not (out / "ray").exists() and not (out / "metrics.jsonl").exists()  # Ray Train never started
    code, log = _train(tmp_path / "nothing", "--data", str(tmp_path / "missing"))
    assert code == 1 and "no such folder" in log


def test_finetune_schedule_preset():
    from possam_label.config import load_config
    from possam_label.train.finetune import finetune_schedule

    cfg = load_config(REPO / "configs" / "possam_small.yaml")
    chosen = finetune_schedule(cfg, num_images=300)
    assert chosen["init_heads"] == cfg.resolve_path(cfg.checkpoint) and Path(chosen["init_heads"]).is_file()
    assert (cfg.train.max_iters, cfg.train.lr_steps, cfg.train.checkpoint_every) == (1500, [1200], 150)  # 40 epochs at batch 8
    assert cfg.train.lr == pytest.approx(0.2 * 5e-4) and cfg.train.warmup_iters == 20
    few = load_config(REPO / "configs" / "possam_small.yaml")
    assert finetune_schedule(few, num_images=5)["max_iters"] == 100  # clamped
    given = load_config(REPO / "configs" / "possam_small.yaml", {"train": {"max_iters": 7, "lr": 1e-3}})
    chosen = finetune_schedule(given, num_images=300, explicit={"max_iters": 7, "lr": 1e-3})
    assert "max_iters" not in chosen and "lr" not in chosen and given.train.lr_steps == [5]
    with pytest.raises(ValueError, match="--schedule finetune needs trained heads"):
        finetune_schedule(load_config(TINY), num_images=10)
