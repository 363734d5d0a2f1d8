"""Train the small SAM (segment_anything ``Sam``) from scratch on synthetic scenes rendered on the fly.

Reproduces ``possam_label/assets/small/sam_small.safetensors``::

    python -m pipelines.train_small_sam --out runs/sam_small --steps 600 --batch-size 8 --seed 0

Writes OUT/sam_small.safetensors (fp16, with metadata), OUT/loss_sam_small.png and
OUT/train_log_sam_small.json (loss history and held-out box / single-point mIoU).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from possam_label.synthetic.sam_prompts import PromptSampling
from possam_label.synthetic.sam_warmup import GeometryWarmup
from possam_label.synthetic.small_sam import SamTrainConfig, train_small_sam


def build_parser() -> argparse.ArgumentParser:
    defaults = SamTrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train_small_sam",
        description=(
            "Train the small promptable SAM (ViT 192-d x 4 blocks at 256x256, segment_anything modules) on "
            "synthetic scenes rendered on the fly: jittered-box and point prompts on ground-truth segments, "
            "focal+dice mask loss (min over the multimask outputs for single clicks) and IoU-prediction MSE. "
            "Ends with an evaluation on held-out scenes and writes an fp16 safetensors checkpoint."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="scenes per step (default: %(default)s)")
    parser.add_argument(
        "--prompts-per-image", type=int, default=PromptSampling().prompts_per_image,
        help="GT segments prompted per scene, half with boxes, half with points (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the scene stream and the initialisation (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate (default: %(default)s)")
    parser.add_argument("--decoder-lr", type=float, default=defaults.decoder_lr, help="peak learning rate of the prompt encoder and mask decoder (default: %(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear LR warmup steps before cosine decay (default: %(default)s)")
    parser.add_argument(
        "--decoder-warmup-max-steps", type=int, default=GeometryWarmup().max_steps,
        help="phase 1: at most this many decoder-only steps on the geometry task (click -> disc, box -> filled box), "
        "stopping early once its mIoU reaches %.1f; 0 skips the phase (default: %%(default)s)" % GeometryWarmup().target_miou,
    )
    parser.add_argument("--log-every", type=int, default=defaults.log_every, help="steps between loss log lines (default: %(default)s)")
    parser.add_argument(
        "--num-workers", type=int, default=defaults.num_workers, choices=(0, 1),
        help="scene-rendering worker processes; 0 and 1 give the same scene stream (default: %(default)s)",
    )
    parser.add_argument("--num-threads", type=int, default=defaults.num_threads, help="torch compute threads (default: %(default)s)")
    parser.add_argument("--eval-scenes", type=int, default=defaults.eval_scenes, help="held-out scenes evaluated at the end (default: %(default)s)")
    parser.add_argument("--eval-amg-scenes", type=int, default=defaults.eval_amg_scenes,
                        help="held-out scenes also run through SamAutomaticMaskGenerator at the end (default: %(default)s)")
    parser.add_argument("--save-every", type=int, default=defaults.save_every,
                        help="write OUT/sam_small_latest.safetensors every N steps, 0: only at the end (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.decoder_warmup_max_steps < 0:
        print("error: --decoder-warmup-max-steps must be >= 0", file=sys.stderr)
        return 2
    for name in ("steps", "batch_size", "prompts_per_image", "log_every", "num_threads", "eval_scenes"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    config = SamTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        decoder_lr=args.decoder_lr,
        warmup_steps=args.warmup_steps,
        warmup=GeometryWarmup(max_steps=args.decoder_warmup_max_steps),
        log_every=args.log_every,
        num_workers=args.num_workers,
        num_threads=args.num_threads,
        eval_scenes=args.eval_scenes,
        eval_amg_scenes=args.eval_amg_scenes,
        save_every=args.save_every,
        sampling=PromptSampling(prompts_per_image=args.prompts_per_image),
    )
    try:
        result = train_small_sam(args.out, config, progress=not args.no_progress)
    except (NotADirectoryError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"final loss {result.final_loss:.4f} after {args.steps} steps (plus the decoder warm-up) in {result.wall_s:.0f} s")
    print(f"held-out: {result.metrics}")
    print(f"wrote {result.checkpoint}, {result.loss_plot}, {result.log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
