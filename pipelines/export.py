"""Export auto-labels as training sets: COCO panoptic, COCO instances (RLE) and semantic PNG masks.

Examples::

    # straight from an autolabel output directory (no FiftyOne needed)
    python -m pipelines.export --from-dir out/ --out train_set/ --min-score 0.6

    # from a reviewed FiftyOne dataset, corrections applied, reviewed samples only
    python -m pipelines.export --dataset my_dataset --out train_set/ --reviewed-only \\
        --formats panoptic,semantic --exclude-classes "sky,wall"

Writes ``panoptic.json`` + ``panoptic/``, ``instances.json``, ``semantic/`` + ``semantic.json`` and
``export.json`` into ``--out``; nothing is written outside it. Exit status 0 on success, 2 when the
input or the options are refused (the message names the file and the reason).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from possam_label.fiftyone.autolabel_output import AutolabelOutputError
from possam_label.fiftyone.export import EXPORT_FORMATS, ExportOptions, export_from_dataset, export_from_output_dir


def _class_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.export",
        description=(
            "Export PosSAM auto-labels as training sets. The source is an autolabel output directory "
            "(--from-dir; reads Parquet only) or a FiftyOne dataset after review (--dataset; relabels, "
            "deletions and rejections applied). Unreviewed labels scored below --min-score are dropped, "
            "labels a reviewer accepted or relabeled are always kept; dropped segments become void."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-dir", metavar="DIR", help="an autolabel output directory (python -m pipelines.autolabel --out DIR)")
    source.add_argument("--dataset", metavar="NAME", help="a FiftyOne dataset name (fiftyone://NAME accepted); needs the fiftyone package")
    parser.add_argument("--label-field", default="possam", help="with --dataset: the Detections field holding the labels")
    parser.add_argument("--view", default=None, metavar="SAVED_VIEW", help="with --dataset: export only this saved view of the dataset")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created; must be empty unless --overwrite)")
    parser.add_argument(
        "--formats", default=",".join(EXPORT_FORMATS),
        help=f"comma list of {', '.join(EXPORT_FORMATS)}: COCO panoptic PNG+JSON, COCO instances with RLE masks, semantic category-id PNGs",
    )
    parser.add_argument(
        "--min-score", "--min-confidence", dest="min_score", type=float, default=None,
        help="drop unreviewed labels scored (confidence) below this, 0..1 (--min-confidence: deprecated alias, same meaning)",
    )
    parser.add_argument("--reviewed-only", action="store_true", help="with --dataset: only samples marked reviewed")
    parser.add_argument("--include-classes", type=_class_list, default=None, metavar="A,B", help="keep only these classes (comma list of class names)")
    parser.add_argument("--exclude-classes", type=_class_list, default=None, metavar="A,B", help="leave out these classes (comma list of class names)")
    parser.add_argument("--instances-include-stuff", action="store_true", help="also write stuff segments to instances.json (default: things only)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export in --out (other files there are left alone)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = ExportOptions(
        formats=[f.strip() for f in args.formats.split(",") if f.strip()],
        min_score=args.min_score,
        reviewed_only=args.reviewed_only,
        include_classes=args.include_classes,
        exclude_classes=args.exclude_classes,
        instances_include_stuff=args.instances_include_stuff,
        overwrite=args.overwrite,
    )
    try:
        if args.from_dir:
            if args.view:
                raise ValueError("--view needs --dataset")
            summary = export_from_output_dir(args.from_dir, args.out, options, progress=not args.no_progress)
        else:
            try:
                from possam_label.fiftyone.dataset import open_dataset
            except ImportError as err:
                raise ValueError(f"--dataset needs FiftyOne (pip install 'possam-label[fiftyone]'): {err}") from None
            dataset = open_dataset(args.dataset)
            samples = dataset.load_saved_view(args.view) if args.view else dataset
            summary = export_from_dataset(samples, args.out, args.label_field, options, progress=not args.no_progress)
    except (AutolabelOutputError, ValueError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
