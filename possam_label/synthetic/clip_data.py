"""Training data of the small CLIP: crops, patches, small scenes and dense windows cut from
synthetic scenes rendered on the fly, with captions and class labels (see :mod:`.small_clip`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..model.clip_backbone import VILD_TEMPLATES
from .captions import CaptionGenerator, colour_name
from .classes import WorldIndex
from .clip_dense import cell_weights
from .world import SceneRenderer, default_scene_renderer

# The CLIP training stream is seeded with [seed, worker, CLIP_TRAIN_STREAM_TAG] (see world.HELD_OUT_SEED).
CLIP_TRAIN_STREAM_TAG = 0xC1


@dataclass
class ClipSampling:
    """Sizes of one training step.

    Attributes:
        scenes_per_step: scenes rendered per step (crops, scene images and dense windows come from them).
        crop_size: side of object crops, stuff patches and small whole scenes.
        max_thing_crops, max_stuff_patches: caps per step (the rest of the scenes' segments are skipped).
        cut_out_things: each thing crop also comes cut out: the pixels outside the thing set to one
            random flat colour (the caption then names no background).
        dense_window: scene pixels of a dense-term window.
        dense_scale: the window is fed at ``dense_scale x`` its size (the inference scale:
            ``DENSE_INPUT_SIZE`` / scene size).
        min_dense_cells: a segment joins the dense term when its soft coverage reaches this many cells.
    """

    scenes_per_step: int = 8
    crop_size: int = 64
    max_thing_crops: int = 96
    max_stuff_patches: int = 10
    cut_out_things: bool = True
    dense_window: int = 256
    dense_scale: float = 1.0
    min_dense_cells: float = 0.5


@dataclass
class ClipBatch:
    """One step of CLIP training data.

    Attributes:
        images: (N, 3, crop, crop) uint8 crops, patches and small scenes.
        captions: N strings.
        image_labels: (N,) class index of each crop or patch, -1 for whole scenes.
        image_isthing: (N,) whether each image is a thing crop.
        dense_isthing: (M,) whether each dense segment is a thing.
        dense_pixels: (B, 3, s, s) float [0, 255] windows at the inference scale (s = w x dense_scale).
        dense_weights: (M, s/32, s/32) pooling weights of the segments in the windows.
        dense_window_index: (M,) window of each segment.
        dense_labels: (M,) class index of each segment.
        class_prompts: P strings, every synonym of every class in a random ViLD template (text side
            of the classification terms; a class's embedding is the mean over its prompts, which
            moves less from step to step than a single random prompt).
        class_prompt_index: (P,) class of each prompt.
    """

    images: torch.Tensor
    captions: list[str]
    image_labels: torch.Tensor
    image_isthing: torch.Tensor
    dense_isthing: torch.Tensor
    dense_pixels: torch.Tensor
    dense_weights: torch.Tensor
    dense_window_index: torch.Tensor
    dense_labels: torch.Tensor
    class_prompts: list[str]
    class_prompt_index: torch.Tensor


def _resize_uint8(patch: np.ndarray, size: int) -> torch.Tensor:
    """(h, w, 3) uint8 -> (3, size, size) uint8 (bilinear, antialiased)."""
    t = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t[0].round().clamp(0, 255).to(torch.uint8)


def _square_window(cx: float, cy: float, side: int, limit: int) -> tuple[int, int, int]:
    """(x0, y0, side) of a square window centred near (cx, cy), shifted to lie inside the image."""
    side = int(min(max(side, 8), limit))
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - side / 2))
    x0 = min(max(x0, 0), limit - side)
    y0 = min(max(y0, 0), limit - side)
    return x0, y0, side


class SyntheticCaptionStream(torch.utils.data.IterableDataset):
    """Endless stream of :class:`ClipBatch`, deterministic by seed (rng ``[seed, worker, tag]``)."""

    def __init__(self, seed: int, sampling: ClipSampling, renderer: Optional[SceneRenderer] = None) -> None:
        super().__init__()
        self.seed = seed
        self.sampling = sampling
        self.renderer = renderer

    def __iter__(self) -> Iterator[ClipBatch]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, worker, CLIP_TRAIN_STREAM_TAG])
        render = self.renderer or default_scene_renderer()
        world = WorldIndex()
        captions = CaptionGenerator(world.synonyms)
        while True:
            yield make_clip_batch(rng, [render(rng) for _ in range(self.sampling.scenes_per_step)], world, captions, self.sampling)


# (image, caption, is_thing, class index) of one crop or patch
CropItem = tuple[torch.Tensor, str, bool, int]


def _thing_crops(
    rng: np.random.Generator,
    image: np.ndarray,
    id_map: np.ndarray,
    seg: dict[str, Any],
    k: int,
    colour: str,
    seg_class: dict[int, int],
    stuff_ids: Sequence[int],
    captions: CaptionGenerator,
    sampling: ClipSampling,
) -> list[CropItem]:
    """A thing with some context, captioned (naming the background stuff when one dominates), and
    with ``sampling.cut_out_things`` the same window with everything but the thing set to one random
    flat colour."""
    size = id_map.shape[0]
    x, y, w, h = seg["bbox"]
    side = int(max(w, h) * rng.uniform(1.15, 1.8))
    jitter = 0.1 * side
    x0, y0, side = _square_window(x + w / 2 + rng.uniform(-jitter, jitter), y + h / 2 + rng.uniform(-jitter, jitter), side, size)
    window_ids = id_map[y0 : y0 + side, x0 : x0 + side]
    background = np.isin(window_ids, stuff_ids)
    stuff_index = None
    if background.any():
        ids, counts = np.unique(window_ids[background], return_counts=True)
        if counts.max() > 0.5 * background.sum():
            stuff_index = seg_class[int(ids[np.argmax(counts)])]
    caption = captions.thing(rng, k, colour, seg["area"] / (size * size), stuff_index)
    items = [(_resize_uint8(image[y0 : y0 + side, x0 : x0 + side], sampling.crop_size), caption, True, k)]
    if sampling.cut_out_things:
        cut_out = image[y0 : y0 + side, x0 : x0 + side].copy()
        cut_out[id_map[y0 : y0 + side, x0 : x0 + side] != seg["id"]] = rng.integers(0, 256, 3).astype(np.uint8)
        caption = captions.thing(rng, k, colour, seg["area"] / (size * size), None)
        items.append((_resize_uint8(cut_out, sampling.crop_size), caption, True, k))
    return items


def _stuff_patch(
    rng: np.random.Generator,
    image: np.ndarray,
    id_map: np.ndarray,
    seg: dict[str, Any],
    mask: np.ndarray,
    k: int,
    captions: CaptionGenerator,
    sampling: ClipSampling,
) -> Optional[CropItem]:
    """A patch mostly (70 %) of this stuff segment, centred on one of its pixels (4 tries; None if none fits)."""
    size = id_map.shape[0]
    ys, xs = np.nonzero(mask)
    for _ in range(4):
        i = int(rng.integers(len(xs)))
        side = int(rng.uniform(0.15, 0.4) * size)
        x0, y0, side = _square_window(xs[i], ys[i], side, size)
        if (id_map[y0 : y0 + side, x0 : x0 + side] == seg["id"]).mean() >= 0.7:
            return (_resize_uint8(image[y0 : y0 + side, x0 : x0 + side], sampling.crop_size), captions.stuff(rng, k), False, k)
    return None


def _dense_window(
    rng: np.random.Generator, image: np.ndarray, id_map: np.ndarray, seg_class: dict[int, int], sampling: ClipSampling
) -> tuple[torch.Tensor, Optional[torch.Tensor], list[int]]:
    """A random window fed at the inference scale.

    Returns:
        (3, s, s) float pixels, the (M, s/32, s/32) pooling weights of the M segments covering at
        least ``sampling.min_dense_cells`` cells (None when none does), and their classes.
    """
    size = id_map.shape[0]
    win = sampling.dense_window
    fed = int(round(win * sampling.dense_scale))
    x0, y0 = int(rng.integers(0, size - win + 1)), int(rng.integers(0, size - win + 1))
    window = torch.from_numpy(np.ascontiguousarray(image[y0 : y0 + win, x0 : x0 + win])).permute(2, 0, 1)[None].float()
    if fed != win:
        window = F.interpolate(window, size=(fed, fed), mode="bilinear", align_corners=False)
    ids_win = torch.from_numpy(id_map[y0 : y0 + win, x0 : x0 + win])
    present = [int(v) for v in torch.unique(ids_win) if int(v) != 0]
    if present:
        masks = torch.stack([ids_win == v for v in present])
        grid = fed // 32
        coverage = F.adaptive_avg_pool2d(masks.float()[:, None], grid)[:, 0]
        keep = coverage.sum(dim=(-2, -1)) >= sampling.min_dense_cells
        if keep.any():
            return window[0], cell_weights(masks[keep], grid), [seg_class[v] for v, kp in zip(present, keep.tolist()) if kp]
    return window[0], None, []


def make_clip_batch(
    rng: np.random.Generator,
    scenes: Sequence[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]],
    world: WorldIndex,
    captions: CaptionGenerator,
    sampling: ClipSampling,
) -> ClipBatch:
    """Cut crops, patches, small scenes and dense windows (with captions and labels) from scenes."""
    crop_items: list[CropItem] = []
    scene_items: list[tuple[torch.Tensor, str]] = []
    dense_pixels, dense_weights, dense_index, dense_labels = [], [], [], []
    for image, id_map, segments in scenes:
        seg_class = {s["id"]: world.index_of_category[s["category_id"]] for s in segments}
        stuff_ids = [s["id"] for s in segments if not world.isthing[seg_class[s["id"]]]]
        things_desc: list[tuple[int, str, int]] = []  # (class, colour, area)
        for seg in segments:
            k = seg_class[seg["id"]]
            mask = id_map == seg["id"]
            if world.isthing[k]:
                colour = colour_name(image[mask].mean(axis=0))
                things_desc.append((k, colour, int(seg["area"])))
                crop_items.extend(_thing_crops(rng, image, id_map, seg, k, colour, seg_class, stuff_ids, captions, sampling))
            else:
                patch = _stuff_patch(rng, image, id_map, seg, mask, k, captions, sampling)
                if patch is not None:
                    crop_items.append(patch)
        # The whole scene, small, with a caption listing its contents.
        things_desc.sort(key=lambda t: -t[2])
        stuff_order = sorted((s for s in segments if s["id"] in stuff_ids), key=lambda s: -s["area"])
        scene_caption = captions.scene(rng, [(k, c) for k, c, _ in things_desc], [seg_class[s["id"]] for s in stuff_order])
        scene_items.append((_resize_uint8(image, sampling.crop_size), scene_caption))
        pixels, weights, labels = _dense_window(rng, image, id_map, seg_class, sampling)
        dense_pixels.append(pixels)
        if weights is not None:
            dense_weights.append(weights)
            dense_labels.extend(labels)
            dense_index.extend([len(dense_pixels) - 1] * len(labels))
    chosen = [c for c in crop_items if c[2]][: sampling.max_thing_crops] + [c for c in crop_items if not c[2]][: sampling.max_stuff_patches]
    images = torch.stack([c[0] for c in chosen] + [s[0] for s in scene_items])
    texts = [c[1] for c in chosen] + [s[1] for s in scene_items]
    # Whole scenes have no single class (-1).
    image_labels = [c[3] for c in chosen] + [-1] * len(scene_items)
    grid = int(round(sampling.dense_window * sampling.dense_scale)) // 32
    return ClipBatch(
        images=images,
        captions=texts,
        image_labels=torch.tensor(image_labels, dtype=torch.long),
        image_isthing=torch.tensor([c[2] for c in chosen] + [False] * len(scene_items), dtype=torch.bool),
        dense_isthing=torch.tensor([world.isthing[k] for k in dense_labels], dtype=torch.bool),
        dense_pixels=torch.stack(dense_pixels),
        dense_weights=torch.cat(dense_weights) if dense_weights else torch.zeros(0, grid, grid),
        dense_window_index=torch.tensor(dense_index, dtype=torch.long),
        dense_labels=torch.tensor(dense_labels, dtype=torch.long),
        class_prompts=[VILD_TEMPLATES[int(rng.integers(len(VILD_TEMPLATES)))].format(syn) for syns in world.synonyms for syn in syns],
        class_prompt_index=torch.tensor([k for k, syns in enumerate(world.synonyms) for _ in syns], dtype=torch.long),
    )
