"""Train the small CLIP (open_clip, BatchNorm CNN image tower) on synthetic scenes.

Reproduces ``possam_label/assets/small/clip_small.safetensors`` and ``clip_small.json``::

    python -m pipelines.train_small_clip --out runs/clip_small --steps 650 --seed 0

Writes OUT/clip_small.safetensors (fp16, with metadata), OUT/clip_small.json (open_clip model
config), OUT/loss_clip_small.png and OUT/train_log_clip_small.json (loss history and the held-out
zero-shot accuracy of mask-pooled dense features, base / novel, things / stuff).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from possam_label.synthetic.clip_data import ClipSampling
from possam_label.synthetic.small_clip import ClipTrainConfig, train_small_clip


def build_parser() -> argparse.ArgumentParser:
    defaults = ClipTrainConfig()
    sampling = ClipSampling()
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train_small_clip",
        description=(
            "Train the small CLIP on synthetic scenes rendered on the fly, over all classes (base and novel): "
            "InfoNCE between captions (colours, sizes, backgrounds) and object crops, stuff patches and small "
            "whole scenes, a classification term of crops and patches against class prompts, and a dense term "
            "that classifies ground-truth segments from mask-pooled dense features at PosSAM's input scale. Ends with the held-out zero-shot evaluation of that dense path "
            "and writes an fp16 safetensors checkpoint and the open_clip model config."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=sampling.scenes_per_step,
        help="scenes rendered per step; each gives its thing crops, stuff patches, a small whole-scene image "
        "and a dense window (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the scene/caption stream and the initialisation (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate (default: %(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear warmup steps before cosine decay (default: %(default)s)")
    parser.add_argument("--dense-weight", type=float, default=defaults.dense_weight, help="weight of the dense mask-pooling term (default: %(default)s)")
    parser.add_argument("--class-weight", type=float, default=defaults.class_weight, help="weight of the crop classification term (default: %(default)s)")
    parser.add_argument("--thing-weight", type=float, default=defaults.thing_weight, help="weight of thing segments relative to stuff in the dense term (default: %(default)s)")
    parser.add_argument("--text-class-weight", type=float, default=defaults.text_class_weight, help="weight of the text-side class term (class prompts against class means) (default: %(default)s)")
    parser.add_argument("--init", default=None, metavar="SAFETENSORS", help="start from these small-CLIP weights instead of a random initialisation")
    parser.add_argument("--init-visual-only", action="store_true", help="with --init: take only the image tower from it, the text tower starts random")
    parser.add_argument(
        "--init-text-only", action="store_true",
        help="with --init: take only the text tower (and temperature) from it, the image tower starts random (a new image-tower architecture)",
    )
    parser.add_argument(
        "--freeze-text-tower",
        action="store_true",
        help="with --init: train the image tower only (text tower and temperature stay as in --init, so PosSAM's class embeddings do not change)",
    )
    parser.add_argument("--log-every", type=int, default=defaults.log_every, help="steps between loss log lines (default: %(default)s)")
    parser.add_argument(
        "--num-workers", type=int, default=defaults.num_workers, choices=(0, 1),
        help="scene-rendering worker processes; 0 and 1 give the same data stream (default: %(default)s)",
    )
    parser.add_argument("--num-threads", type=int, default=defaults.num_threads, help="torch compute threads (default: %(default)s)")
    parser.add_argument("--eval-scenes", type=int, default=defaults.eval_scenes, help="held-out scenes evaluated at the end (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("steps", "batch_size", "log_every", "num_threads", "eval_scenes"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    config = ClipTrainConfig(
        steps=args.steps,
        seed=args.seed,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        dense_weight=args.dense_weight,
        class_weight=args.class_weight,
        thing_weight=args.thing_weight,
        text_class_weight=args.text_class_weight,
        init_checkpoint=args.init,
        init_visual_only=args.init_visual_only,
        init_text_only=args.init_text_only,
        freeze_text_tower=args.freeze_text_tower,
        log_every=args.log_every,
        num_workers=args.num_workers,
        num_threads=args.num_threads,
        eval_scenes=args.eval_scenes,
        sampling=ClipSampling(scenes_per_step=args.batch_size),
    )
    try:
        result = train_small_clip(args.out, config, progress=not args.no_progress)
    except (NotADirectoryError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"final loss {result.final_loss:.4f} after {args.steps} steps in {result.wall_s:.0f} s")
    print(f"held-out: {result.metrics}")
    print(f"wrote {result.checkpoint}, {result.loss_plot}, {result.log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
