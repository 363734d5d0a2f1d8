"""Picture of box- and point-prompted masks of a small SAM on held-out synthetic scenes.

    python tools/plot_sam_prompts.py --checkpoint possam_label/assets/small/sam_small_prompt.safetensors \
        --out docs/img/sam_small_prompt_examples.png

Each row is one held-out scene (seed 777): the image, the masks of box prompts (boxes drawn), the
best of the three outputs of one positive click (dots drawn), each coloured per segment.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--scenes", type=int, default=4)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from segment_anything import SamPredictor

    from possam_label.synthetic.sam_eval import center_point
    from possam_label.synthetic.sam_prompts import mask_box
    from possam_label.synthetic.small_sam import build_small_sam
    from possam_label.synthetic.world import held_out_scenes

    predictor = SamPredictor(build_small_sam(args.checkpoint))
    colours = plt.get_cmap("tab20")
    fig, axes = plt.subplots(args.scenes, 3, figsize=(9, 3 * args.scenes), dpi=100, squeeze=False)
    for row, (image, id_map, segments) in enumerate(held_out_scenes(args.scenes)):
        predictor.set_image(image)
        box_overlay = image.astype(np.float32) / 255 * 0.4
        point_overlay = box_overlay.copy()
        axes[row, 0].imshow(image)
        for k, seg in enumerate(s for s in segments if (id_map == s["id"]).sum() >= 64):
            gt = id_map == seg["id"]
            colour = np.asarray(colours(k % 20)[:3])
            box = mask_box(gt)
            masks, _, _ = predictor.predict(box=box, multimask_output=False)
            box_overlay[masks[0]] = 0.4 * box_overlay[masks[0]] + 0.6 * colour
            axes[row, 1].add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, color=colour, lw=1))
            point = center_point(gt)
            masks, scores, _ = predictor.predict(point_coords=point[None], point_labels=np.ones(1), multimask_output=True)
            best = masks[int(np.argmax(scores))]
            point_overlay[best] = 0.4 * point_overlay[best] + 0.6 * colour
            axes[row, 2].plot(point[0], point[1], "o", color=colour, markeredgecolor="white", markersize=4)
        axes[row, 1].imshow(box_overlay)
        axes[row, 2].imshow(point_overlay)
    for ax, title in zip(axes[0], ("held-out scene", "box prompts", "one click (best of 3)")):
        ax.set_title(title)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
