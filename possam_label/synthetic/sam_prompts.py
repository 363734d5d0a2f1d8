"""Training prompts of the small SAM: jittered boxes and points on ground-truth segments of
synthetic scenes, and the endless scene stream that draws them (see :mod:`.small_sam`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from .world import SceneRenderer, default_scene_renderer

# The SAM training stream is seeded with [seed, worker, SAM_TRAIN_STREAM_TAG] (see world.HELD_OUT_SEED).
SAM_TRAIN_STREAM_TAG = 0x5A


@dataclass
class PromptGroup:
    """Prompts of one decoder call on one image (same structure, so they batch).

    Attributes:
        boxes: (N, 4) float32 XYXY in input pixels, or None.
        point_coords: (N, P, 2) float32 (x, y) in input pixels, or None.
        point_labels: (N, P) float32, 1 positive / 0 negative, or None.
        targets: (N,) int64 indices into the image's target masks.
        ambiguous: True for a single positive point without negatives (trains the multimask outputs).
    """

    boxes: Optional[np.ndarray]
    point_coords: Optional[np.ndarray]
    point_labels: Optional[np.ndarray]
    targets: np.ndarray
    ambiguous: bool


@dataclass
class PromptedImage:
    """One training scene with its prompts.

    Attributes:
        image: (H, W, 3) uint8.
        masks: (M, H, W) bool target masks (class-agnostic GT segments).
        groups: decoder calls on this image.
        coverage: (S, g, g) float32, share of each embedding cell covered by each of the scene's S
            segments (void excluded), for the segment-discrimination loss.
    """

    image: np.ndarray
    masks: np.ndarray
    groups: list[PromptGroup]
    coverage: np.ndarray


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box of a (H, W) bool mask (x1, y1 are the last covered pixel + 1)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float32)


def jitter_box(rng: np.random.Generator, box: np.ndarray, size: int, rel_std: float = 0.1, max_px: float = 20.0) -> np.ndarray:
    """SAM-style box noise: per-coordinate Gaussian, std ``rel_std`` x side, clipped at ``max_px``."""
    w, h = box[2] - box[0], box[3] - box[1]
    noise = rng.normal(0.0, 1.0, 4) * rel_std * np.array([w, h, w, h])
    noise = np.clip(noise, -max_px, max_px)
    out = box + noise.astype(np.float32)
    out = np.clip(out, 0, size)
    # Keep a valid box even under heavy noise on small objects.
    out[2] = max(out[2], out[0] + 1)
    out[3] = max(out[3], out[1] + 1)
    return out


def sample_points(rng: np.random.Generator, region: np.ndarray, count: int) -> np.ndarray:
    """``count`` (x, y) pixel coordinates drawn uniformly from the True pixels of ``region`` (H, W)."""
    ys, xs = np.nonzero(region)
    pick = rng.integers(0, len(xs), size=count)
    return np.stack([xs[pick], ys[pick]], axis=1).astype(np.float32)


def negative_region(mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Pixels outside ``mask`` near it (in the box grown 1.5x); anywhere outside if that is empty."""
    h, w = mask.shape
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = 0.75 * (box[2] - box[0]) + 4, 0.75 * (box[3] - box[1]) + 4
    near = np.zeros_like(mask)
    near[max(0, int(cy - hh)) : min(h, int(cy + hh) + 1), max(0, int(cx - hw)) : min(w, int(cx + hw) + 1)] = True
    region = near & ~mask
    return region if region.any() else ~mask


@dataclass
class PromptSampling:
    """How prompts are drawn for training.

    Attributes:
        prompts_per_image: GT segments prompted per scene.
        box_fraction: share of them prompted with a box (the rest with points).
        min_area: segments smaller than this (pixels) are not prompted.
        point_count_probs: probabilities of 1, 2, 3 positive points.
        negative_prob: probability that a point prompt also has one negative point.
        box_rel_std, box_max_px: box jitter.
        embedding_side: side of the image embedding (segment coverage is computed on it).
    """

    prompts_per_image: int = 6
    box_fraction: float = 0.5
    min_area: int = 24
    point_count_probs: tuple[float, float, float] = (0.5, 0.25, 0.25)
    negative_prob: float = 0.3
    box_rel_std: float = 0.1
    box_max_px: float = 20.0
    embedding_side: int = 16


