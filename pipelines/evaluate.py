"""Panoptic quality of COCO-panoptic predictions (panopticapi rules).

Example::

    python -m pipelines.evaluate --gt-json panoptic_val2017.json --gt-dir panoptic_val2017 \\
        --pred-json out/panoptic.json --pred-dir out/panoptic --out out/pq.json

An autolabel output (image ids hash the image paths, classes are its vocabulary's) against the
ground truth of some of its images: images are matched by file name, classes by name::

    python -m pipelines.evaluate --gt-json data/world/panoptic.json --gt-dir data/world/panoptic \\
        --pred-json out/panoptic.json --pred-dir out/panoptic --match file_name
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from possam_label.eval.pq_files import pq_compute
from possam_label.eval.pq_report import format_pq_table, save_pq_results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.evaluate",
        description=(
            "Compute PQ, SQ and RQ (All / Things / Stuff and per class) of COCO-panoptic predictions "
            "against COCO-panoptic ground truth, with panopticapi's matching rules. Categories and "
            "the things/stuff split come from the ground-truth JSON."
        ),
    )
    parser.add_argument("--gt-json", required=True, type=Path, help="ground-truth panoptic JSON (with categories)")
    parser.add_argument(
        "--gt-dir", type=Path, default=None,
        help="folder of ground-truth PNGs (default: --gt-json path without .json)",
    )
    parser.add_argument(
        "--pred-json", required=True, type=Path,
        help="predicted panoptic JSON; annotations are matched to the ground truth by image_id or file name (--match)",
    )
    parser.add_argument(
        "--pred-dir", type=Path, default=None,
        help="folder of predicted PNGs (default: --pred-json path without .json)",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="write the results JSON here ({All, Things, Stuff: {pq, sq, rq, n}, per_class: {id: {pq, sq, rq}}})",
    )
    parser.add_argument(
        "--match", choices=("auto", "image_id", "file_name"), default="auto",
        help="pair images by image_id, by file name (basename without extension, or the path relative to "
        "--match-root), or auto (default): by id when the two JSONs share any image id, else by file name; "
        "an ambiguous file-name match is refused. Classes are matched by name when the prediction JSON's "
        "categories differ from the ground truth's; a prediction class the ground truth lacks counts as false positives",
    )
    parser.add_argument(
        "--match-root", type=Path, default=None,
        help="match file names as paths relative to this folder (absolute paths are made relative to it); "
        "use it when basenames repeat in different folders",
    )
    parser.add_argument(
        "--workers", type=int, default=0,
        help="worker processes for reading and matching images (0 = evaluate in this process)",
    )
    parser.add_argument("--per-class", action="store_true", help="also print the per-class table")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.workers < 0:
        print("error: --workers must be >= 0", file=sys.stderr)
        return 2
    try:
        results = pq_compute(
            args.gt_json, args.pred_json, args.gt_dir, args.pred_dir,
            num_workers=args.workers, progress=not args.no_progress,
            match=args.match, match_root=args.match_root,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    with open(args.gt_json, encoding="utf-8") as handle:
        categories = json.load(handle)["categories"]
    matching = results["matching"]
    categories = categories + matching["prediction_only_classes"]
    print(
        f"matched {matching['matched_images']} of {matching['gt_images']} ground-truth images by "
        f"{matching['images_by'].replace('_', ' ')} ({matching['unmatched_predictions']} predictions without ground truth); "
        f"classes by {matching['classes_by']}"
        + (f", prediction-only: {', '.join(c['name'] for c in matching['prediction_only_classes'])}" if matching["prediction_only_classes"] else "")
    )
    print(format_pq_table(results, categories, per_class=args.per_class))
    if args.out is not None:
        print(f"wrote {save_pq_results(results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
