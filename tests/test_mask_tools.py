"""Merge, split and per-correction undo on real COCO-panoptic masks in a private FiftyOne database."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np
import pytest
from scipy import ndimage

fo = pytest.importorskip("fiftyone")

from possam_label.fiftyone.convert import detection_mask_placement, label_attr  # noqa: E402
from possam_label.fiftyone.load import load_autolabel_output  # noqa: E402
from possam_label.fiftyone.mask_tools import merge_labels, split_label, undo_correction  # noqa: E402
from possam_label.fiftyone.testing import use_private_database, write_coco_autolabel_output  # noqa: E402

pytestmark = pytest.mark.fiftyone

REPO = Path(__file__).resolve().parents[1]
COCO = REPO / "tests" / "data" / "coco_panoptic_sample"
if not COCO.is_dir():
    COCO = Path("/work/shared/data/coco_panoptic_sample")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    try:
        use_private_database()
    except (FileNotFoundError, RuntimeError) as err:
        pytest.skip(f"no runnable mongod for FiftyOne: {err}")
    out = tmp_path_factory.mktemp("autolabel") / "out"
    write_coco_autolabel_output(out, COCO, seed=5)
    if fo.dataset_exists("mask_tools"):
        fo.delete_dataset("mask_tools")
    load_autolabel_output(out, "mask_tools", progress=False)
    return fo.load_dataset("mask_tools")


def _full(det, height, width):
    x0, y0, crop = detection_mask_placement(det, height, width)
    full = np.zeros((height, width), dtype=bool)
    full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return full


def _state(sample):
    height, width = sample.possam_semantic.mask.shape
    return {d.id: (d.label, d.confidence, int(_full(d, height, width).sum()), _full(d, height, width).tobytes()) for d in sample.possam.detections}


def test_merge_split_and_undo_each(dataset) -> None:
    sample = max(dataset.exists("possam"), key=lambda s: len(s.possam.detections))
    height, width = sample.possam_semantic.mask.shape
    loaded = _state(sample)
    loaded_semantic = sample.possam_semantic.mask.copy()
    fulls = {d.id: _full(d, height, width) for d in sample.possam.detections if d.isthing}
    things = [d for d in sample.possam.detections if d.id in fulls and ndimage.label(fulls[d.id], structure=np.ones((3, 3), bool))[1] == 1]
    # Two one-part things that do not touch: their merge has two connected parts.
    a, b = next((x, y) for x in things for y in things if x.id < y.id
                and not (ndimage.binary_dilation(fulls[x.id], structure=np.ones((3, 3), bool)) & fulls[y.id]).any())
    keeper = a if a.confidence >= b.confidence else b

    merged = merge_labels(dataset, [(sample.id, a.id), (sample.id, b.id)])
    sample.reload()
    now = {d.id: d for d in sample.possam.detections}
    assert merged.label_ids == [keeper.id] and {a.id, b.id} - set(now) == {({a.id, b.id} - {keeper.id}).pop()}
    union = fulls[a.id] | fulls[b.id]
    assert np.array_equal(_full(now[keeper.id], height, width), union) and now[keeper.id].area == int(union.sum())
    assert now[keeper.id].review_status == "edited" and (sample.possam_semantic.mask[union] == keeper.category_id).all()

    split = split_label(dataset, [(sample.id, keeper.id)])
    sample.reload()
    now = {d.id: d for d in sample.possam.detections}
    parts = [_full(now[i], height, width) for i in split.label_ids]
    assert len(parts) == 2 and np.array_equal(parts[0] | parts[1], union) and not (parts[0] & parts[1]).any()
    assert {now[i].label for i in split.label_ids} == {keeper.label}
    assert len({now[i].segment_id for i in split.label_ids}) == 2

    # Undo one correction at a time: first the split, then the merge.
    assert undo_correction(dataset, sample.id)["action"] == "split"
    sample.reload()
    assert np.array_equal(_full(next(d for d in sample.possam.detections if d.id == keeper.id), height, width), union)
    assert len(sample.possam.detections) == len(loaded) - 1
    assert undo_correction(dataset, sample.id)["action"] == "merge"
    sample.reload()
    assert _state(sample).keys() == loaded.keys()
    restored = _state(sample)
    assert all(restored[i][:3] == loaded[i][:3] and restored[i][3] == loaded[i][3] for i in loaded)
    assert np.array_equal(sample.possam_semantic.mask, loaded_semantic)
    assert all(label_attr(d, "review_status") is None for d in sample.possam.detections)
    assert [e["action"] for e in sample.possam_corrections] == ["merge", "split", "undo", "undo"]
    with pytest.raises(ValueError, match="no correction left to undo"):
        undo_correction(dataset, sample.id)


def test_bad_selections_are_refused(dataset) -> None:
    first, second = list(dataset.exists("possam"))[:2]
    with pytest.raises(ValueError, match="one image"):
        merge_labels(dataset, [(first.id, first.possam.detections[0].id), (second.id, second.possam.detections[0].id)])
    with pytest.raises(ValueError, match="at least two"):
        merge_labels(dataset, [(first.id, first.possam.detections[0].id)])
    height, width = first.possam_semantic.mask.shape
    single = next(d for d in first.possam.detections if ndimage.label(_full(d, height, width), structure=np.ones((3, 3), bool))[1] == 1)
    with pytest.raises(ValueError, match="more than one connected part"):
        split_label(dataset, [(first.id, single.id)])


def test_plugin_operators_merge_and_undo(dataset) -> None:
    import fiftyone.operators as foo

    fo.config.plugins_dir = str(REPO / "plugins")
    sample = list(dataset.exists("possam"))[-1]
    a, b = sample.possam.detections[:2]
    selected = [{"sample_id": sample.id, "label_id": d.id, "field": "possam"} for d in (a, b)]
    result = foo.execute_operator("@possam/review/merge_labels", ctx={"dataset": dataset.name, "selected_labels": selected, "params": {}}).result
    assert result["action"] == "merge" and result["num_labels"] == 2
    sample.reload()
    assert len({a.id, b.id} & {d.id for d in sample.possam.detections}) == 1
    undone = foo.execute_operator("@possam/review/undo_correction", ctx={"dataset": dataset.name, "current_sample": sample.id, "params": {}}).result
    assert undone == {"undone": "merge"}
    sample.reload()
    assert {a.id, b.id} <= {d.id for d in sample.possam.detections}
