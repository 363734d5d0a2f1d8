"""PosSAM as a FiftyOne Model: ``dataset.apply_model(model, label_field=...)``."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np
import pytest

from conftest import COCO_PANOPTIC_SAMPLE, fresh_dataset_name, import_or_unavailable  # noqa: E402

fo = import_or_unavailable("fiftyone")

from possam_label.fiftyone.autolabel_output import AutolabelOutput  # noqa: E402
from possam_label.fiftyone.convert import detection_mask_placement  # noqa: E402
from possam_label.fiftyone.export import ExportOptions, check_coco_panoptic, export_from_dataset  # noqa: E402
from possam_label.fiftyone.load import load_autolabel_output  # noqa: E402
from possam_label.fiftyone.model import PosSAMModel, PosSAMModelConfig, load_possam_model, prepare_review_field  # noqa: E402

pytestmark = pytest.mark.fiftyone

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def output(coco_autolabel_output) -> AutolabelOutput:
    return AutolabelOutput.open(coco_autolabel_output(seed=11))


class RecordedPredictor:
    """Stands in for PosSAMPredictor: returns the recorded panoptic result of each image (matched by
    size; the two COCO images differ) and counts the batches it was given."""

    def __init__(self, output: AutolabelOutput) -> None:
        self.by_shape = {(item.record.height, item.record.width): item.prediction for item in output.iter_images() if item.prediction}
        self.vocabulary = output.categories
        self.batches: list[int] = []

    def predict(self, images, vocabulary=None, batch_size=8):
        self.batches.append(len(images))
        for image in images:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        return [self.by_shape[image.shape[:2]] for image in images]


def _masks(detections, height, width):
    out = {}
    for det in detections.detections:
        x0, y0, crop = detection_mask_placement(det, height, width)
        full = np.zeros((height, width), dtype=bool)
        full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        out[det.segment_id] = (det.label, round(det.confidence, 6), full)
    return out


def test_apply_model_gives_the_loaders_labels(fiftyone_db, output: AutolabelOutput, tmp_path: Path) -> None:
    name = fresh_dataset_name("model_check")
    load_autolabel_output(output.root, name, progress=False)
    ds = fo.load_dataset(name)
    predictor = RecordedPredictor(output)
    model = PosSAMModel(PosSAMModelConfig(batch_size=2), predictor=predictor)
    ds.apply_model(model, label_field="applied", batch_size=2, progress=False)
    assert predictor.batches == [2]  # one batch of two differently-sized images
    for sample in ds:
        height, width = sample.possam_semantic.mask.shape
        loaded = _masks(sample.possam, height, width)
        applied = _masks(sample.applied, height, width)
        assert loaded.keys() == applied.keys()
        for seg_id, (label, confidence, mask) in loaded.items():
            assert applied[seg_id][0] == label and applied[seg_id][1] == confidence
            assert np.array_equal(applied[seg_id][2], mask)

    ds.apply_model(model, label_field="confident", confidence_thresh=0.5, progress=False)
    confidences = ds.values("confident.detections.confidence", unwind=True)
    assert confidences and min(confidences) >= 0.5
    assert len(confidences) == sum(c >= 0.5 for c in ds.values("possam.detections.confidence", unwind=True))
    assert model.config.min_score is None  # FiftyOne set min_score through confidence_thresh, then restored it

    semantic_model = PosSAMModel(PosSAMModelConfig(semantic=True), predictor=predictor)
    ds.apply_model(semantic_model, label_field="sem", progress=False)
    sample = ds.first()
    assert np.array_equal(sample.sem_semantic.mask, sample.possam_semantic.mask)
    assert len(sample.sem_detections.detections) == len(sample.possam.detections)

    # A field filled by apply_model is reviewable and exportable like a loaded run.
    prepare_review_field(ds, "applied", model)
    summary = export_from_dataset(ds, tmp_path / "export", label_field="applied", options=ExportOptions(formats=["panoptic"]), progress=False)
    assert check_coco_panoptic(tmp_path / "export" / "panoptic.json")["segments"] == summary.num_segments == ds.count("possam.detections")


@pytest.mark.slow
def test_apply_model_with_the_real_tiny_predictor(fiftyone_db) -> None:
    """The real PosSAMPredictor (tiny config, random weights): apply_model stores exactly what
    the predictor returns for the same images."""
    ds = fo.Dataset(fresh_dataset_name("model_real_check"))
    ds.add_samples([fo.Sample(filepath=str(p)) for p in sorted((COCO_PANOPTIC_SAMPLE / "images").glob("*.jpg"))])
    model = load_possam_model(config_path=str(REPO / "configs" / "possam_tiny.yaml"), device="cpu", vocabulary="cat,dog,grass [stuff],sky [stuff]", batch_size=2)
    ds.apply_model(model, label_field="tiny", batch_size=2, progress=False)
    assert ds.count("tiny.detections") >= 1  # random weights still give segments to compare
    from PIL import Image

    for sample in ds:
        image = np.asarray(Image.open(sample.filepath).convert("RGB"))
        (direct,) = model.predictor.predict([image], vocabulary=model._vocabulary)
        detections = sample.tiny.detections
        assert [d.segment_id for d in detections] == [s.id for s in direct.segments]
        assert [d.label for d in detections] == [s.category for s in direct.segments]
        assert all(d.label in {"cat", "dog", "grass", "sky"} for d in detections)
        for det, seg in zip(detections, direct.segments):
            x0, y0, crop = detection_mask_placement(det, *direct.panoptic_map.shape)
            assert np.array_equal(crop, (direct.panoptic_map == seg.id)[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]])
            assert det.confidence == pytest.approx(seg.score)
