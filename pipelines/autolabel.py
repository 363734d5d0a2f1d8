"""Auto-label a folder, listing, glob or FiftyOne dataset with PosSAM on Ray.

Examples::

    python -m pipelines.autolabel --dataset /data/images --out out/ --vocab coco
    python -m pipelines.autolabel --dataset paths.txt --out out/ --vocab "cat,dog,grass [stuff]" --resume
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m pipelines.autolabel --dataset /shared/images --out /shared/out

Outputs (``docs/outputs.md``): ``segments/*.parquet``, ``images/*.parquet``, ``panoptic/*.png``,
``panoptic.json`` (COCO panoptic) and ``run.json``.
Exit status: 0 when every input is accounted for (error rows included), 1 when the run stopped
early (rerun with --resume), 2 for a refused run (bad arguments, non-empty --out, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from pipelines._cli import add_set_argument
from possam_label.engine.autolabel import OPTION_GROUPS, AutolabelError, AutolabelOptions, AutolabelSummary, run_autolabel
from possam_label.engine.autolabel.options import DEFAULT_IMAGE_TIMEOUT_S, DEFAULT_MAX_WORKER_RETRIES, WRITES
from possam_label.io.images import DEFAULT_MAX_PIXELS
from possam_label.io.output_store import OutputDirError
from possam_label.predictors import PREDICTOR_REGISTRY


def _add_input_output_arguments(group: Any) -> None:
    """The inputs and outputs arguments (AutolabelOptions group 'inputs and outputs')."""
    group.add_argument(
        "--dataset", required=True, metavar="SOURCE",
        help="a directory of images (recursive; jpg, jpeg, png, webp, bmp, tif, tiff), an image file, a text "
        "file with one image path per line (relative paths are relative to the file), a glob pattern "
        "(quote it), or fiftyone://NAME (the filepaths of a FiftyOne dataset). Inputs are only read.",
    )
    group.add_argument("--out", required=True, metavar="DIR", help="output directory; nothing is written outside it")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="finish a previous run in --out: keep committed images, do the rest")
    mode.add_argument("--overwrite", action="store_true", help="delete the previous outputs in --out and start again")
    group.add_argument(
        "--retry-errors", action="store_true",
        help="with --resume: label again the images whose committed row has status error (e.g. after a transient failure)",
    )


def _add_model_arguments(group: Any) -> None:
    """The model arguments (AutolabelOptions group 'model')."""
    group.add_argument(
        "--vocab", default=None, metavar="SPEC",
        help="class vocabulary: coco, ade20k, a vocabulary file (.yaml or .txt), or a comma list such as "
        "'cat,dog,grass [stuff]' (default: the config's vocabulary)",
    )
    group.add_argument("--config", default=None, help="PosSAM YAML config (default: the shipped default config)")
    add_set_argument(group, "--set baseline.points_per_side=16 --set mase.mode=fc_clip")
    group.add_argument(
        "--model", choices=tuple(PREDICTOR_REGISTRY), default="possam",
        help="possam: PosSAM (one pass of each encoder per image, trained heads); sam-clip: the training-free "
        "two-stage baseline (SAM automatic mask generator, then CLIP on every mask, settings in the config's "
        "baseline section), for labeling without PosSAM head weights",
    )
    group.add_argument(
        "--checkpoint", default=None,
        help="PosSAM head weights (.safetensors) overriding the config's; with --model sam-clip, a full SAM checkpoint",
    )


def _add_label_arguments(group: Any) -> None:
    """The labels arguments (AutolabelOptions group 'labels')."""
    group.add_argument("--min-score", type=float, default=0.0, help="drop segments whose MASE score is below this (their pixels become void)")
    group.add_argument(
        "--max-side", type=int, default=None,
        help="downscale images in the decode stage so the longest side is at most this many pixels; outputs are "
        "always at the original size (default: the model's input size; 0: never downscale)",
    )
    group.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse images with more pixels (decompression bombs)")


def _add_cluster_arguments(group: Any) -> None:
    """The cluster arguments (AutolabelOptions group 'cluster')."""
    group.add_argument("--batch-size", type=int, default=4, help="images per model call and per decode/encode task")
    group.add_argument(
        "--workers", type=int, default=None,
        help="model actors (default: one per GPU of the cluster, or 1 on a CPU-only cluster)",
    )
    group.add_argument(
        "--gpus-per-worker", type=float, default=None,
        help="GPUs per model actor, fractions allowed (default: 1 when the cluster has GPUs, else 0 = run on CPU)",
    )
    group.add_argument(
        "--worker-resources", type=json.loads, default=None, metavar="JSON",
        help="custom Ray resources each model actor needs, e.g. '{\"labeler\": 1}' to run the model only on nodes "
        "started with ray start --resources='{\"labeler\": 1}'",
    )
    group.add_argument(
        "--ray-address", default=None,
        help="address of an existing Ray cluster ('auto', 'HOST:PORT' or 'ray://HOST:10001'); default: RAY_ADDRESS "
        "if set (as under 'ray job submit'), else start a local Ray",
    )
    group.add_argument(
        "--wait-for-workers", type=float, default=None, metavar="SECONDS",
        help="wait this long for all model workers to start before labeling, and fail clearly if the cluster cannot "
        "host them (0: start with the first ready worker; default: 0 when the cluster has the resources for all "
        "workers now, so images are decoded while the model loads, else 900)",
    )
    group.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all); ignored with a cluster")
    group.add_argument("--torch-threads", type=int, default=None, help="CPU inference threads per actor (default: (CPUs - 1) / workers)")
    group.add_argument(
        "--ship-code", action="store_true",
        help="send the possam_label package to the Ray workers (for clusters whose nodes do not have it installed)",
    )
    group.add_argument(
        "--max-worker-retries", type=int, default=DEFAULT_MAX_WORKER_RETRIES, metavar="N",
        help="retry a model batch at most N times when the model process dies on it (OS kill, native crash; each retry "
        "starts a new model process, which reloads the model); then its images are labeled again in halves down to "
        "single images, and an image that still kills the model process is recorded as error worker_lost (the run "
        "always ends; default: %(default)s)",
    )
    group.add_argument(
        "--model-timeout-s", type=float, default=DEFAULT_IMAGE_TIMEOUT_S, metavar="S",
        help="seconds per image a model batch may take; a model process that has not answered by then counts as hung: it "
        "is killed and the batch retried and bisected as after a crash (default: %(default)s)",
    )


def _add_commit_arguments(group: Any) -> None:
    """The commits arguments (AutolabelOptions group 'commits')."""
    group.add_argument("--rows-per-part", type=int, default=64, help="images per committed Parquet part")
    group.add_argument("--commit-interval", type=float, default=30.0, help="commit a part at least every this many seconds")
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    group.add_argument("--no-fsync", action="store_true", help="skip fsync on commit (faster; safe against process kills, not power loss)")
    group.add_argument(
        "--writes", choices=WRITES, default="auto",
        help="who writes the PNGs and segment rows: workers (the encode tasks stage them in --out and the driver only "
        "renames them into place and writes the images part; --out must be on a filesystem every Ray node sees at the "
        "same path; a part is then one encode batch of --rows-per-part images and --commit-interval does not apply), "
        "driver (every result travels to the driver, which writes everything; any cluster), auto (workers on a local "
        "Ray started by this run, driver with --ray-address or RAY_ADDRESS)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.autolabel",
        description=(
            "Label every image of a dataset with PosSAM (open-vocabulary panoptic segmentation) on a "
            "local Ray or a Ray cluster. Writes per-segment and per-image Parquet tables, COCO-panoptic "
            "PNGs + JSON and run.json into --out. Killing the job at any point loses at most the "
            "uncommitted part; rerun with --resume to finish."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # One argument group per AutolabelOptions group (OPTION_GROUPS), same titles, same order.
    groups = {title: parser.add_argument_group(title) for title in OPTION_GROUPS}
    _add_input_output_arguments(groups["inputs and outputs"])
    _add_model_arguments(groups["model"])
    _add_label_arguments(groups["labels"])
    _add_cluster_arguments(groups["cluster"])
    _add_commit_arguments(groups["commits"])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level")
    return parser


def format_summary(summary: AutolabelSummary) -> str:
    """The end-of-run summary printed by the CLI."""
    lines = [
        f"run {summary.run_id} -> {summary.out_dir}",
        f"  inputs        {summary.inputs}" + (f" ({summary.duplicates_dropped} duplicate paths dropped)" if summary.duplicates_dropped else ""),
        f"  already done  {summary.already_done}",
        f"  processed     {summary.processed}: {summary.ok} ok, {summary.errors} errors, {summary.segments} segments",
        f"  throughput    {summary.images_per_second:.2f} images/s with model loading, {summary.steady_images_per_second:.2f} "
        f"images/s after it ({summary.startup_seconds:.1f} s until a model worker was ready, {summary.seconds:.1f} s in total)",
    ]
    if summary.error_reasons:
        lines.append("  error reasons " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.error_reasons.items())))
    lines.append("  status        " + ("complete" if summary.complete else "INCOMPLETE: rerun with --resume"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1), ("--rows-per-part", args.rows_per_part, 1), ("--workers", args.workers, 1),
        ("--max-worker-retries", args.max_worker_retries, 0), ("--model-timeout-s", args.model_timeout_s, 1e-3),
    ):
        if value is not None and value < low:
            print(f"error: {flag} must be >= {low}", file=sys.stderr)
            return 2
    if args.worker_resources is not None and not (
        isinstance(args.worker_resources, dict) and all(isinstance(v, (int, float)) and v >= 0 for v in args.worker_resources.values())
    ):
        print("error: --worker-resources must be a JSON object of non-negative numbers", file=sys.stderr)
        return 2
    if args.retry_errors and not args.resume:
        print("error: --retry-errors goes with --resume", file=sys.stderr)
        return 2
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        print("error: --gpus-per-worker must be >= 0", file=sys.stderr)
        return 2
    from possam_label.config_mapping import parse_assignments

    overrides = parse_assignments(args.assignments)
    options = AutolabelOptions(
        dataset=args.dataset,
        out_dir=args.out,
        config=args.config,
        checkpoint=args.checkpoint,
        model=args.model,
        config_overrides=overrides or None,
        vocabulary=args.vocab,
        batch_size=args.batch_size,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        torch_threads=args.torch_threads,
        worker_resources=args.worker_resources,
        ray_address=args.ray_address,
        num_cpus=args.num_cpus,
        wait_for_workers_s=args.wait_for_workers,
        mode="resume" if args.resume else "overwrite" if args.overwrite else "new",
        retry_errors=args.retry_errors,
        min_score=args.min_score,
        max_side=args.max_side,
        max_pixels=args.max_pixels,
        rows_per_part=args.rows_per_part,
        commit_interval_s=args.commit_interval,
        ship_code=args.ship_code,
        max_worker_retries=args.max_worker_retries,
        model_timeout_s=args.model_timeout_s,
        show_progress=not args.no_progress,
        durable=not args.no_fsync,
        writes=args.writes,
    )
    try:
        summary = run_autolabel(options)
    except (OutputDirError, AutolabelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0 if summary.complete else 1


if __name__ == "__main__":
    sys.exit(main())
