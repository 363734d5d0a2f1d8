"""tools/simulate_review.py: a reviewer that corrects with the plugin's own library calls.

The predictions are an autolabel output written with the producer's store from the COCO sample's
masks; the ground truth is the same sample with deliberate differences on one image (a class the run
does not know, two objects merged into one, one object split in three), so the reviewer has to
relabel to a new class, delete, reject, accept and leave crowd regions alone. Its action log is then
replayed through the review plugin's operators on a second copy of the dataset: both corrections
logs must be identical.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")

from possam_label.fiftyone.testing import write_coco_autolabel_output  # noqa: E402
from possam_label.io.panoptic_png import read_panoptic_png, write_panoptic_png  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COCO = REPO / "tests" / "data" / "coco_panoptic_sample"
PLUGIN = "@possam/review"
NEW_CLASS = "unicorn"
SPORTS_BALL, MERGED_INTO, MERGED, SPLIT = 16757838, 4325578, 4917453, 3476419  # segment ids of 000000142238.png


def _tool():
    spec = importlib.util.spec_from_file_location("simulate_review", REPO / "tools" / "simulate_review.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["simulate_review"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ decisions alone


def test_each_decision_rule_on_a_crafted_image():
    tool = _tool()
    gt = np.zeros((10, 20), dtype=np.int32)
    gt[:, :5] = 1  # circle, 50 px
    gt[:, 5:12] = 2  # square, 70 px
    gt[:, 12:17] = 3  # sky, 50 px
    gt[0, 17:] = 4  # a crowd of circles; the rest of columns 17-19 is void
    segments = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}, {"id": 3, "category_id": 13}, {"id": 4, "category_id": 1, "iscrowd": 1}]
    categories = {1: {"name": "circle"}, 2: {"name": "square"}, 13: {"name": "sky"}}

    def det(label, cols, rows=slice(None), segment_id=0):
        mask = np.zeros(gt.shape, dtype=bool)
        mask[rows, cols] = True
        detection = fo.Detection(label=label, confidence=0.5)
        detection["segment_id"] = segment_id
        return detection, mask

    masks = [
        det("circle", slice(0, 5), segment_id=1),  # exactly the circle
        det("star", slice(5, 11), segment_id=2),  # 60 of the square's 70 px, the wrong class
        det("square", slice(11, 12), segment_id=3),  # the square's last column: a fragment
        det("sky", slice(12, 14), segment_id=4),  # 20 of the sky's 50 px: IoU 0.4, the sky unmatched
        det("circle", slice(17, 20), segment_id=5),  # all on void and crowd
    ]
    decisions = tool.decide(masks, gt, segments, categories)
    assert [d.action for d in decisions] == ["accept", "relabel", "delete", "reject", "no_action"]
    assert decisions[1].new_label == "square" and decisions[1].iou == pytest.approx(60 / 70)
    assert decisions[3].iou == pytest.approx(0.4) and decisions[4].gt_label is None


# ------------------------------------------------------------------------- against the database


@pytest.fixture(scope="module")
def db():
    from possam_label.fiftyone.testing import use_private_database

    try:
        server = use_private_database()
    except (FileNotFoundError, RuntimeError) as err:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no runnable mongod for FiftyOne: {err}")
    fo.config.plugins_dir = str(REPO / "plugins")
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(REPO / "plugins")
    return server


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("simulate_review")
    out = root / "autolabel"
    write_coco_autolabel_output(out, COCO, seed=3)
    gt = root / "gt"
    shutil.copytree(COCO / "panoptic", gt / "panoptic")
    data = json.loads((COCO / "panoptic_examples.json").read_text())
    data["categories"] = json.loads((COCO / "panoptic_coco_categories.json").read_text()) + [{"id": 999, "name": NEW_CLASS, "isthing": 1, "color": [1, 2, 3]}]
    annotation = next(a for a in data["annotations"] if a["file_name"] == "000000142238.png")
    png = gt / "panoptic" / annotation["file_name"]
    ids = read_panoptic_png(png)
    ids[ids == MERGED] = MERGED_INTO
    ys, xs = np.nonzero(ids == SPLIT)
    order = np.argsort(xs, kind="stable")
    for part, new_id in zip(np.array_split(order, 3)[1:], (9000001, 9000002)):  # three strips of equal size
        ids[ys[part], xs[part]] = new_id
    write_panoptic_png(png, ids)
    segments = [s for s in annotation["segments_info"] if s["id"] != MERGED]
    segments += [{"id": 9000001, "category_id": 1, "iscrowd": 0}, {"id": 9000002, "category_id": 1, "iscrowd": 0}]
    for s in segments:
        if s["id"] == SPORTS_BALL:
            s["category_id"] = 999
    annotation["segments_info"] = segments
    (gt / "panoptic.json").write_text(json.dumps(data))
    return {"out": out, "gt": gt}


def _fresh(name: str) -> str:
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    return name


def _normalized_log(dataset) -> dict[str, list[dict]]:
    """{file name: corrections log} with label ids replaced by segment ids and times left out
    (label ids are per dataset; times per run)."""
    out = {}
    for sample in dataset.select_fields(["possam_corrections"]).iter_samples():
        entries = []
        for entry in sample["possam_corrections"] or []:
            entry = {k: v for k, v in entry.items() if k not in ("at", "label_id")}
            entries.append(entry)
        out[Path(sample.filepath).name] = entries
    return out


def _labels(dataset) -> dict[tuple[str, int], tuple]:
    out = {}
    for sample in dataset.iter_samples():
        for field in ("possam", "possam_deleted"):
            for det in (sample[field].detections if sample[field] is not None else []):
                out[(Path(sample.filepath).name, det["segment_id"])] = (field, det.label, det["review_status"] if det.has_field("review_status") else None,
                                                                       det.get_mask().tobytes(), tuple(det.bounding_box))
    return out


@pytest.mark.fiftyone
def test_simulated_review_matches_the_plugin_exactly(db, files, tmp_path):
    import fiftyone.operators as foo

    tool = _tool()
    name = _fresh("simulate_review_tool")
    log = tmp_path / "actions.jsonl"
    summary_path = tmp_path / "summary.json"
    assert tool.main(["--output", str(files["out"]), "--ground-truth", str(files["gt"]), "--dataset", name, "--images", "5",
                      "--log", str(log), "--summary", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["images_reviewed"] == 2 and summary["new_classes"] == [NEW_CLASS]
    assert summary["actions"] == {"accept": 44, "delete": 1, "no_action": 3, "reject": 1, "relabel": 1}
    assert summary["num_actions"] == 44 + 1 + 1 + 1 + 2
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    decisions = {(e["filepath"].rsplit("/", 1)[-1], e["action"]) for e in entries if e["kind"] == "decision" and e["action"] not in ("accept", "no_action")}
    assert decisions == {("000000142238.jpg", "relabel"), ("000000142238.jpg", "delete"), ("000000142238.jpg", "reject")}
    reviewed = fo.load_dataset(name)
    assert reviewed.count_values("possam_reviewed") == {True: 2}

    # The same actions through the review plugin's operators, on a second copy.
    replay = _fresh("simulate_review_plugin")
    fo.Dataset(replay, persistent=True)
    foo.execute_operator(f"{PLUGIN}/load_autolabel_output", ctx={"dataset": replay, "params": {"output_dir": str(files["out"])}})
    copy = fo.load_dataset(replay)
    ids = {(s.filepath, d["segment_id"]): (s.id, d.id) for s in copy.iter_samples() for d in s["possam"].detections}
    operators = {"relabel": "relabel_segments", "reject": "reject_labels", "delete": "delete_segments", "accept": "accept_labels"}
    for entry in (e for e in entries if e["kind"] == "call"):
        if entry["call"] == "mark_reviewed":
            sample_id = next(i for (path, _), (i, _) in ids.items() if path == entry["filepath"])
            foo.execute_operator(f"{PLUGIN}/mark_reviewed", ctx={"dataset": replay, "current_sample": sample_id, "params": {"scope": "current"}})
            continue
        selected = [{"sample_id": ids[(entry["filepath"], s)][0], "label_id": ids[(entry["filepath"], s)][1], "field": "possam"} for s in entry["segment_ids"]]
        params = {"new_label": entry["new_label"]} if entry["call"] == "relabel" else {}
        foo.execute_operator(f"{PLUGIN}/{operators[entry['call']]}", ctx={"dataset": replay, "selected_labels": selected, "params": params})

    tool_log, plugin_log = _normalized_log(reviewed), _normalized_log(copy)
    assert tool_log == plugin_log
    assert sum(len(v) for v in tool_log.values()) == 44 + 1 + 1 + 1 + 2  # one entry per label decided, one per mark
    assert _labels(reviewed) == _labels(copy)
    # Never ground truth in the dataset: every mask is one the model predicted (loaded as is).
    from possam_label.fiftyone.load import load_autolabel_output

    load_autolabel_output(files["out"], _fresh("simulate_review_original"), progress=False)
    original = fo.load_dataset("simulate_review_original")
    masks = lambda labels: {k: (v[3], v[4]) for k, v in labels.items()}  # noqa: E731
    assert masks(_labels(reviewed)) == masks(_labels(original))
