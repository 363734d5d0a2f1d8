"""SAM in the review (refine a label, segment and classify a drawn box) with the shipped small model,
on synthetic scenes whose loaded labels are their ground truth, in a private FiftyOne database."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np
import pytest
from scipy import ndimage

from conftest import fresh_dataset_name, import_or_unavailable  # noqa: E402

fo = import_or_unavailable("fiftyone")

from possam_label import prompting  # noqa: E402
from possam_label.fiftyone.convert import detection_mask_placement, label_attr  # noqa: E402
from possam_label.fiftyone.load import load_autolabel_output  # noqa: E402
from possam_label.fiftyone.mask_tools import set_full_mask, undo_correction  # noqa: E402
from possam_label.fiftyone.sam_tools import refine_labels, segment_new_boxes  # noqa: E402
from possam_label.fiftyone.testing import write_coco_autolabel_output  # noqa: E402
from possam_label.synthetic.world import generate_dataset  # noqa: E402

pytestmark = pytest.mark.fiftyone

SEED = 4242  # the scenes docs/review.md reports figures on
NUM_SCENES = 4


@pytest.fixture(scope="module")
def builds():
    """Counts the models built (PromptedSegmenter.from_config) while this module runs."""
    count = {"n": 0}
    original = prompting.PromptedSegmenter.from_config.__func__

    def counting(cls, *args, **kwargs):
        count["n"] += 1
        return original(cls, *args, **kwargs)

    patch = pytest.MonkeyPatch()
    prompting.clear_prompted_segmenters()
    patch.setattr(prompting.PromptedSegmenter, "from_config", classmethod(counting))
    yield count
    patch.undo()
    prompting.clear_prompted_segmenters()


@pytest.fixture(scope="module")
def dataset(fiftyone_db, tmp_path_factory):
    world = tmp_path_factory.mktemp("world")
    generate_dataset(world, NUM_SCENES, seed=SEED)
    panoptic = json.loads((world / "panoptic.json").read_text())
    (world / "panoptic_examples.json").write_text(json.dumps(panoptic))
    (world / "panoptic_coco_categories.json").write_text(json.dumps(panoptic["categories"]))
    out = tmp_path_factory.mktemp("autolabel") / "out"
    write_coco_autolabel_output(out, world, seed=3)
    load_autolabel_output(out, fresh_dataset_name("sam_tools"), progress=False)
    return fo.load_dataset("sam_tools")


def _full(det, height, width):
    full = np.zeros((height, width), dtype=bool)
    x0, y0, crop = detection_mask_placement(det, height, width)
    full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return full


def _iou(a, b):
    return float((a & b).sum() / max(1, (a | b).sum()))


def _things(sample, min_area=150):
    return [d for d in sample.possam.detections if label_attr(d, "isthing") and (label_attr(d, "area") or 0) >= min_area]


def test_refine_raises_iou_of_damaged_masks_keeps_class_and_undoes(dataset, builds) -> None:
    before_ious, after_ious = [], []
    for sample in dataset:
        height, width = sample.possam_semantic.mask.shape
        targets = _things(sample)
        if not targets:
            continue
        truth = {d.id: _full(d, height, width) for d in targets}
        classes = {d.id: (d.label, d.category_id, d.confidence) for d in targets}
        for det in targets:  # the damage: eroded by 3 px (an edit, as if brushed in the App)
            set_full_mask(det, ndimage.binary_erosion(truth[det.id], iterations=3))
        sample.save()
        damaged = {d.id: _full(d, height, width) for d in targets}
        result = refine_labels(dataset, [{"sample_id": sample.id, "label_id": d.id, "field": "possam"} for d in targets])
        assert result.action == "refine" and set(result.label_ids) == set(truth)
        sample.reload()
        now = {d.id: d for d in sample.possam.detections}
        for label_id, gt in truth.items():
            refined = _full(now[label_id], height, width)
            before_ious.append(_iou(damaged[label_id], gt))
            after_ious.append(_iou(refined, gt))
            assert (refined & damaged[label_id]).sum() >= 0.9 * damaged[label_id].sum()
            assert (now[label_id].label, now[label_id].category_id, now[label_id].confidence) == classes[label_id]
            assert now[label_id].review_status == "edited" and now[label_id].area == int(refined.sum())
            assert (sample.possam_semantic.mask[refined] == now[label_id].category_id).all()
        masks = [_full(d, height, width) for d in sample.possam.detections]
        assert (np.sum(masks, axis=0) <= 1).all()  # still panoptic: no pixel in two labels
        entry = sample.possam_corrections[-1]
        assert entry["action"] == "refine" and entry["source"] == "plugin" and set(entry["label_ids"]) == set(truth)

        undone = undo_correction(dataset, sample.id)
        assert undone["action"] == "refine"
        sample.reload()
        now = {d.id: d for d in sample.possam.detections}
        for label_id in truth:
            assert np.array_equal(_full(now[label_id], height, width), damaged[label_id])
        refine_labels(dataset, [(sample.id, d.id) for d in targets])  # the refined state again, for the figures
    # Measured on these scenes: docs/review.md (mean IoU of eroded masks 0.64 -> 0.77 on 10 scenes).
    assert len(after_ious) >= 8
    assert np.mean(after_ious) > np.mean(before_ious) + 0.05
    assert np.mean(np.array(after_ious) > np.array(before_ious)) >= 0.6


def test_drawn_boxes_get_mask_class_and_confidence_and_undo(dataset, builds) -> None:
    ious, correct, total = [], 0, 0
    for sample in dataset:
        height, width = sample.possam_semantic.mask.shape
        targets = _things(sample)
        if not targets:
            continue
        truth = {d.id: (_full(d, height, width), d.label) for d in targets}
        kept = [d for d in sample.possam.detections if d.id not in truth]
        # As the App's Annotate tab leaves them: a box with the schema's first class and no mask.
        drawn = [fo.Detection(label="circle", bounding_box=list(d.bounding_box)) for d in targets]
        sample.possam = fo.Detections(detections=kept + drawn)
        sample.save()
        result = segment_new_boxes(dataset, sample.id)
        assert result.action == "segment_boxes" and sorted(result.label_ids) == sorted(d.id for d in drawn)
        sample.reload()
        now = {d.id: d for d in sample.possam.detections}
        for new, (label_id, (gt, label)) in zip(drawn, truth.items()):
            det = now[new.id]
            mask = _full(det, height, width)
            ious.append(_iou(mask, gt))
            correct += det.label == label
            total += 1
            assert det.review_status == "added" and 0.0 < det.confidence <= 1.0 and det.area == int(mask.sum())
            assert det.category_id == dataset.info["possam_label"]["possam"]["categories"][[c["name"] for c in dataset.info["possam_label"]["possam"]["categories"]].index(det.label)]["id"]
        masks = [_full(d, height, width) for d in sample.possam.detections]
        assert (np.sum(masks, axis=0) <= 1).all()
        assert sample.possam_corrections[-1]["action"] == "segment_boxes"

        undo_correction(dataset, sample.id)
        sample.reload()
        now = {d.id: d for d in sample.possam.detections}
        assert all(now[d.id].mask is None and now[d.id].label == "circle" for d in drawn)
    # Measured on 10 scenes of this seed (docs/review.md): IoU 0.57, class 65 % over every segment.
    assert total >= 8
    assert np.mean(ious) > 0.45
    assert correct / total >= 0.4


def test_plugin_operators_refine_and_segment_boxes(dataset, builds) -> None:
    import fiftyone.operators as foo

    plugins = str(Path(__file__).resolve().parents[1] / "plugins")
    fo.config.plugins_dir = plugins
    os.environ["FIFTYONE_PLUGINS_DIR"] = plugins
    first, second = list(dataset)[:2]
    # The things were replaced by drawn boxes above: any label with a mask will do (stuff here).
    a, b = [next(d for d in sample.possam.detections if (label_attr(d, "area") or 0) >= 150) for sample in (first, second)]
    two_samples = [{"sample_id": first.id, "label_id": a.id, "field": "possam"}, {"sample_id": second.id, "label_id": b.id, "field": "possam"}]
    with pytest.raises(Exception, match="confirm_multi|spans 2 samples"):  # the form asks for a confirmation
        foo.execute_operator("@possam/review/refine_labels", ctx={"dataset": dataset.name, "selected_labels": two_samples, "params": {}})
    refined = foo.execute_operator("@possam/review/refine_labels",
                                   ctx={"dataset": dataset.name, "selected_labels": two_samples[:1], "params": {}}).result
    assert refined["action"] == "refine" and refined["label_ids"] == [a.id] and refined["skipped_other_fields"] == 0
    assert json.loads(json.dumps(refined)) == refined  # the App server sends it as JSON
    first.reload()
    assert first.possam_corrections[-1]["action"] == "refine"

    box = fo.Detection(label="circle", bounding_box=list(b.bounding_box))
    second.possam = fo.Detections(detections=[d for d in second.possam.detections if d.id != b.id] + [box])
    second.save()
    drawn = foo.execute_operator("@possam/review/segment_new_boxes",
                                 ctx={"dataset": dataset.name, "current_sample": second.id, "params": {}}).result
    assert box.id in drawn["label_ids"]  # with the boxes test_drawn_boxes left unsegmented (undone)
    second.reload()
    assert next(d for d in second.possam.detections if d.id == box.id).mask is not None
    with pytest.raises(Exception, match="no box without a mask"):
        foo.execute_operator("@possam/review/segment_new_boxes", ctx={"dataset": dataset.name, "current_sample": second.id, "params": {}})


def test_model_built_once_for_every_call(dataset, builds) -> None:
    assert builds["n"] == 1  # two tools, four samples, the plugin operators: one build
