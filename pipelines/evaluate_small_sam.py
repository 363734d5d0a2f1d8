"""Measure a small SAM as a promptable segmenter on held-out synthetic scenes.

Box-prompt and single-point mIoU (things / stuff), the IoU head's Pearson correlation, and the
share of ground-truth things that segment_anything's automatic mask generator recalls at its
default thresholds (possam_label.synthetic.sam_eval). Example (the shipped small SAM):

    python -m pipelines.evaluate_small_sam --checkpoint possam_label/assets/small/sam_small.safetensors \\
        --scenes 100 --amg-scenes 30 --json docs/eval_sam_small.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.evaluate_small_sam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="small SAM weights (.safetensors)")
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes prompted with boxes and points (default: %(default)s)")
    parser.add_argument("--amg-scenes", type=int, default=30, help="of them, scenes run through the automatic mask generator; 0 skips it (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="held-out dataset seed (default: the world's held-out seed, 777)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.scenes < 1 or args.amg_scenes < 0:
        print("error: --scenes must be >= 1 and --amg-scenes >= 0", file=sys.stderr)
        return 2

    import torch

    from possam_label.model.weights import WeightsError
    from possam_label.synthetic.sam_eval import evaluate_small_sam
    from possam_label.synthetic.small_sam import build_small_sam
    from possam_label.synthetic.world import HELD_OUT_SEED

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        sam = build_small_sam(args.checkpoint)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    seed = HELD_OUT_SEED if args.seed is None else args.seed
    metrics = evaluate_small_sam(sam, num_scenes=args.scenes, seed=seed, amg_scenes=args.amg_scenes, progress=True)
    metrics["checkpoint"] = str(args.checkpoint)
    print(json.dumps(metrics, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
