"""A reviewer that plays by the rules, for measuring the review loop on labelled data (synthetic world).

It loads an autolabel output into FiftyOne with the library loader, picks the K images a person
would look at first (lowest mean label confidence first; images already marked reviewed are
skipped), and corrects each one with the library calls the review plugin makes (relabel, delete,
reject, accept, mark reviewed). The ground truth only *decides*; it is never written into the
dataset: every label that ends up in a training set is one of the model's masks.

Decisions, per predicted segment of an image (PQ's matching rule: IoU > 0.5, the prediction's
pixels on ground-truth void left out of the union, crowd segments never matched):

* matches a ground-truth segment of the same class: **accept**;
* matches one of another class: **relabel** to the ground-truth class (a class the run's
  vocabulary lacks becomes a new class, as when a person types it in the plugin);
* matches none and lies mostly (more than half) on ground-truth void or crowd: no action (a person
  cannot tell either);
* matches none while the ground-truth segment it overlaps most is matched by another prediction:
  **delete** (a duplicate or a fragment of it);
* matches none otherwise: **reject** (a wrong mask; its pixels become void).

Ground-truth objects no prediction matches stay missing: the plugin has no call that draws masks.
Then the image is **marked reviewed**.

Outputs: the action log (JSON lines): one ``{"kind": "decision", ...}`` line per segment decided
(image, label id, segment id, class, confidence, IoU, ground-truth class, action) and one
``{"kind": "call", ...}`` line per library call in the order made (call, sample, label ids, segment
ids, new class), which replays the review exactly (e.g. through the plugin's operators); and a
summary JSON (``--summary``, also printed) with the counts.

Usage::

    python tools/simulate_review.py --output runs/autolabel_1000 --ground-truth data/world_1000 \\
        --dataset flywheel-1000 --images 300 --log runs/review_300.jsonl --summary runs/review_300.json

then train on what was reviewed::

    python -m pipelines.train --config configs/possam_small.yaml --data fiftyone://flywheel-1000 \\
        --reviewed-only --schedule finetune --out runs/ft_300
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

logger = logging.getLogger("simulate_review")

ACCEPT, RELABEL, REJECT, DELETE, NO_ACTION = "accept", "relabel", "reject", "delete", "no_action"


@dataclass
class Decision:
    """What the simulated reviewer decided for one predicted segment."""

    action: str
    label_id: str
    segment_id: Optional[int]
    label: str
    confidence: Optional[float]
    iou: float
    gt_label: Optional[str]
    new_label: Optional[str] = None


@dataclass
class ReviewSummary:
    dataset: str
    label_field: str
    images_reviewed: int = 0
    labels_seen: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    new_classes: list[str] = field(default_factory=list)
    images_without_ground_truth: int = 0

    @property
    def num_actions(self) -> int:
        """Reviewer actions: every decided label plus one "mark reviewed" per image."""
        return sum(v for k, v in self.actions.items() if k != NO_ACTION) + self.images_reviewed


def load_ground_truth(gt_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[int, dict[str, Any]]]:
    """``({image key: annotation (with the image's file name)}, {category id: category})`` of a
    COCO-panoptic folder; keys are basenames without extension (see possam_label.eval.matching)."""
    from possam_label.eval.matching import image_key

    data = json.loads((gt_dir / "panoptic.json").read_text(encoding="utf-8"))
    names = {image["id"]: image["file_name"] for image in data["images"]}
    by_key: dict[str, dict[str, Any]] = {}
    for annotation in data["annotations"]:
        key = image_key(names.get(annotation["image_id"], annotation["file_name"]), None)
        if key in by_key:
            raise ValueError(f"{gt_dir / 'panoptic.json'}: two images are named {key!r}: file names cannot identify them")
        by_key[key] = annotation
    return by_key, {int(c["id"]): c for c in data["categories"]}


def decide(masks: Sequence[tuple[Any, np.ndarray]], gt_map: np.ndarray, gt_segments: Sequence[dict[str, Any]], gt_categories: dict[int, dict[str, Any]]) -> list[Decision]:
    """The decisions for one image (see the module doc).

    Args:
        masks: ``(fo.Detection, (H, W) bool mask)`` of each current label of the image.
        gt_map: (H, W) ground-truth segment ids, 0 = void.
        gt_segments: the ground truth's ``segments_info``.
    """
    info = {int(s["id"]): s for s in gt_segments}
    crowd = np.isin(gt_map, [i for i, s in info.items() if s.get("iscrowd")])
    void = (gt_map == 0) | crowd
    gt_area = {i: int((gt_map == i).sum()) for i in info}
    rows = []
    for det, mask in masks:
        area = int(mask.sum())
        on_void = int((mask & void).sum())
        ids, counts = np.unique(gt_map[mask & ~void], return_counts=True)
        best_id, inter, union = None, 0, 1
        if len(ids):  # the ground-truth segment it overlaps most (the only one it can match)
            k = int(np.argmax(counts))
            best_id, inter = int(ids[k]), int(counts[k])
            union = area + gt_area[best_id] - inter - on_void
        rows.append((det, area, on_void, best_id, inter, union))
    matched = {gt_id for _, _, _, gt_id, inter, union in rows if gt_id is not None and 2 * inter > union}
    decisions = []
    for det, area, on_void, gt_id, inter, union in rows:
        gt_label = str(gt_categories[int(info[gt_id]["category_id"])]["name"]) if gt_id is not None else None
        base = dict(label_id=det.id, segment_id=det["segment_id"] if det.has_field("segment_id") else None,
                    label=det.label, confidence=det.confidence, iou=round(inter / union, 6) if union else 0.0, gt_label=gt_label)
        if gt_id is not None and 2 * inter > union:  # IoU > 0.5, exactly as PQ counts it
            if gt_label.casefold() == str(det.label).casefold():
                decisions.append(Decision(ACCEPT, **base))
            else:
                decisions.append(Decision(RELABEL, new_label=gt_label, **base))
        elif 2 * on_void > area:
            decisions.append(Decision(NO_ACTION, **base))
        elif gt_id in matched:
            decisions.append(Decision(DELETE, **base))
        else:
            decisions.append(Decision(REJECT, **base))
    return decisions


def review_queue(dataset: Any, label_field: str, limit: int) -> list[tuple[str, str, float]]:
    """``(sample id, filepath, mean confidence)`` of up to ``limit`` unreviewed labelled samples,
    lowest mean label confidence first (ties by file path)."""
    from fiftyone import ViewField as F

    from possam_label.fiftyone.dataset import ReviewFields

    fields = ReviewFields(label_field)
    view = dataset.exists(label_field).match(F(fields.reviewed) != True)  # noqa: E712
    ids, paths, confidences = view.values(["id", "filepath", f"{label_field}.detections.confidence"])
    scored = [(float(np.mean(c)) if c else 0.0, p, i) for i, p, c in zip(ids, paths, confidences)]
    scored.sort()
    return [(i, p, s) for s, p, i in scored[:limit]]


def simulate_review(
    dataset: Any,
    gt_dir: Path,
    num_images: int,
    label_field: str = "possam",
    log_path: Optional[Path] = None,
) -> ReviewSummary:
    """Review the ``num_images`` lowest-confidence images of ``dataset`` with the ground truth in ``gt_dir``."""
    from possam_label.eval.matching import image_key
    from possam_label.fiftyone import corrections as C
    from possam_label.fiftyone.convert import detection_full_mask
    from possam_label.io.panoptic_png import read_panoptic_png

    gt_by_key, gt_categories = load_ground_truth(gt_dir)
    summary = ReviewSummary(dataset.name, label_field)
    actions: Counter = Counter()
    new_classes: list[str] = []
    log = open(log_path, "a", encoding="utf-8") if log_path is not None else None

    def write(entry: dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps(entry) + "\n")

    def call(kind: str, sample_id: str, filepath: str, decisions: list[Decision], new_label: Optional[str] = None) -> None:
        selection = [{"sample_id": sample_id, "label_id": d.label_id, "field": label_field} for d in decisions]
        if kind == RELABEL:
            result = C.relabel_segments(dataset, selection, new_label, label_field)
            if result.new_class:
                new_classes.append(result.new_class)
        elif kind == REJECT:
            C.reject_labels(dataset, selection, label_field)
        elif kind == DELETE:
            C.delete_segments(dataset, selection, label_field)
        else:
            C.accept_labels(dataset, selection, label_field)
        write({"kind": "call", "call": kind, "sample_id": sample_id, "filepath": filepath, "label_ids": [d.label_id for d in decisions],
               "segment_ids": [d.segment_id for d in decisions], "new_label": new_label})

    try:
        for sample_id, filepath, mean_confidence in review_queue(dataset, label_field, num_images):
            key = image_key(filepath, None)
            annotation = gt_by_key.get(key)
            if annotation is None:
                summary.images_without_ground_truth += 1
                logger.warning("%s: no ground truth named %r; skipped", filepath, key)
                continue
            sample = dataset[sample_id]
            gt_map = read_panoptic_png(gt_dir / "panoptic" / annotation["file_name"])
            height, width = gt_map.shape
            detections = sample[label_field].detections if sample[label_field] is not None else []
            decisions = decide([(d, detection_full_mask(d, height, width)) for d in detections], gt_map, annotation["segments_info"], gt_categories)
            for d in decisions:
                write({"kind": "decision", "sample_id": sample_id, "filepath": filepath, "image_confidence": mean_confidence, **asdict(d)})
                actions[d.action] += 1
            summary.labels_seen += len(decisions)
            for new_label in dict.fromkeys(d.new_label for d in decisions if d.action == RELABEL):
                call(RELABEL, sample_id, filepath, [d for d in decisions if d.action == RELABEL and d.new_label == new_label], new_label)
            for kind in (REJECT, DELETE, ACCEPT):
                chosen = [d for d in decisions if d.action == kind]
                if chosen:
                    call(kind, sample_id, filepath, chosen)
            C.mark_reviewed(dataset, [sample_id], label_field)
            write({"kind": "call", "call": "mark_reviewed", "sample_id": sample_id, "filepath": filepath})
            summary.images_reviewed += 1
    finally:
        if log is not None:
            log.close()
    summary.actions = dict(sorted(actions.items()))
    summary.new_classes = new_classes
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tools/simulate_review.py", description=__doc__.split("\n\n")[0],
                                     epilog="See docs/review.md, 'Simulated review'.")
    parser.add_argument("--output", type=Path, default=None, help="autolabel output to load first (library loader); omit to review a dataset already loaded")
    parser.add_argument("--ground-truth", type=Path, required=True, help="COCO-panoptic folder of the same images (panoptic.json, panoptic/); images matched by file name")
    parser.add_argument("--dataset", required=True, help="FiftyOne dataset name (created by the load when missing)")
    parser.add_argument("--images", type=int, required=True, help="K: how many images to review, lowest mean confidence first")
    parser.add_argument("--label-field", default="possam", help="the possam-label field (default possam)")
    parser.add_argument("--log", type=Path, required=True, help="action log, JSON lines (appended)")
    parser.add_argument("--summary", type=Path, default=None, help="also write the summary JSON here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if args.images < 0:
        print("error: --images must be >= 0", file=sys.stderr)
        return 2
    if not (args.ground_truth / "panoptic.json").is_file():
        print(f"error: {args.ground_truth}: no panoptic.json (a COCO-panoptic ground truth is needed)", file=sys.stderr)
        return 2
    from possam_label.fiftyone.dataset import DatasetNotFoundError, open_dataset
    from possam_label.fiftyone.load import load_autolabel_output

    try:
        if args.output is not None:
            load_autolabel_output(args.output, args.dataset, label_field=args.label_field, progress=False)
        dataset = open_dataset(args.dataset)
        args.log.parent.mkdir(parents=True, exist_ok=True)
        summary = simulate_review(dataset, args.ground_truth, args.images, args.label_field, args.log)
    except (DatasetNotFoundError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report = {**asdict(summary), "num_actions": summary.num_actions}
    text = json.dumps(report, indent=2)
    print(text)
    if args.summary is not None:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
