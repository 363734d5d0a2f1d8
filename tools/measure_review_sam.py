"""Measure the review's SAM tools on held-out synthetic scenes (figures in docs/review.md).

Usage::

    python tools/measure_review_sam.py [--seed 4242] [--scenes 10] [--config configs/possam_small.yaml]

For every ground-truth segment of each scene (``possam_label.synthetic.world.render_scene``):

* refine: the mask damaged two ways (eroded by 3 px; the middle third of its box cut out), then
  SAM prompted by the damaged mask's box: IoU with the ground truth before, with SAM's mask alone,
  with the mask prompt added, and with :func:`possam_label.prompting.refine_mask` (what
  ``refine_labels`` stores);
* new box: SAM prompted by the segment's tight box, classified by
  :meth:`~possam_label.prompting.PromptedSegmenter.classify_masks` (what ``segment_new_boxes``
  stores): mask IoU and class accuracy, things and stuff apart.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from possam_label.prompting import mask_iou, prompted_segmenter, refine_mask
from possam_label.synthetic.world import render_scene, scene_rng


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def _mask_prompt(segmenter, mask: np.ndarray) -> np.ndarray:
    """A binary mask as SAM's low-resolution mask-prompt logits (1, m, m) in its input frame."""
    sam = segmenter.sam
    size = sam.image_encoder.img_size
    h, w = segmenter.sam_predictor.transform.get_preprocess_shape(mask.shape[0], mask.shape[1], size)
    framed = torch.zeros(1, 1, size, size)
    framed[0, 0, :h, :w] = torch.nn.functional.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(h, w), mode="bilinear")[0, 0]
    low = torch.nn.functional.interpolate(framed, size=sam.prompt_encoder.mask_input_size, mode="bilinear")[0]
    return ((low - 0.5) * 20.0).numpy()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--config", default=None, help="PosSAM config (default: the shipped small one)")
    args = parser.parse_args(argv)
    segmenter = prompted_segmenter(args.config)
    predictor, vocabulary = segmenter.sam_predictor, segmenter.predictor.vocabulary
    figures: dict[str, list[float]] = defaultdict(list)
    for index in range(args.scenes):
        image, id_map, segments = render_scene(scene_rng(args.seed, index), size=256)
        truths = [(id_map == s["id"], s["category_id"]) for s in segments]
        predictor.set_image(image)
        for gt, _ in truths:
            x0, _, x1, _ = _box(gt).astype(int)
            cut = gt.copy()
            cut[:, x0 + (x1 - x0) // 3 : x0 + 2 * (x1 - x0) // 3] = False
            for damage, damaged in (("eroded", ndimage.binary_erosion(gt, iterations=3)), ("middle cut", cut)):
                if damaged.sum() < 10:
                    continue
                sam_mask = predictor.predict(box=_box(damaged), multimask_output=False)[0][0]
                prompted = predictor.predict(box=_box(damaged), mask_input=_mask_prompt(segmenter, damaged), multimask_output=False)[0][0]
                figures[f"refine {damage}: before"].append(mask_iou(damaged, gt))
                figures[f"refine {damage}: SAM box alone"].append(mask_iou(sam_mask, gt))
                figures[f"refine {damage}: SAM box + mask prompt"].append(mask_iou(prompted, gt))
                figures[f"refine {damage}: refine_mask"].append(mask_iou(refine_mask(damaged, sam_mask), gt))
        predictor.reset_image()
        masks, _ = segmenter.segment_boxes(image, [_box(gt) for gt, _ in truths])
        for (gt, category_id), mask, found in zip(truths, masks, segmenter.classify_masks(image, masks, vocabulary)):
            kind = "thing" if vocabulary.isthing[vocabulary.category_ids.index(category_id)] else "stuff"
            right = float(vocabulary.category_ids[found.index] == category_id)
            for group in ("all", kind):
                figures[f"new box ({group}): mask IoU"].append(mask_iou(mask, gt))
                figures[f"new box ({group}): class correct"].append(right)
    report = {name: {"mean": round(float(np.mean(v)), 3), "n": len(v)} for name, v in sorted(figures.items())}
    print(json.dumps({"seed": args.seed, "scenes": args.scenes, "figures": report}, indent=1))


if __name__ == "__main__":
    main()
