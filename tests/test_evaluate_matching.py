"""Scoring an autolabel output against the ground truth of its images: matched by file name.

The shipped small model labels a few synthetic scenes through the real autolabel pipeline (its
image ids hash the paths, so they share none with the ground truth). ``pipelines.evaluate``
matching by file name must give exactly the PQ of the same files renamed to the ground truth's ids
and category ids, which is what panopticapi itself would be given (the reference computation
follows panopticapi's rules, cross-checked in tests/test_eval_pq.py).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from possam_label.eval import pq_compute
from possam_label.eval.matching import image_key
from possam_label.synthetic import generate_dataset

pytestmark = pytest.mark.slow  # one real autolabel run of the small model

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "configs" / "possam_small.yaml"
NUM_SCENES = 5


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> dict[str, Path]:
    """Ground truth of NUM_SCENES synthetic scenes and the small model's autolabel output of them.

    Session-scoped: under xdist the Ray group's tests of several modules interleave on one worker,
    and a module-scoped fixture was torn down and built again (tests here only read the run)."""
    from possam_label.engine.autolabel import AutolabelOptions, run_autolabel

    root = tmp_path_factory.mktemp("evaluate_matching")
    world = generate_dataset(root / "world", num_images=NUM_SCENES, seed=31)
    out = root / "autolabel"
    run_autolabel(AutolabelOptions(dataset=str(world / "images"), out_dir=str(out), config=str(SMALL), batch_size=NUM_SCENES,
                                   num_cpus=2, show_progress=False, durable=False))
    return {"world": world, "out": out}


def _renamed(run: dict[str, Path], tmp_path: Path, pred: dict, gt: dict) -> tuple[Path, Path]:
    """The prediction files renamed to the ground truth's image ids, PNG names and category ids
    (by class name; a class the ground truth lacks is added to the returned ground truth's list)."""
    gt_by_key = {image_key(im["file_name"], None): im["id"] for im in gt["images"]}
    gt_png = {a["image_id"]: a["file_name"] for a in gt["annotations"]}
    gt_ids = {c["name"]: c["id"] for c in gt["categories"]}
    categories = copy.deepcopy(gt["categories"])
    category_of = {}
    for c in pred["categories"]:
        if c["name"] not in gt_ids:
            gt_ids[c["name"]] = max(gt_ids.values()) + 1
            categories.append({"id": gt_ids[c["name"]], "name": c["name"], "isthing": c["isthing"]})
        category_of[c["id"]] = gt_ids[c["name"]]
    names = {im["id"]: im["file_name"] for im in pred["images"]}
    folder = tmp_path / "renamed"
    folder.mkdir()
    annotations = []
    for a in pred["annotations"]:
        image_id = gt_by_key.get(image_key(names[a["image_id"]], None))
        if image_id is None:
            continue
        shutil.copy(run["out"] / "panoptic" / a["file_name"], folder / gt_png[image_id])
        segments = [{**s, "category_id": category_of[s["category_id"]]} for s in a["segments_info"]]
        annotations.append({"image_id": image_id, "file_name": gt_png[image_id], "segments_info": segments})
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps({"annotations": annotations}))
    reference_gt = tmp_path / "gt_with_all_classes.json"
    reference_gt.write_text(json.dumps({**gt, "categories": categories}))
    return renamed, reference_gt


def test_file_name_matching_equals_pq_on_renamed_files(run, tmp_path):
    world, out = run["world"], run["out"]
    gt = json.loads((world / "panoptic.json").read_text())
    pred = json.loads((out / "panoptic.json").read_text())
    assert not {a["image_id"] for a in gt["annotations"]} & {a["image_id"] for a in pred["annotations"]}
    assert sum(len(a["segments_info"]) for a in pred["annotations"]) > 10  # a real labeling
    # The ids differ: matching by id stops where pipelines.evaluate used to stop.
    with pytest.raises(ValueError, match=r"no prediction annotation for image_id 0 \(ground-truth"):
        pq_compute(world / "panoptic.json", out / "panoptic.json", match="image_id")

    results = pq_compute(world / "panoptic.json", out / "panoptic.json")  # auto: no shared id -> file names
    assert results["matching"]["images_by"] == "file_name" and results["matching"]["matched_images"] == NUM_SCENES
    renamed, reference_gt = _renamed(run, tmp_path, pred, gt)
    reference = pq_compute(reference_gt, renamed, world / "panoptic", tmp_path / "renamed", match="image_id")
    assert reference["matching"]["classes_by"] == "id"
    strip = lambda r: {k: v for k, v in r.items() if k != "matching"}  # noqa: E731
    assert strip(results) == strip(reference)
    assert 0.2 < results["All"]["pq"] < 1.0  # the small model's labels: good, not perfect
    # Relative to a root, the same match.
    rooted = pq_compute(world / "panoptic.json", out / "panoptic.json", match="file_name", match_root=world / "images")
    assert strip(rooted) == strip(results) and rooted["matching"]["root"] == str(world / "images")


