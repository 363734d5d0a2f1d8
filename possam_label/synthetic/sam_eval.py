"""How well a small SAM segments from prompts, measured on held-out synthetic scenes.

Everything goes through segment_anything's own ``SamPredictor`` and ``SamAutomaticMaskGenerator``,
so the figures are what a user of those classes gets:

* box prompts: every ground-truth segment of at least ``min_area`` pixels prompted with its
  tight box, ``multimask_output=False``;
* one positive point: a click at the segment's most interior pixel, ``multimask_output=True``,
  the output with the highest predicted IoU kept (as SAM's own demo does);
* the IoU head: Pearson correlation of predicted and true IoU over every output above (the
  three point outputs and the box output of every segment);
* the automatic mask generator at segment_anything's defaults (32 x 32 points, pred_iou_thresh
  0.88, stability_score_thresh 0.95): share of ground-truth thing segments recalled by one of
  its masks at IoU > 0.5.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from segment_anything.modeling import Sam

from .classes import thing_category_ids
from .sam_prompts import mask_box
from .world import HELD_OUT_SEED, SceneRenderer, held_out_scenes


def center_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the pixel of a (H, W) bool mask farthest from its boundary (a well-inside click)."""
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return np.array([x, y], dtype=np.float32)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _mean(values: list[float]) -> Optional[float]:
    return round(float(np.mean(values)), 4) if values else None


@torch.no_grad()
def evaluate_prompts(
    sam: Sam,
    num_scenes: int = 50,
    renderer: Optional[SceneRenderer] = None,
    seed: int = HELD_OUT_SEED,
    min_area: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Box and single-point mIoU (overall, things, stuff) and the IoU head's Pearson correlation.

    Raises:
        ValueError: the scenes hold no segment of ``min_area`` pixels.
    """
    from segment_anything import SamPredictor
    from tqdm import tqdm

    predictor = SamPredictor(sam)
    things_ids = thing_category_ids()
    box: dict[str, list[float]] = {"things": [], "stuff": []}
    point: dict[str, list[float]] = {"things": [], "stuff": []}
    predicted_iou: list[float] = []
    true_iou: list[float] = []
    scenes = held_out_scenes(num_scenes, renderer, seed=seed)
    for image, id_map, segments in tqdm(scenes, total=num_scenes, desc="SAM prompts", disable=not progress):
        predictor.set_image(image)
        for seg in segments:
            gt = id_map == seg["id"]
            if gt.sum() < min_area:
                continue
            kind = "things" if seg["category_id"] in things_ids else "stuff"
            box_masks, box_scores, _ = predictor.predict(box=mask_box(gt), multimask_output=False)
            pt_masks, pt_scores, _ = predictor.predict(point_coords=center_point(gt)[None], point_labels=np.ones(1), multimask_output=True)
            box[kind].append(mask_iou(box_masks[0], gt))
            point[kind].append(mask_iou(pt_masks[int(np.argmax(pt_scores))], gt))
            for mask, score in zip([*pt_masks, box_masks[0]], [*pt_scores, box_scores[0]]):
                predicted_iou.append(float(score))
                true_iou.append(mask_iou(mask, gt))
    if not predicted_iou:
        raise ValueError(f"evaluate_prompts: the {num_scenes} held-out scenes have no segment of {min_area} pixels to prompt")
    pearson = float(np.corrcoef(predicted_iou, true_iou)[0, 1]) if np.std(predicted_iou) > 0 else 0.0
    return {
        "num_scenes": num_scenes,
        "seed": seed,
        "num_segments": len(box["things"]) + len(box["stuff"]),
        "num_thing_segments": len(box["things"]),
        "box_miou": _mean(box["things"] + box["stuff"]),
        "point_miou": _mean(point["things"] + point["stuff"]),
        "box_miou_things": _mean(box["things"]),
        "point_miou_things": _mean(point["things"]),
        "box_miou_stuff": _mean(box["stuff"]),
        "point_miou_stuff": _mean(point["stuff"]),
        "iou_head_pearson": round(pearson, 4),
    }


@torch.no_grad()
def automatic_mask_recall(
    sam: Sam,
    num_scenes: int = 20,
    renderer: Optional[SceneRenderer] = None,
    seed: int = HELD_OUT_SEED,
    iou_threshold: float = 0.5,
    generator_options: Optional[dict[str, Any]] = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Share of ground-truth thing segments that ``SamAutomaticMaskGenerator`` recalls.

    Args:
        generator_options: keyword arguments of ``SamAutomaticMaskGenerator`` (default: none,
            i.e. segment_anything's default thresholds).
    """
    from segment_anything import SamAutomaticMaskGenerator
    from tqdm import tqdm

    generator = SamAutomaticMaskGenerator(sam, **(generator_options or {}))
    things_ids = thing_category_ids()
    recalled = total = num_masks = 0
    scenes = held_out_scenes(num_scenes, renderer, seed=seed)
    for image, id_map, segments in tqdm(scenes, total=num_scenes, desc="SAM automatic masks", disable=not progress):
        masks = [record["segmentation"] for record in generator.generate(image)]
        num_masks += len(masks)
        for seg in segments:
            if seg["category_id"] not in things_ids:
                continue
            gt = id_map == seg["id"]
            total += 1
            recalled += any(mask_iou(mask, gt) > iou_threshold for mask in masks)
    return {
        "amg_num_scenes": num_scenes,
        "amg_thing_segments": total,
        "amg_thing_recall": round(recalled / total, 4) if total else None,
        "amg_masks_per_image": round(num_masks / max(num_scenes, 1), 2),
    }


def evaluate_small_sam(
    sam: Sam,
    num_scenes: int = 50,
    renderer: Optional[SceneRenderer] = None,
    min_area: int = 64,
    progress: bool = False,
    seed: int = HELD_OUT_SEED,
    amg_scenes: int = 0,
) -> dict[str, Any]:
    """:func:`evaluate_prompts` on ``num_scenes`` scenes plus, when ``amg_scenes`` > 0,
    :func:`automatic_mask_recall` on the first ``amg_scenes`` of them."""
    metrics = evaluate_prompts(sam, num_scenes, renderer, seed=seed, min_area=min_area, progress=progress)
    if amg_scenes > 0:
        metrics.update(automatic_mask_recall(sam, amg_scenes, renderer, seed=seed, progress=progress))
    return metrics
