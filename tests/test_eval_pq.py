"""PQ evaluation with panopticapi's rules: crafted cases with hand-computed values, the real COCO
sample, a brute-force cross-check, clear errors, and the CLI."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from possam_label.eval import (
    PanopticQualityEvaluator,
    PQStats,
    format_pq_table,
    pq_compute,
    pq_image_stats,
    summarize_pq,
)
from possam_label.io.panoptic_png import read_panoptic_png, write_panoptic_png
from possam_label.types import SegmentInfo

REPO = Path(__file__).resolve().parents[1]
COCO = Path(__file__).parent / "data" / "coco_panoptic_sample"
COCO_JSON = COCO / "panoptic_examples.json"
COCO_PNG = COCO / "panoptic"

PERSON, CAR, SKY, GRASS, ROAD = 1, 2, 10, 11, 20
CATEGORIES = [
    {"id": PERSON, "name": "person", "isthing": 1},
    {"id": CAR, "name": "car", "isthing": 1},
    {"id": SKY, "name": "sky", "isthing": 0},
    {"id": GRASS, "name": "grass", "isthing": 0},
    {"id": ROAD, "name": "road", "isthing": 0},
]


def seg(segment_id: int, category_id: int, iscrowd: int = 0) -> dict:
    return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd}


def counts_of(stats: PQStats) -> dict[int, tuple[int, int, int, float]]:
    return {cid: (c.tp, c.fp, c.fn, round(c.iou_sum, 12)) for cid, c in stats.per_class.items()}


def strip(*runs: tuple[int, int]) -> np.ndarray:
    """A (1, W) id map built from (id, length) runs, to count pixels by eye."""
    return np.concatenate([np.full(length, value, dtype=np.int32) for value, length in runs])[None, :]


# ----------------------------------------------------------------------------- crafted cases


def test_void_pixels_of_the_prediction_leave_the_union():
    # GT: person (10 px) + 10 void px. Pred: 6 px on the person + 6 px on void + 8 px unlabelled.
    gt = strip((1, 10), (0, 10))
    pred = strip((0, 4), (5, 12), (0, 4))
    stats = pq_image_stats(gt, [seg(1, PERSON)], pred, [seg(5, PERSON)], CATEGORIES)
    # union = 12 + 10 - 6 - 6 (pred on void) = 10 -> IoU 0.6 (0.375 if void were counted).
    assert counts_of(stats) == {PERSON: (1, 0, 0, 0.6)}
    results = summarize_pq(stats, CATEGORIES)
    assert results["per_class"][PERSON] == {"pq": 0.6, "sq": 0.6, "rq": 1.0}
    assert results["All"] == {"pq": 0.6, "sq": 0.6, "rq": 1.0, "n": 1}
    assert results["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


def test_iou_of_exactly_one_half_does_not_match():
    # Pred covers 4 of the 8 GT pixels and nothing else: IoU = 4 / 8 = 0.5 -> no match.
    gt = strip((1, 8), (2, 8))
    pred = strip((7, 4), (0, 12))
    stats = pq_image_stats(gt, [seg(1, PERSON), seg(2, SKY)], pred, [seg(7, PERSON)], CATEGORIES)
    assert counts_of(stats) == {PERSON: (0, 1, 1, 0.0), SKY: (0, 0, 1, 0.0)}
    # One more pixel: IoU = 5 / 8 > 0.5 -> match.
    pred = strip((7, 5), (0, 11))
    stats = pq_image_stats(gt, [seg(1, PERSON), seg(2, SKY)], pred, [seg(7, PERSON)], CATEGORIES)
    assert counts_of(stats) == {PERSON: (1, 0, 0, 0.625), SKY: (0, 0, 1, 0.0)}


def test_iou_one_half_with_void_and_half_on_void_is_still_a_false_positive():
    # GT person 6 px, 6 void px. Pred (6 px) = 3 on person + 3 on void.
    # union = 6 + 6 - 3 - 3 = 6 -> IoU 0.5 -> no match; 3/6 on void is not MORE than half -> FP.
    gt = strip((1, 6), (0, 6))
    pred = strip((0, 3), (4, 6), (0, 3))
    stats = pq_image_stats(gt, [seg(1, PERSON)], pred, [seg(4, PERSON)], CATEGORIES)
    assert counts_of(stats) == {PERSON: (0, 1, 1, 0.0)}
    # 4 of 7 pred pixels on void (> half): union = 7 + 6 - 3 - 4 = 6 -> IoU 0.5, no match, no FP.
    pred = strip((0, 3), (4, 7), (0, 2))
    stats = pq_image_stats(gt, [seg(1, PERSON)], pred, [seg(4, PERSON)], CATEGORIES)
    assert counts_of(stats) == {PERSON: (0, 0, 1, 0.0)}


def test_crowd_region_is_not_matched_and_absorbs_same_category_predictions():
    # GT: crowd of persons (10 px), one person (10 px), sky (10 px).
    gt = strip((1, 10), (2, 10), (3, 10))
    gt_segments = [seg(1, PERSON, iscrowd=1), seg(2, PERSON), seg(3, SKY)]
    # Pred: a person exactly on the crowd (neither TP nor FP), the person and the sky exactly.
    pred = strip((11, 10), (12, 10), (13, 10))
    pred_segments = [seg(11, PERSON), seg(12, PERSON), seg(13, SKY)]
    stats = pq_image_stats(gt, gt_segments, pred, pred_segments, CATEGORIES)
    assert counts_of(stats) == {PERSON: (1, 0, 0, 1.0), SKY: (1, 0, 0, 1.0)}  # crowd: no FN either
    # The crowd region only absorbs predictions of its own category: a car there is a FP.
    pred_segments = [seg(11, CAR), seg(12, PERSON), seg(13, SKY)]
    stats = pq_image_stats(gt, gt_segments, pred, pred_segments, CATEGORIES)
    assert counts_of(stats) == {PERSON: (1, 0, 0, 1.0), SKY: (1, 0, 0, 1.0), CAR: (0, 1, 0, 0.0)}
    # A crowd GT segment is never matched even by an identical prediction of its category.
    stats = pq_image_stats(gt, [seg(1, PERSON, iscrowd=1)], strip((9, 10), (0, 20)), [seg(9, PERSON)], CATEGORIES)
    assert counts_of(stats) == {}


def test_last_crowd_segment_of_a_category_wins():
    # Two person crowd segments; only the last (id 2) counts as the crowd region.
    gt = strip((1, 10), (2, 10))
    gt_segments = [seg(1, PERSON, iscrowd=1), seg(2, PERSON, iscrowd=1)]
    on_first = pq_image_stats(gt, gt_segments, strip((9, 10), (0, 10)), [seg(9, PERSON)], CATEGORIES)
    on_last = pq_image_stats(gt, gt_segments, strip((0, 10), (9, 10)), [seg(9, PERSON)], CATEGORIES)
    assert counts_of(on_first) == {PERSON: (0, 1, 0, 0.0)}
    assert counts_of(on_last) == {}
    # Reversing the segments_info order moves the crowd region to id 1.
    reversed_segments = gt_segments[::-1]
    on_first = pq_image_stats(gt, reversed_segments, strip((9, 10), (0, 10)), [seg(9, PERSON)], CATEGORIES)
    assert counts_of(on_first) == {}


def test_false_positive_absorbed_by_void_plus_crowd():
    # GT: void 3, person crowd 3, grass 4, then the rest grass (pred-free).
    gt = strip((0, 3), (1, 3), (2, 4), (2, 10))
    gt_segments = [seg(1, PERSON, iscrowd=1), seg(2, GRASS)]
    # Pred person (10 px): 3 on void + 3 on crowd + 4 on grass -> 6/10 > 0.5 -> not a FP.
    pred = strip((5, 10), (6, 10))
    stats = pq_image_stats(gt, gt_segments, pred, [seg(5, PERSON), seg(6, GRASS)], CATEGORIES)
    # grass: inter 10, union 10 + 14 - 10 - 0 = 14 -> IoU 10/14 -> TP.
    assert counts_of(stats) == {GRASS: (1, 0, 0, round(10 / 14, 12))}
    # Shift one pixel from void to grass: 2 + 3 = 5 of 10 -> exactly half -> FP.
    gt = strip((0, 2), (2, 1), (1, 3), (2, 4), (2, 10))
    stats = pq_image_stats(gt, gt_segments, pred, [seg(5, PERSON), seg(6, GRASS)], CATEGORIES)
    assert counts_of(stats)[PERSON] == (0, 1, 0, 0.0)


def test_duplicate_predictions_give_one_tp_and_one_fp():
    gt = strip((1, 10), (0, 2))
    pred = strip((5, 8), (6, 2), (0, 2))
    stats = pq_image_stats(gt, [seg(1, PERSON)], pred, [seg(5, PERSON), seg(6, PERSON)], CATEGORIES)
    assert counts_of(stats) == {PERSON: (1, 1, 0, 0.8)}  # IoU 8/10; the 2-px copy has IoU 0.2
    results = summarize_pq(stats, CATEGORIES)
    assert results["per_class"][PERSON] == pytest.approx({"pq": 0.8 / 1.5, "sq": 0.8, "rq": 1 / 1.5})


def test_things_stuff_averaging_and_classes_missing_on_one_side():
    gt = np.zeros((10, 10), np.int32)
    gt[0:5] = 1  # sky, 50 px
    gt[5:, 0:5] = 2  # person, 25 px
    gt[5:, 5:] = 3  # grass, 25 px
    pred = np.zeros((10, 10), np.int32)
    pred[0:4] = 7  # sky, 40 px: IoU 40/50 = 0.8 -> TP
    pred[4] = 8  # car on the sky, 10 px: car only predicted -> FP
    pred[5:, 0:5] = 9  # person, exact -> TP
    pred[5:, 5:] = 10  # sky on the grass: grass only in GT -> FN; sky FP
    stats = pq_image_stats(
        gt,
        [seg(1, SKY), seg(2, PERSON), seg(3, GRASS)],
        pred,
        [seg(7, SKY), seg(8, CAR), seg(9, PERSON), seg(10, SKY)],
        CATEGORIES,
    )
    assert counts_of(stats) == {
        SKY: (1, 1, 0, 0.8),
        CAR: (0, 1, 0, 0.0),
        PERSON: (1, 0, 0, 1.0),
        GRASS: (0, 0, 1, 0.0),
    }
    results = summarize_pq(stats, CATEGORIES)
    sky = {"pq": 0.8 / 1.5, "sq": 0.8, "rq": 1 / 1.5}
    zero = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    one = {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    # per_class lists every category in order (ROAD: on neither side -> zeros, and not averaged).
    assert list(results["per_class"]) == [PERSON, CAR, SKY, GRASS, ROAD]
    assert results["per_class"][ROAD] == zero
    assert results["per_class"][PERSON] == one
    assert results["per_class"][CAR] == zero
    assert results["per_class"][SKY] == pytest.approx(sky)
    assert results["per_class"][GRASS] == zero
    assert results["Things"] == pytest.approx({"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2})
    assert results["Stuff"] == pytest.approx({"pq": 0.8 / 3, "sq": 0.4, "rq": 1 / 3, "n": 2})
    assert results["All"] == pytest.approx(
        {"pq": (0.8 / 1.5 + 1) / 4, "sq": 1.8 / 4, "rq": (1 / 1.5 + 1) / 4, "n": 4}
    )
    table = format_pq_table(results, CATEGORIES, per_class=True)
    assert "Things" in table and "grass" in table and "53.333" in table


def test_counts_are_summed_over_images_before_the_class_formula():
    evaluator = PanopticQualityEvaluator(CATEGORIES)
    gt = strip((1, 10))
    evaluator.add_image(gt, [seg(1, PERSON)], strip((4, 10)), [seg(4, PERSON)])  # TP, IoU 1
    evaluator.add_image(gt, [seg(1, PERSON)], strip((0, 10)), [])  # FN
    results = evaluator.compute()
    assert evaluator.num_images == 2
    assert counts_of(evaluator.stats) == {PERSON: (1, 0, 1, 1.0)}
    assert results["per_class"][PERSON] == pytest.approx({"pq": 1 / 1.5, "sq": 1.0, "rq": 1 / 1.5})
    assert results["All"]["n"] == 1


def test_classes_without_tp_fp_fn_are_not_averaged():
    stats = PQStats()
    stats.counts(PERSON).tp += 1
    stats.counts(PERSON).iou_sum += 0.9
    stats.counts(ROAD)  # present but empty: must not count in n
    results = summarize_pq(stats, CATEGORIES)
    assert results["per_class"][PERSON] == pytest.approx({"pq": 0.9, "sq": 0.9, "rq": 1.0})
    assert results["per_class"][ROAD] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert results["All"] == pytest.approx({"pq": 0.9, "sq": 0.9, "rq": 1.0, "n": 1})
    assert results["Stuff"]["n"] == 0


def test_segment_objects_and_extra_keys_are_accepted():
    gt = strip((1, 5), (2, 5))
    pred = strip((3, 5), (4, 5))
    pred_segments = [
        SegmentInfo(3, PERSON, "person", True, 0.9, 0.8, 0.7, 0.6, 5),
        {"id": 4, "category_id": SKY, "score": 0.1, "iscrowd": "not read for predictions"},
    ]
    stats = pq_image_stats(gt, [seg(1, PERSON), seg(2, SKY)], pred, pred_segments, CATEGORIES)
    assert counts_of(stats) == {PERSON: (1, 0, 0, 1.0), SKY: (1, 0, 0, 1.0)}


def test_in_memory_errors_name_the_image_and_reason():
    gt = strip((1, 4))
    segments = [seg(1, PERSON)]
    with pytest.raises(ValueError, match=r"frame 7: prediction PNG has segment ids 2 .*not in its segments_info"):
        pq_image_stats(gt, segments, strip((2, 4)), [], CATEGORIES, image_label="frame 7")
    with pytest.raises(ValueError, match=r"frame 7: prediction segments_info lists ids 9 .*do not occur"):
        pq_image_stats(gt, segments, strip((1, 4)), [seg(1, PERSON), seg(9, PERSON)], CATEGORIES, image_label="frame 7")
    with pytest.raises(ValueError, match=r"frame 7 \(prediction\): segment 1 has category_id 99"):
        pq_image_stats(gt, segments, gt, [seg(1, 99)], CATEGORIES, image_label="frame 7")
    with pytest.raises(ValueError, match=r"frame 7: prediction size 5x1 \(WxH\) differs from ground-truth size 4x1"):
        pq_image_stats(gt, segments, strip((1, 5)), segments, CATEGORIES, image_label="frame 7")
    with pytest.raises(ValueError, match="appears twice"):
        pq_image_stats(gt, segments, gt, [seg(1, PERSON), seg(1, CAR)], CATEGORIES)
    with pytest.raises(ValueError, match="reserved for void"):
        pq_image_stats(gt, segments, gt, [seg(1, PERSON), seg(0, CAR)], CATEGORIES)
    with pytest.raises(ValueError, match="isthing"):
        pq_image_stats(gt, segments, gt, segments, [{"id": PERSON}])


# ------------------------------------------------------------- brute-force cross-check


def reference_counts(gt, gt_segments, pred, pred_segments):
    """The rules evaluated literally with one boolean mask per segment (slow, obviously right)."""
    result = defaultdict(lambda: [0, 0, 0, 0.0])
    void = gt == 0
    matched_gt, matched_pred = set(), set()
    for g in gt_segments:
        g_mask = gt == g["id"]
        for p in pred_segments:
            p_mask = pred == p["id"]
            if g["iscrowd"] or g["category_id"] != p["category_id"]:
                continue
            inter = np.sum(g_mask & p_mask)
            union = np.sum(g_mask | p_mask) - np.sum(p_mask & void)
            if inter / union > 0.5:
                result[g["category_id"]][0] += 1
                result[g["category_id"]][3] += inter / union
                matched_gt.add(g["id"])
                matched_pred.add(p["id"])
    crowd = {}
    for g in gt_segments:
        if g["iscrowd"]:
            crowd[g["category_id"]] = g["id"]
        elif g["id"] not in matched_gt:
            result[g["category_id"]][2] += 1
    for p in pred_segments:
        if p["id"] in matched_pred:
            continue
        p_mask = pred == p["id"]
        ignored = np.sum(p_mask & void)
        if p["category_id"] in crowd:
            ignored += np.sum(p_mask & (gt == crowd[p["category_id"]]))
        if ignored / np.sum(p_mask) > 0.5:
            continue
        result[p["category_id"]][1] += 1
    return {cid: (tp, fp, fn, round(float(iou), 12)) for cid, (tp, fp, fn, iou) in result.items()}


def random_case(rng: np.random.Generator, size: int = 12):
    categories = [PERSON, CAR, SKY, GRASS]
    gt = np.zeros((size, size), np.int32)
    for k in range(1, int(rng.integers(2, 8))):
        y, x = rng.integers(0, size - 2, 2)
        h, w = rng.integers(2, size // 2, 2)
        gt[y : y + h, x : x + w] = k * 3
    gt_segments = [
        seg(int(i), int(rng.choice(categories)), int(rng.random() < 0.3)) for i in np.unique(gt) if i
    ]
    pred = np.roll(gt, tuple(rng.integers(-1, 2, 2)), axis=(0, 1)).copy()
    for k in range(int(rng.integers(0, 4))):
        y, x = rng.integers(0, size - 2, 2)
        h, w = rng.integers(1, size // 2, 2)
        pred[y : y + h, x : x + w] = 100 + k if rng.random() < 0.8 else 0
    gt_category = {s["id"]: s["category_id"] for s in gt_segments}
    pred_segments = [
        {"id": int(i), "category_id": gt_category.get(int(i)) if rng.random() < 0.7 and int(i) in gt_category
         else int(rng.choice(categories)), "score": float(rng.random())}
        for i in np.unique(pred) if i
    ]
    return gt, gt_segments, pred, pred_segments


def test_matches_a_brute_force_reference_on_random_maps():
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(300):
        gt, gt_segments, pred, pred_segments = random_case(rng)
        got = counts_of(pq_image_stats(gt, gt_segments, pred, pred_segments, CATEGORIES))
        expected = {cid: c for cid, c in reference_counts(gt, gt_segments, pred, pred_segments).items()}
        assert got == expected
        for tp, fp, fn, _ in got.values():
            kinds.update(name for name, n in (("tp", tp), ("fp", fp), ("fn", fn)) if n)
    assert kinds == {"tp", "fp", "fn"}  # the random cases exercise every outcome


# ------------------------------------------------------------------------ real COCO sample


def test_coco_sample_json_holds_both_images():
    data = json.loads(COCO_JSON.read_text())
    assert sorted(a["image_id"] for a in data["annotations"]) == sorted(i["id"] for i in data["images"])
    assert len(data["annotations"]) == 2 and len(data["categories"]) == 133
    assert any(s["iscrowd"] for a in data["annotations"] for s in a["segments_info"])


def test_ground_truth_as_prediction_scores_exactly_one():
    results = pq_compute(COCO_JSON, COCO_JSON, COCO_PNG, COCO_PNG)
    for group, n in (("All", 8), ("Things", 4), ("Stuff", 4)):
        assert results[group] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": n}
    assert len(results["per_class"]) == 133  # every GT category, as panopticapi reports
    perfect = sorted(cid for cid, scores in results["per_class"].items() if scores == {"pq": 1.0, "sq": 1.0, "rq": 1.0})
    assert perfect == [1, 8, 19, 37, 125, 184, 187, 193]
    assert all(max(results["per_class"][cid].values()) == 0.0 for cid in set(results["per_class"]) - set(perfect))


def write_prediction(tmp_path: Path, data: dict, maps: dict[str, np.ndarray] | None = None) -> tuple[Path, Path]:
    """Write a prediction JSON and PNG folder under tmp_path (PNGs copied from the GT unless given)."""
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir(exist_ok=True)
    for annotation in data["annotations"]:
        source = COCO_PNG / annotation["file_name"]
        if maps and annotation["file_name"] in maps:
            write_panoptic_png(pred_dir / annotation["file_name"], maps[annotation["file_name"]])
        elif source.exists():
            shutil.copy(source, pred_dir / annotation["file_name"])
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps(data))
    return pred_json, pred_dir


def coco_prediction() -> dict:
    data = json.loads(COCO_JSON.read_text())
    return {"annotations": copy.deepcopy(data["annotations"])}  # no categories: they come from the GT


def test_relabelled_segment_gives_hand_computed_scores(tmp_path):
    data = coco_prediction()
    person = next(s for s in data["annotations"][0]["segments_info"] if s["category_id"] == 1 and not s["iscrowd"])
    person["category_id"] = 3  # car: not in the GT images
    for annotation in data["annotations"]:  # extra keys such as score are ignored
        for segment in annotation["segments_info"]:
            segment["score"] = 0.5
    # Prediction annotations in another order and with other file names: matched by image_id.
    data["annotations"].reverse()
    for annotation in data["annotations"]:
        shutil.copy(COCO_PNG / annotation["file_name"], tmp_path / ("pred_" + annotation["file_name"]))
        annotation["file_name"] = "pred_" + annotation["file_name"]
    (tmp_path / "pred.json").write_text(json.dumps(data))
    results = pq_compute(COCO_JSON, tmp_path / "pred.json", COCO_PNG, tmp_path)
    # person: 26 non-crowd GT persons -> TP 25, FN 1; car: FP 1; 7 other classes perfect.
    person_pq = 25 / 25.5
    assert results["per_class"][1] == pytest.approx({"pq": person_pq, "sq": 1.0, "rq": person_pq})
    assert results["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert results["All"] == pytest.approx({"pq": (7 + person_pq) / 9, "sq": 8 / 9, "rq": (7 + person_pq) / 9, "n": 9})
    assert results["Things"] == pytest.approx({"pq": (3 + person_pq) / 5, "sq": 4 / 5, "rq": (3 + person_pq) / 5, "n": 5})
    assert results["Stuff"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 4}


def test_worker_processes_give_the_same_result():
    single = pq_compute(COCO_JSON, COCO_JSON, COCO_PNG, COCO_PNG)
    assert pq_compute(COCO_JSON, COCO_JSON, COCO_PNG, COCO_PNG, num_workers=2) == single


def test_missing_png_is_a_clear_error(tmp_path):
    pred_json, pred_dir = write_prediction(tmp_path, coco_prediction())
    (pred_dir / "000000439180.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_id 439180: panoptic PNG .*000000439180.png does not exist"):
        pq_compute(COCO_JSON, pred_json, COCO_PNG, pred_dir)


def test_png_id_missing_from_segments_info_is_a_clear_error(tmp_path):
    data = coco_prediction()
    dropped = data["annotations"][1]["segments_info"].pop(3)
    pred_json, pred_dir = write_prediction(tmp_path, data)
    with pytest.raises(ValueError, match=rf"000000439180.png \(image_id 439180\): prediction PNG has segment ids {dropped['id']} "):
        pq_compute(COCO_JSON, pred_json, COCO_PNG, pred_dir)


def test_segments_info_id_missing_from_png_is_a_clear_error(tmp_path):
    data = coco_prediction()
    data["annotations"][0]["segments_info"].append({"id": 4242, "category_id": 1})
    pred_json, pred_dir = write_prediction(tmp_path, data)
    with pytest.raises(ValueError, match=r"000000142238.png \(image_id 142238\): prediction segments_info lists ids 4242 "):
        pq_compute(COCO_JSON, pred_json, COCO_PNG, pred_dir)


def test_unknown_category_is_a_clear_error(tmp_path):
    data = coco_prediction()
    data["annotations"][0]["segments_info"][0]["category_id"] = 999
    pred_json, pred_dir = write_prediction(tmp_path, data)
    with pytest.raises(ValueError, match=r"000000142238.png \(image_id 142238\) \(prediction\): segment \d+ has category_id 999"):
        pq_compute(COCO_JSON, pred_json, COCO_PNG, pred_dir)


def test_missing_prediction_for_an_image_is_a_clear_error(tmp_path):
    data = coco_prediction()
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 439180]
    pred_json, pred_dir = write_prediction(tmp_path, data)
    with pytest.raises(ValueError, match=r"pred.json: no prediction annotation for image_id 439180"):
        pq_compute(COCO_JSON, pred_json, COCO_PNG, pred_dir)


def test_png_size_mismatch_is_a_clear_error(tmp_path):
    cropped = read_panoptic_png(COCO_PNG / "000000142238.png")[:-1]
    data = coco_prediction()
    kept = set(np.unique(cropped).tolist())
    data["annotations"][0]["segments_info"] = [s for s in data["annotations"][0]["segments_info"] if s["id"] in kept]
    pred_json, pred_dir = write_prediction(tmp_path, data, {"000000142238.png": cropped})
    with pytest.raises(ValueError, match=r"000000142238.png \(image_id 142238\): prediction size 640x426 \(WxH\) differs from ground-truth size 640x427"):
        pq_compute(COCO_JSON, pred_json, COCO_PNG, pred_dir)


def test_non_rgb_png_is_a_clear_error(tmp_path):
    pred_json, pred_dir = write_prediction(tmp_path, coco_prediction())
    Image.open(pred_dir / "000000142238.png").convert("RGBA").save(pred_dir / "000000142238.png")
    with pytest.raises(ValueError, match=r"000000142238.png: panoptic PNG must be RGB"):
        pq_compute(COCO_JSON, pred_json, COCO_PNG, pred_dir)


# ------------------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.evaluate", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_prints_the_table_and_writes_the_documented_json(tmp_path):
    out = tmp_path / "nested" / "results.json"
    done = run_cli(
        "--gt-json", str(COCO_JSON), "--gt-dir", str(COCO_PNG),
        "--pred-json", str(COCO_JSON), "--pred-dir", str(COCO_PNG),
        "--out", str(out), "--per-class", "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    assert "All" in done.stdout and "100.000" in done.stdout and "sky-other-merged" in done.stdout
    results = json.loads(out.read_text())
    assert set(results) == {"All", "Things", "Stuff", "per_class", "matching"}
    assert results["matching"]["images_by"] == "image_id" and results["matching"]["matched_images"] == 2
    for group in ("All", "Things", "Stuff"):
        assert set(results[group]) == {"pq", "sq", "rq", "n"}
        assert all(0.0 <= results[group][k] <= 1.0 for k in ("pq", "sq", "rq"))
    assert results["All"]["n"] == 8
    categories = json.loads(COCO_JSON.read_text())["categories"]
    assert set(results["per_class"]) == {str(c["id"]) for c in categories}
    assert all(set(v) == {"pq", "sq", "rq"} for v in results["per_class"].values())
    assert {k for k, v in results["per_class"].items() if v["pq"] == 1.0} == {"1", "8", "19", "37", "125", "184", "187", "193"}


def test_cli_reports_bad_input_and_explains_flags(tmp_path):
    data = coco_prediction()
    data["annotations"] = data["annotations"][:1]
    pred_json, pred_dir = write_prediction(tmp_path, data)
    done = run_cli("--gt-json", str(COCO_JSON), "--gt-dir", str(COCO_PNG), "--pred-json", str(pred_json))
    assert done.returncode == 1
    assert "error:" in done.stderr and "no prediction annotation for image_id 439180" in done.stderr
    help_text = run_cli("--help").stdout
    for flag in ("--gt-json", "--gt-dir", "--pred-json", "--pred-dir", "--out", "--workers", "--per-class", "--match", "--match-root"):
        assert flag in help_text
