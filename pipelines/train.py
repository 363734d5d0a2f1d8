"""Train PosSAM heads (frozen SAM and CLIP) with Ray Train, on ground truth or on the product's own labels.

--data takes a COCO-panoptic folder (panoptic.json, images/, panoptic/), an autolabel output
(pseudo-labels; --min-score voids lower-scored segments), an export of the review plugin, or
fiftyone://DATASET[/VIEW] (the labels as reviewed: corrections applied, rejected and deleted
segments void, unreviewed labels below --min-score void; new classes extend the vocabulary).

Examples:
    python -m pipelines.train --config configs/possam_small.yaml --data DATA_DIR --out runs/small
    python -m pipelines.train --config configs/possam_small.yaml --data fiftyone://my-review \\
        --reviewed-only --min-score 0.72 --schedule finetune --val-data data/world_val --out runs/ft

Rerunning the same command after a crash resumes from the last checkpoint in --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pipelines._cli import add_set_argument


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="model + recipe YAML (configs/*.yaml); backbone weights come from it")
    parser.add_argument("--data", required=True, help="COCO-panoptic folder (panoptic.json, images/, panoptic/), autolabel output, review export, or fiftyone://DATASET[/VIEW]")
    parser.add_argument("--min-score", type=float, default=None, help="segments scored below this become void (ignored, not background): autolabel outputs, and unreviewed labels of fiftyone:// data")
    parser.add_argument("--reviewed-only", action="store_true", help="fiftyone:// data: only samples marked reviewed")
    parser.add_argument("--label-field", default="possam", help="fiftyone:// data: the possam-label field (default possam)")
    parser.add_argument("--schedule", choices=("config", "finetune"), default="config", help="config: the config's train recipe; finetune: from the config's heads (or train.init_heads), 40 epochs clamped to 100-2000 iterations, lr x0.2, one step at 80%% (explicit --max-iters/--set win)")
    parser.add_argument("--val-data", default=None, help="validation data (any --data form): PQ every --val-every iterations, best heads kept as OUT/best.safetensors + OUT/best_metrics.json")
    parser.add_argument("--val-every", type=int, default=None, help="iterations between validations (default: train.checkpoint_every)")
    parser.add_argument("--val-limit", type=int, default=None, help="validate on the first N images only")
    parser.add_argument("--out", required=True, help="output folder: checkpoints/, metrics.jsonl, heads.safetensors")
    parser.add_argument("--vocab", default=None, help="training vocabulary (coco, ade20k, a file or 'a,b,c'); default: the dataset's categories")
    parser.add_argument("--workers", type=int, default=1, help="data-parallel Ray Train workers (default 1)")
    parser.add_argument("--gpus", action="store_true", help="give every worker one GPU (AMP bf16 on)")
    parser.add_argument("--cpus-per-worker", type=int, default=2, help="CPUs per worker, also its torch threads on CPU (default 2)")
    parser.add_argument("--ray-address", default=None, help="existing Ray cluster address (default: start a local Ray)")
    parser.add_argument("--max-failures", type=int, default=0, help="worker failures to retry, resuming from the last checkpoint")
    parser.add_argument("--max-iters", type=int, default=None, help="override train.max_iters")
    parser.add_argument("--batch-size", type=int, default=None, help="override train.batch_size (global, split over workers)")
    parser.add_argument("--cache-features", action="store_true", help="encode the training set once with the frozen backbones and train on cached features (no augmentation; sets train.cache_features)")
    add_set_argument(parser, "--set train.lr=1e-3 --set train.lr_steps=[800,950]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    for name in ("val_every", "val_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    from possam_label.config_mapping import merge, parse_assignments
    from possam_label.engine.train import run_training

    overrides: dict = merge({"train": {}}, parse_assignments(args.assignments))
    if args.max_iters is not None:
        overrides["train"]["max_iters"] = args.max_iters
    if args.cache_features:
        overrides["train"]["cache_features"] = True
    if args.batch_size is not None:
        overrides["train"]["batch_size"] = args.batch_size
    try:
        result = run_training(
            args.config,
            args.data,
            args.out,
            vocabulary=args.vocab,
            num_workers=args.workers,
            use_gpu=args.gpus,
            cpus_per_worker=args.cpus_per_worker,
            ray_address=args.ray_address,
            max_failures=args.max_failures,
            overrides=overrides,
            min_score=args.min_score,
            label_field=args.label_field,
            reviewed_only=args.reviewed_only,
            val_data=args.val_data,
            val_every=args.val_every,
            val_limit=args.val_limit,
            schedule=args.schedule,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