def test_classes_matched_by_name_and_prediction_only_classes_are_false_positives(run, tmp_path):
    world, out = run["world"], run["out"]
    gt = json.loads((world / "panoptic.json").read_text())
    pred = json.loads((out / "panoptic.json").read_text())
    # The prediction numbers its classes differently and calls one of them by a name the GT lacks.
    used = sorted({s["category_id"] for a in pred["annotations"] for s in a["segments_info"]})
    renamed_class = next(c for c in pred["categories"] if c["id"] == used[0])
    shifted = copy.deepcopy(pred)
    for c in shifted["categories"]:
        c["id"] += 100
        if c["name"] == renamed_class["name"]:
            c["name"] = "unicorn"
    for a in shifted["annotations"]:
        for s in a["segments_info"]:
            s["category_id"] += 100
    pred_json = tmp_path / "shifted.json"
    pred_json.write_text(json.dumps(shifted))
    results = pq_compute(world / "panoptic.json", pred_json, None, out / "panoptic")
    matching = results["matching"]
    assert matching["classes_by"] == "name"
    assert [c["name"] for c in matching["prediction_only_classes"]] == ["unicorn"]
    unicorn_id = matching["prediction_only_classes"][0]["id"]
    assert unicorn_id not in {c["id"] for c in gt["categories"]}
    # Equal to panopticapi on renamed files whose category list includes the extra class.
    renamed, reference_gt = _renamed(run, tmp_path, shifted, gt)
    reference = pq_compute(reference_gt, renamed, world / "panoptic", tmp_path / "renamed", match="image_id")
    assert {k: v for k, v in results.items() if k != "matching"} == {k: v for k, v in reference.items() if k != "matching"}
    assert results["per_class"][unicorn_id] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_partial_ground_truth_and_ambiguous_names(run, tmp_path):
    world, out = run["world"], run["out"]
    gt = json.loads((world / "panoptic.json").read_text())
    subset = {**gt, "annotations": gt["annotations"][:3], "images": gt["images"][:3]}
    subset_json = tmp_path / "subset.json"
    subset_json.write_text(json.dumps(subset))
    results = pq_compute(subset_json, out / "panoptic.json", world / "panoptic", out / "panoptic")
    assert results["matching"]["matched_images"] == 3 and results["matching"]["unmatched_predictions"] == NUM_SCENES - 3

    # Two predicted images with the same base name in different folders: refused, unless a root tells them apart.
    pred = json.loads((out / "panoptic.json").read_text())
    clone = copy.deepcopy(pred["annotations"][0])
    clone["image_id"] = 12345
    elsewhere = tmp_path / "elsewhere" / Path(pred["images"][0]["file_name"]).name
    pred["annotations"].append(clone)
    pred["images"].append({**pred["images"][0], "id": 12345, "file_name": str(elsewhere)})
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps(pred))
    with pytest.raises(ValueError, match=r"ambiguous match by file name, several predictions for .*pass a match root"):
        pq_compute(world / "panoptic.json", twice, None, out / "panoptic")
    rooted = pq_compute(world / "panoptic.json", twice, None, out / "panoptic", match_root=world / "images")
    assert rooted["matching"]["matched_images"] == NUM_SCENES

    missing = {**pred, "annotations": pred["annotations"][1:NUM_SCENES], "images": pred["images"][1:NUM_SCENES]}
    (tmp_path / "missing.json").write_text(json.dumps(missing))
    with pytest.raises(ValueError, match=rf"1 of {NUM_SCENES} ground-truth images have no prediction with the same file name .*; {NUM_SCENES - 1} matched"):
        pq_compute(world / "panoptic.json", tmp_path / "missing.json", None, out / "panoptic", match="file_name")


def test_cli_says_how_many_images_matched(run, tmp_path):
    world, out = run["world"], run["out"]
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.evaluate", "--gt-json", str(world / "panoptic.json"), "--pred-json", str(out / "panoptic.json"),
         "--match", "file_name", "--out", str(tmp_path / "pq.json"), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"matched {NUM_SCENES} of {NUM_SCENES} ground-truth images by file name (0 predictions without ground truth); classes by id" in done.stdout
    saved = json.loads((tmp_path / "pq.json").read_text())
    assert saved["matching"]["images_by"] == "file_name"
    expected = pq_compute(world / "panoptic.json", out / "panoptic.json")
    assert saved["All"] == expected["All"]
