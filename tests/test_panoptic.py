"""The panoptic id-map toolkit (possam_label.panoptic) and the one COCO-panoptic validator's stuff rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from possam_label.io.coco_panoptic_validate import CocoPanopticValidationError, validate_coco_panoptic
from possam_label.io.coco_panoptic_writer import panoptic_png_bytes, write_coco_panoptic_json
from possam_label.panoptic import areas_and_boxes, filter_by_score, keep_ids, renumber, resize_ids, restrict, score_passes, with_geometry
from possam_label.types import PanopticPrediction, SegmentInfo, segment_fields


def three_segments() -> tuple[np.ndarray, list[SegmentInfo]]:
    """A (32, 48) map with a stuff segment (score 0.9), a thing (0.8) and a low-score thing (0.2); also used by test_autolabel_units."""
    id_map = np.zeros((32, 48), dtype=np.int32)
    id_map[:, :20] = 1  # stuff on the left
    id_map[5:15, 25:40] = 2  # a thing
    id_map[20:30, 30:46] = 3  # a low-score thing
    segments = [
        SegmentInfo(id=seg_id, category_id=100 + seg_id, category=f"class{seg_id}", isthing=isthing, score=score,
                    mask_quality=0.7, in_vocab_prob=0.5, out_vocab_prob=0.4, area=-1, bbox=[0, 0, 0, 0])
        for seg_id, score, isthing in ((1, 0.9, False), (2, 0.8, True), (3, 0.2, True))
    ]
    return id_map, segments


def test_resize_ids_nearest_keeps_every_id() -> None:
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    big = resize_ids(ids, 7, 9)
    assert big.shape == (7, 9) and set(np.unique(big).tolist()) == set(range(12))  # no id lost when upscaling
    assert resize_ids(ids, 3, 4) is ids
    small = resize_ids(np.repeat(np.repeat(ids, 2, axis=0), 2, axis=1), 3, 4)
    assert np.array_equal(small, ids)  # halving a doubled map gives it back (pixel centres)


def test_keep_areas_boxes_and_renumber() -> None:
    assert keep_ids(np.array([[1, 2], [3, -1]]), [2, 3]).tolist() == [[0, 2], [3, 0]]
    id_map, _ = three_segments()
    areas, boxes = areas_and_boxes(id_map, [2, 1, 5])
    assert areas == [150, 640, 0] and boxes == [[25.0, 5.0, 15.0, 10.0], [0.0, 0.0, 20.0, 32.0], None]
    # Present ids are renumbered 1..M in the order given; absent ones leave no gap; others become void.
    new_map, kept = renumber(id_map, [3, 9, 1])
    assert [(k.old_id, k.new_id, k.index, k.area) for k in kept] == [(3, 1, 0, 160), (1, 2, 2, 640)]
    assert new_map.dtype == np.int32 and set(np.unique(new_map).tolist()) == {0, 1, 2} and (new_map == 1).sum() == 160
    same_map, same = renumber(id_map, [1, 2, 3], compact=False)
    assert np.array_equal(same_map, id_map) and [k.new_id for k in same] == [1, 2, 3]


def test_score_filter_and_predictions() -> None:
    id_map, segments = three_segments()
    assert score_passes(np.array([0.2, 0.5, 0.7]), 0.5).tolist() == [False, True, True]  # score >= threshold
    assert score_passes(np.array([0.2]), None).tolist() == [True]
    prediction = with_geometry(id_map, segments)
    assert [(s.id, s.area, s.bbox) for s in prediction.segments][1] == (2, 150, [25.0, 5.0, 15.0, 10.0])
    filtered = filter_by_score(prediction, 0.5)
    assert [s.id for s in filtered.segments] == [1, 2] and not (filtered.panoptic_map == 3).any()
    assert filter_by_score(prediction, None) is prediction
    only = restrict(prediction, {3})
    assert isinstance(only, PanopticPrediction) and set(np.unique(only.panoptic_map).tolist()) == {0, 3}


def test_segment_fields_are_declared_once() -> None:
    from possam_label.fiftyone.autolabel_output import SEGMENT_COLUMNS
    from possam_label.io.tables import SEGMENTS_SCHEMA

    columns = [column for _, column, _ in segment_fields()]
    assert SEGMENTS_SCHEMA.names == ["image_id", "file_path"] + columns + ["rle", "run_id"]
    assert tuple(SEGMENTS_SCHEMA.names) == SEGMENT_COLUMNS
    assert columns[0] == "segment_id"  # SegmentInfo.id is stored as segment_id


def test_validator_stuff_rule(tmp_path: Path) -> None:
    id_map = np.zeros((4, 6), np.int32)
    id_map[:, :2], id_map[:, 4:] = 1, 2  # two segments of one stuff class
    (tmp_path / "panoptic").mkdir()
    (tmp_path / "panoptic" / "3.png").write_bytes(panoptic_png_bytes(id_map))
    infos = [{"id": 1, "category_id": 7, "area": 8, "bbox": [0, 0, 2, 4], "iscrowd": 0},
             {"id": 2, "category_id": 7, "area": 8, "bbox": [4, 0, 2, 4], "iscrowd": 0}]
    write_coco_panoptic_json(
        tmp_path / "panoptic.json", [{"id": 3, "file_name": "/x/3.jpg", "width": 6, "height": 4}],
        [{"image_id": 3, "file_name": "3.png", "segments_info": infos}], [{"id": 7, "name": "sky", "isthing": 0, "color": [1, 2, 3]}],
        durable=False,
    )
    # Autolabel outputs may hold several segments of a stuff class; a training-set export may not.
    assert validate_coco_panoptic(tmp_path / "panoptic.json")["segments"] == 2  # png_dir defaults to the JSON's stem
    with pytest.raises(CocoPanopticValidationError, match="stuff class 'sky' has more than one segment"):
        validate_coco_panoptic(tmp_path / "panoptic.json", one_segment_per_stuff_class=True)
