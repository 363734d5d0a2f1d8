"""Measure auto-accept's precision estimate on the synthetic world against the ground truth.

Renders synthetic scenes (or reuses them), labels them with the shipped small PosSAM (in process,
``dataset.apply_model``), then, for several random draws of ``--reviewed`` images, simulates a
reviewer who knows the ground truth: a label matching a ground-truth segment (IoU > 0.5, the
panoptic-quality rule) of its class is accepted, one matching a segment of another class is
relabeled to it, any other label is rejected. :func:`estimate_auto_accept` then estimates, per
threshold, the precision of accepting the unreviewed rest, which is compared with the rest's true
precision (the fraction of its labels that are correct). Writes a JSON report.

Example::

    python tools/measure_auto_accept.py --world data/world_aa --num-images 200 --reviewed 50 --draws 5 \
        --json docs/auto_accept_measure.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from possam_label.io.panoptic_png import read_panoptic_png  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="synthetic-world folder (rendered here when missing)")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--world-seed", type=int, default=2525)
    parser.add_argument("--reviewed", type=int, default=50, help="images reviewed per draw")
    parser.add_argument("--draws", type=int, default=5, help="random draws of the reviewed images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=str(REPO / "configs" / "possam_small.yaml"))
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--dataset", default="measure-auto-accept", help="FiftyOne dataset name (recreated)")
    parser.add_argument("--private-db", action="store_true", help="use a private mongod in a temporary folder")
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser.parse_args(argv)


def _ground_truth(world: Path) -> dict[str, tuple[np.ndarray, dict[int, str]]]:
    """{image path: (panoptic id map, {segment id: class name})}."""
    data = json.loads((world / "panoptic.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    out = {}
    for ann in data["annotations"]:
        path = str((world / "images" / images[ann["image_id"]]["file_name"]).resolve())
        id_map = read_panoptic_png(world / "panoptic" / ann["file_name"])
        out[path] = (id_map, {s["id"]: names[s["category_id"]] for s in ann["segments_info"]})
    return out


def _judge(sample: Any, truth: tuple[np.ndarray, dict[int, str]]) -> dict[str, Optional[str]]:
    """{label id: ground-truth class of its IoU > 0.5 match, or None}."""
    from possam_label.fiftyone.convert import detection_mask_placement

    id_map, classes = truth
    height, width = id_map.shape
    areas = {seg: int((id_map == seg).sum()) for seg in classes}
    out = {}
    for det in (sample.possam.detections if sample.possam is not None else []):
        placement = detection_mask_placement(det, height, width)
        out[det.id] = None
        if placement is None:
            continue
        x0, y0, mask = placement
        window = id_map[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        ids, counts = np.unique(window[mask], return_counts=True)
        area = int(mask.sum())
        for seg, inter in zip(ids, counts):
            if seg in classes and inter / (area + areas[seg] - inter) > 0.5:
                out[det.id] = classes[int(seg)]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.private_db:
        from possam_label.fiftyone.testing import use_private_database

        use_private_database()
    import fiftyone as fo

    from possam_label.fiftyone import corrections as C
    from possam_label.fiftyone.auto_accept import estimate_auto_accept
    from possam_label.fiftyone.model import load_possam_model, prepare_review_field
    from possam_label.synthetic.world import generate_dataset

    timings: dict[str, float] = {}
    start = time.perf_counter()
    if not (args.world / "panoptic.json").is_file():
        generate_dataset(args.world, num_images=args.num_images, seed=args.world_seed)
    truth = _ground_truth(args.world)
    paths = sorted(truth)[: args.num_images]
    timings["world_s"] = time.perf_counter() - start

    if fo.dataset_exists(args.dataset):
        fo.delete_dataset(args.dataset)
    base = fo.Dataset(args.dataset)
    base.add_samples([fo.Sample(filepath=p) for p in paths], progress=False)
    start = time.perf_counter()
    model = load_possam_model(config_path=args.config, device="cpu")
    base.apply_model(model, label_field="possam", batch_size=4, progress=False)
    prepare_review_field(base, "possam", model)
    timings["inference_s"] = time.perf_counter() - start
    verdicts = {s.id: _judge(s, truth[s.filepath]) for s in base.iter_samples()}
    correct = {lid: None for v in verdicts.values() for lid in v}
    labels = {d.id: d.label for s in base.iter_samples() for d in (s.possam.detections if s.possam else [])}
    confidences = {d.id: d.confidence for s in base.iter_samples() for d in (s.possam.detections if s.possam else [])}
    for v in verdicts.values():
        for lid, gt in v.items():
            correct[lid] = gt is not None and gt == labels[lid]
    base.persistent = False

    rng = np.random.default_rng(args.seed)
    draws = []
    sample_ids = base.values("id")
    # The floor: P(correct | confidence) fitted on the ground truth of all the images, reviewed and
    # not. Its error against a rest is what that rest's own chance outcomes contribute.
    from sklearn.isotonic import IsotonicRegression

    every = sorted(correct)
    full_fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        [confidences[lid] for lid in every], [float(correct[lid]) for lid in every])
    for draw in range(args.draws):
        ds = base.clone(f"{args.dataset}-draw{draw}")
        reviewed = list(rng.choice(sample_ids, size=min(args.reviewed, len(sample_ids)), replace=False))
        start = time.perf_counter()
        for sid in reviewed:
            accept = [(sid, lid) for lid, gt in verdicts[sid].items() if correct[lid]]
            reject = [(sid, lid) for lid, gt in verdicts[sid].items() if gt is None]
            relabel: dict[str, list] = {}
            for lid, gt in verdicts[sid].items():
                if gt is not None and not correct[lid]:
                    relabel.setdefault(gt, []).append((sid, lid))
            if accept:
                C.accept_labels(ds, accept)
            if reject:
                C.reject_labels(ds, reject)
            for gt, selection in relabel.items():
                C.relabel_segments(ds, selection, gt)
        review_s = time.perf_counter() - start
        start = time.perf_counter()
        estimate = estimate_auto_accept(ds, num_bootstrap=args.bootstrap, seed=args.seed + draw)
        estimate_s = time.perf_counter() - start
        rest = {lid for sid in sample_ids if sid not in set(reviewed) for lid in verdicts[sid]}
        seen = {lid for sid in reviewed for lid in verdicts[sid]}
        rows = []
        for t in THRESHOLDS:
            above = [correct[lid] for lid in rest if confidences[lid] >= t]
            # The plain alternative: the precision the reviewed labels themselves had above t.
            seen_above = [correct[lid] for lid in seen if confidences[lid] >= t]
            at = estimate.at(t)
            true = float(np.mean(above)) if above else None
            empirical = float(np.mean(seen_above)) if seen_above else None
            floor = float(np.mean(full_fit.predict([confidences[lid] for lid in rest if confidences[lid] >= t]))) if above else None
            rows.append({"threshold": t, "num_labels": len(above), "estimated": at.precision, "low": at.low, "high": at.high,
                         "true": true, "error": None if true is None or at.precision is None else at.precision - true,
                         "reviewed_precision": empirical,
                         "reviewed_precision_error": None if true is None or empirical is None else empirical - true,
                         "full_truth_calibration_error": None if true is None else floor - true})
        draws.append({"draw": draw, "num_reviewed_labels": estimate.num_reviewed, "calibrated_classes": estimate.calibrated_classes,
                      "review_s": review_s, "estimate_s": estimate_s, "rows": rows})
        errors = [abs(r["error"]) for r in rows if r["error"] is not None]
        print(f"draw {draw}: {estimate.num_reviewed} reviewed labels, max |error| {100 * max(errors):.1f} points, "
              f"mean {100 * np.mean(errors):.1f}; estimate {estimate_s:.2f} s")
        for r in rows:
            if r["true"] is not None:
                print(f"  >= {r['threshold']:.1f}: {r['num_labels']:5d} labels  estimated {100 * r['estimated']:.1f} % "
                      f"[{100 * r['low']:.1f}, {100 * r['high']:.1f}]  true {100 * r['true']:.1f} %")
        fo.delete_dataset(ds.name)
    all_errors = [abs(r["error"]) for d in draws for r in d["rows"] if r["error"] is not None]
    covered = [r["low"] <= r["true"] <= r["high"] for d in draws for r in d["rows"] if r["true"] is not None]
    plain = [abs(r["reviewed_precision_error"]) for d in draws for r in d["rows"] if r["reviewed_precision_error"] is not None]
    floors = [abs(r["full_truth_calibration_error"]) for d in draws for r in d["rows"] if r["full_truth_calibration_error"] is not None]
    report = {
        "num_images": len(paths), "num_labels": len(correct), "overall_true_precision": float(np.mean(list(correct.values()))),
        "reviewed_images": args.reviewed, "draws": draws, "max_abs_error": max(all_errors), "mean_abs_error": float(np.mean(all_errors)),
        "within_3_points": [sum(e <= 0.03 for e in all_errors), len(all_errors)],
        "draws_all_within_3_points": sum(all(abs(r["error"]) <= 0.03 for r in d["rows"] if r["error"] is not None) for d in draws),
        "reviewed_precision_max_abs_error": max(plain), "reviewed_precision_within_3_points": [sum(e <= 0.03 for e in plain), len(plain)],
        "full_truth_calibration_max_abs_error": max(floors), "full_truth_calibration_within_3_points": [sum(e <= 0.03 for e in floors), len(floors)],
        "interval_coverage": float(np.mean(covered)), "timings": timings, "config": args.config,
    }
    print(f"{len(paths)} images, {len(correct)} labels, true precision overall {100 * report['overall_true_precision']:.1f} %; "
          f"over {args.draws} draws x {len(THRESHOLDS)} thresholds: max |error| {100 * report['max_abs_error']:.1f} points, "
          f"mean {100 * report['mean_abs_error']:.1f}, within 3 points {report['within_3_points']}, every threshold within 3 points in "
          f"{report['draws_all_within_3_points']} draws; 95 % interval covers the truth {100 * report['interval_coverage']:.0f} %; "
          f"the reviewed labels' own precision: within 3 points {report['reviewed_precision_within_3_points']}; "
          f"calibrated on every image's truth: max |error| {100 * report['full_truth_calibration_max_abs_error']:.1f} points")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    fo.delete_dataset(base.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