def prompt_scene(
    rng: np.random.Generator,
    image: np.ndarray,
    id_map: np.ndarray,
    segments: Sequence[dict[str, Any]],
    sampling: PromptSampling,
) -> Optional[PromptedImage]:
    """Draw the training prompts of one rendered scene (None if it has no usable segment)."""
    size = id_map.shape[0]
    all_masks = [id_map == seg["id"] for seg in segments]
    masks = [m for m in all_masks if m.sum() >= sampling.min_area]
    if not masks:
        return None
    cell = size // sampling.embedding_side
    coverage = np.stack(all_masks).reshape(len(all_masks), sampling.embedding_side, cell, sampling.embedding_side, cell)
    coverage = coverage.mean(axis=(2, 4), dtype=np.float32)
    k = sampling.prompts_per_image
    chosen = rng.choice(len(masks), size=k, replace=len(masks) < k)
    targets = np.stack([masks[i] for i in chosen])
    n_box = int(round(k * sampling.box_fraction))
    box_idx = np.arange(n_box)
    point_idx = np.arange(n_box, k)
    groups: list[PromptGroup] = []
    if n_box:
        boxes = np.stack(
            [jitter_box(rng, mask_box(targets[i]), size, sampling.box_rel_std, sampling.box_max_px) for i in box_idx]
        )
        groups.append(PromptGroup(boxes=boxes, point_coords=None, point_labels=None, targets=box_idx, ambiguous=False))
    if len(point_idx):
        # One structure (positives, negatives) for the whole call, so the prompts batch without
        # extra padding tokens (SAM's own prompt encoder adds exactly one pad point).
        n_pos = int(rng.choice(3, p=np.asarray(sampling.point_count_probs)) + 1)
        n_neg = int(rng.random() < sampling.negative_prob)
        if any(targets[i].all() for i in point_idx):
            n_neg = 0  # a segment covering the whole image leaves nowhere to click "not this"
        coords, labels = [], []
        for i in point_idx:
            pos = sample_points(rng, targets[i], n_pos)
            if n_neg:
                neg = sample_points(rng, negative_region(targets[i], mask_box(targets[i])), n_neg)
                pos = np.concatenate([pos, neg])
            coords.append(pos)
            labels.append(np.array([1.0] * n_pos + [0.0] * n_neg, dtype=np.float32))
        groups.append(
            PromptGroup(
                boxes=None,
                point_coords=np.stack(coords),
                point_labels=np.stack(labels),
                targets=point_idx,
                ambiguous=(n_pos == 1 and n_neg == 0),
            )
        )
    return PromptedImage(image=image, masks=targets, groups=groups, coverage=coverage)



class SyntheticPromptStream(torch.utils.data.IterableDataset):
    """Endless stream of :class:`PromptedImage` rendered on the fly, deterministic by seed.

    The stream is seeded with ``[seed, worker_id, SAM_TRAIN_STREAM_TAG]``; with zero or one loader
    worker it is the same sequence, so a run is reproducible whatever ``num_workers`` (0 or 1) is used.
    """

    def __init__(self, seed: int, sampling: PromptSampling, renderer: Optional[SceneRenderer] = None) -> None:
        super().__init__()
        self.seed = seed
        self.sampling = sampling
        self.renderer = renderer

    def __iter__(self) -> Iterator[PromptedImage]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, worker, SAM_TRAIN_STREAM_TAG])
        render = self.renderer or default_scene_renderer()
        while True:
            image, id_map, segments = render(rng)
            item = prompt_scene(rng, image, id_map, segments, self.sampling)
            if item is not None:
                yield item
