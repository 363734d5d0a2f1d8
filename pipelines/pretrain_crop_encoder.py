"""Pretrain LDP's crop encoder (ldp.crop_encoder) to classify segments, before heads training.

The encoder's convolutions learn to classify the training set's segments from the image around
each and its mask (a temporary linear classifier; rotations and mirrors). The masks are the ground
truth (with large-scale jitter) or, with --mask-source predicted, the masks the trained heads
predict, matched to the ground truth. Writes OUT/heads_init.safetensors, to start heads training from with the convolutions kept
fixed, and OUT/crop_pretrain.json (loss and accuracy history, validation accuracy).

Example:
    python -m pipelines.pretrain_crop_encoder --config configs/possam_small.yaml \\
        --data data/world_train --vocab possam_label/assets/synthetic_world/vocab_base.yaml \\
        --init-heads possam_label/assets/small/possam_small_heads.safetensors --out runs/crop
    python -m pipelines.train --config configs/possam_small.yaml --data data/world_train ... \\
        --set ldp.crop_encoder=true --set train.init_heads=runs/crop/heads_init.safetensors \\
        --set "train.frozen_modules=[ldp.crop_encoder.convs]"
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pipelines._cli import add_set_argument


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.pretrain_crop_encoder", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="model YAML (configs/*.yaml); ldp.crop_encoder is switched on")
    parser.add_argument("--data", required=True, help="COCO-panoptic training folder: panoptic.json, images/, panoptic/")
    parser.add_argument("--out", required=True, help="output folder: heads_init.safetensors, crop_pretrain.json")
    parser.add_argument("--vocab", default=None, help="training vocabulary (coco, ade20k, a file or 'a,b,c'); default: the dataset's categories")
    parser.add_argument("--init-heads", default=None, help="heads checkpoint that fills the other head tensors of heads_init.safetensors (default: fresh initialisation)")
    parser.add_argument("--val-data", default=None, help="COCO-panoptic folder to report ground-truth classification accuracy on at the end")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
    parser.add_argument("--mask-source", choices=["ground_truth", "predicted"], default="ground_truth",
                        help="ground_truth: crops of the ground-truth segments of augmented images; predicted: the model with --init-heads "
                             "runs once over the training images and each predicted mask matched to a ground-truth segment (IoU > 0.5) "
                             "is a crop, as the encoder will see them inside PosSAM (needs --init-heads and the backbone weights)")
    parser.add_argument("--segments", choices=["all", "things"], default="all",
                        help="segments to train on: all, or things only (stuff is told apart by LDP's pooled features; validation reports both) (default all)")
    parser.add_argument("--images-per-step", type=int, default=32, help="images per step with --mask-source ground_truth (each of their segments is one crop); images per inference batch with predicted (default 32)")
    parser.add_argument("--crops-per-step", type=int, default=128, help="crops per step with --mask-source predicted (default 128)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate, cosine decay (default 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data order, augmentation and initialisation (default 0)")
    parser.add_argument("--loader-workers", type=int, default=1, help="processes that read and augment images while the encoder trains; 0 reads in the main process (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_set_argument(parser, "--set train.lsj_min_scale=0.5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from possam_label.config_mapping import parse_assignments
    from possam_label.engine.crop_pretrain import run_crop_encoder_pretraining
    from possam_label.model.weights import WeightsError

    try:
        report = run_crop_encoder_pretraining(
            args.config,
            args.data,
            args.out,
            vocabulary=args.vocab,
            init_heads=args.init_heads,
            val_dir=args.val_data,
            images_per_step=args.images_per_step,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
            loader_workers=args.loader_workers,
            num_threads=args.threads,
            overrides=parse_assignments(args.assignments),
            progress=not args.no_progress,
            mask_source=args.mask_source,
            crops_per_step=args.crops_per_step,
            segments=args.segments,
        )
    except (FileNotFoundError, ValueError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"heads": report["heads"], "last": report["history"][-1], "validation": report.get("validation")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
