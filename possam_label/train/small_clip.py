"""A small open_clip CLIP (BatchNorm CNN image tower) trained on the synthetic world.

No pretrained CLIP weights can reach the machines this project runs on, so the project ships a
small CLIP trained contrastively on scenes of :mod:`possam_label.data.synthetic`, over ALL the
world's classes (base and novel, as web-scale CLIP has seen everything). PosSAM only ever uses it
frozen, through one path (``possam_label.model.clip_backbone``):

    the 256x256 scene at its own scale -> ``visual.trunk.forward_features`` -> (B, 256, 8, 8)
    -> average inside a mask -> ``visual.trunk.forward_head`` -> ``visual.head`` -> 128-d
    -> cosine with the text embeddings of "a photo of a {synonym}." (14 ViLD templates averaged)

so training has three terms:
  * contrastive (CLIP InfoNCE with a learnable logit scale; identical captions in a batch count as
    positives of each other) between captions and (a) object crops with context / stuff patches,
    (b) whole scenes at a small size. Captions come from :class:`CaptionGenerator`: colours,
    sizes, backgrounds and scene words, deterministic by seed. Each thing also comes cut out
    onto a flat random colour (``ClipSampling.cut_out_things``): measured with
    ``docs/experiments/shape_tower_probe.py``, without such crops a tower trained on whole
    scenes names held-out shapes at chance, with them 84 % (base) and 85 % (novel).
  * crop classification: crops and patches against the text embedding of one random ViLD prompt
    per class (captions alone let the model match colours and ignore shapes).
  * dense mask pooling: scene windows at the inference scale, the dense map pooled inside
    every ground-truth segment and classified (cross-entropy, same logit scale) against the
    text embeddings of one random ViLD prompt per class, i.e. exactly the path PosSAM uses.

Note on the image embedding: with ``timm_pool=""`` the trunk's head average-pools all cells, so the
global image embedding of a crop *is* the mask-pooled embedding with an all-ones mask.
"""

from __future__ import annotations

import colorsys
import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.bn_convnet import TIMM_NAME as BN_CONVNET, register_with_timm
from ..model.clip_backbone import VILD_TEMPLATES
from ..model.weights import WeightsError, load_state_dict
from .small_sam import (
    HELD_OUT_SEED,
    SceneRenderer,
    TrainResult,
    _check_out_dir,
    cosine_lr,
    default_scene_renderer,
    plot_loss_curve,
    save_fp16_checkpoint,
)

logger = logging.getLogger(__name__)

# The shipped model's open_clip config (written as clip_small.json). The text tower is narrower
# than CLIP's usual (width 64): its token table alone (49,408 x width) dominates the file size.
# The image tower is possam_label.model.bn_convnet's BatchNorm CNN (registered with timm): the
# ConvNeXt-atto of the first shipped CLIP never learnt to tell shapes apart.
SMALL_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "timm_model_name": BN_CONVNET,
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "mlp",
        "timm_drop": 0.0,
        "timm_drop_path": 0.0,
        "image_size": 64,
    },
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
# OpenAI CLIP normalisation on the [0, 255] scale (the default of possam_label.config.CLIPConfig).
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)
# PosSAM feeds the 256x256 scene to CLIP at this side (its own scale: the CNN's 3x3 convolutions
# see shapes at the scale the crops teach them).
DENSE_INPUT_SIZE = 256
CLIP_TRAIN_STREAM_TAG = 0xC1


def build_small_clip(checkpoint: Optional[str | Path] = None, config: Optional[dict[str, Any]] = None) -> nn.Module:
    """The small ``open_clip.CLIP`` of :data:`SMALL_CLIP_CONFIG` (or ``config``), in eval mode.

    Raises:
        WeightsError: the file is missing, unreadable or does not fit the model.
    """
    import open_clip

    register_with_timm()
    cfg = copy.deepcopy(config or SMALL_CLIP_CONFIG)
    model = open_clip.CLIP(embed_dim=cfg.pop("embed_dim"), vision_cfg=cfg.pop("vision_cfg"), text_cfg=cfg.pop("text_cfg"), **cfg)
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{checkpoint}: does not fit the small CLIP model ({exc})") from exc
        logger.info("loaded small CLIP weights from %s", checkpoint)
    model.eval()
    return model


def small_clip_tokenizer(context_length: int = SMALL_CLIP_CONFIG["text_cfg"]["context_length"]) -> Any:
    """open_clip's bundled BPE tokenizer (no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


# --------------------------------------------------------------------------------------------
# The dense mask-pooling path PosSAM uses
# --------------------------------------------------------------------------------------------
def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float on [0, 255] -> CLIP-normalised."""
    mean = torch.tensor(CLIP_PIXEL_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def dense_features(model: nn.Module, pixels: torch.Tensor, input_size: Optional[int] = DENSE_INPUT_SIZE) -> torch.Tensor:
    """Dense trunk features as PosSAM computes them.

    Args:
        pixels: (B, 3, S, S) float on [0, 255].
        input_size: side the image is resized to first (None keeps S).
    Returns:
        (B, C, input_size/32, input_size/32).
    """
    if input_size is not None and pixels.shape[-1] != input_size:
        pixels = F.interpolate(pixels, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    return model.visual.trunk.forward_features(normalize_pixels(pixels))


def cell_weights(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Pooling weights of masks on a ``grid`` x ``grid`` dense map.

    A cell counts when more than half of it is covered (PosSAM binarises its resized mask logits
    the same way); masks that cover no cell that much fall back to their soft coverage.

    Args:
        masks: (N, H, W) bool or float, H and W multiples of ``grid``.
    Returns:
        (N, grid, grid) float weights.
    """
    coverage = F.adaptive_avg_pool2d(masks.float()[:, None], grid)[:, 0]
    binary = (coverage > 0.5).float()
    empty = binary.sum(dim=(-2, -1)) == 0
    return torch.where(empty[:, None, None], coverage, binary)


def embed_pooled(model: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """(N, C) mask-pooled trunk features -> (N, embed_dim) joint-space embeddings (not normalised)."""
    x = model.visual.trunk.forward_head(pooled[:, :, None, None])
    return model.visual.head(x)


def mask_pooled_embeddings(features: torch.Tensor, weights: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Pool (C, h, w) features with (N, h, w) weights and embed: -> (N, embed_dim)."""
    pooled = torch.einsum("nhw,chw->nc", weights, features) / weights.sum(dim=(-2, -1)).clamp(min=1e-6)[:, None]
    return embed_pooled(model, pooled)


def class_text_embeddings(
    model: nn.Module, tokenizer: Any, synonyms: Sequence[Sequence[str]], templates: Sequence[str] = VILD_TEMPLATES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text classifier rows as PosSAM builds them: per synonym, the normalised mean of the
    normalised template embeddings.

    Returns:
        (S, D) normalised synonym embeddings and (S,) class index of each row.
    """
    rows = [(ci, s) for ci, syns in enumerate(synonyms) for s in syns]
    prompts = [t.format(s) for _, s in rows for t in templates]
    device = next(model.parameters()).device
    feats = []
    for start in range(0, len(prompts), 256):
        feats.append(model.encode_text(tokenizer(prompts[start : start + 256]).to(device)).float())
    emb = F.normalize(torch.cat(feats), dim=-1).view(len(rows), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1), torch.tensor([ci for ci, _ in rows], device=device)


def classify_embeddings(embeddings: torch.Tensor, text: torch.Tensor, class_index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Predicted class per embedding: max cosine over each class's synonym rows. (N, D) -> (N,)."""
    sims = F.normalize(embeddings, dim=-1) @ text.t()  # (N, S)
    per_class = sims.new_full((len(embeddings), num_classes), float("-inf"))
    per_class = per_class.scatter_reduce(1, class_index.expand_as(sims), sims, reduce="amax", include_self=True)
    return per_class.argmax(dim=1)


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------
def colour_name(rgb: Sequence[float]) -> str:
    """A plain English colour word for a mean RGB (0-255)."""
    r, g, b = (float(c) / 255.0 for c in rgb)
    hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
    if val < 0.2:
        return "black"
    if sat < 0.2:
        return "white" if val > 0.8 else ("grey" if val > 0.4 else "dark grey")
    deg = hue * 360
    if deg < 15 or deg >= 340:
        name = "red"
    elif deg < 40:
        name = "brown" if val < 0.6 else "orange"
    elif deg < 70:
        name = "olive" if val < 0.5 else "yellow"
    elif deg < 160:
        name = "green"
    elif deg < 195:
        name = "cyan"
    elif deg < 255:
        name = "blue"
    elif deg < 290:
        name = "purple"
    else:
        name = "pink" if val > 0.6 else "magenta"
    if sat < 0.45 and name not in ("brown", "olive"):
        name = "pale " + name
    elif val < 0.45 and name not in ("brown", "olive"):
        name = "dark " + name
    return name


def size_word(area_fraction: float) -> str:
    """'small' / 'medium' / 'large' for an instance covering ``area_fraction`` of the scene."""
    return "small" if area_fraction < 0.01 else ("medium" if area_fraction < 0.04 else "large")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class CaptionGenerator:
    """Natural-ish captions for the synthetic world, a pure function of the generator passed in.

    Args:
        synonyms: per class, its synonyms (``synonyms[k][0]`` is the class name).
    """

    THING_TEMPLATES = (
        "a photo of {a} {colour} {syn}.",
        "{a} {colour} {syn} on {stuff}.",
        "{a} {colour} {syn} in front of the {stuff}.",
        "a {size} {colour} {syn}.",
        "{a} {colour} {syn}",
        "the {syn} is {colour}.",
        "a photo of a {size} {syn}.",
        "{a_syn} {syn} on {stuff}.",
        "{syn}",
        "{a_syn} {syn}.",
    )
    STUFF_TEMPLATES = (
        "{syn}",
        "a photo of {syn}.",
        "a patch of {syn}.",
        "a close-up of {syn}.",
        "{syn} texture",
        "a photo of the {syn}.",
    )

    def __init__(self, synonyms: Sequence[Sequence[str]]) -> None:
        self.synonyms = [tuple(s) for s in synonyms]

    def synonym(self, rng: np.random.Generator, class_index: int) -> str:
        syns = self.synonyms[class_index]
        # The class name itself half the time, a synonym otherwise.
        return syns[0] if rng.random() < 0.5 or len(syns) == 1 else syns[int(rng.integers(1, len(syns)))]

    def class_prompt(self, rng: np.random.Generator, class_index: int) -> str:
        """One ViLD template with one synonym (the form PosSAM's text classifier uses)."""
        return VILD_TEMPLATES[int(rng.integers(len(VILD_TEMPLATES)))].format(self.synonym(rng, class_index))

    def thing(self, rng: np.random.Generator, class_index: int, colour: str, area_fraction: float, stuff_index: Optional[int]) -> str:
        """Caption of a thing crop (``stuff_index``: the class of the background, if one dominates)."""
        roll = rng.random()
        if roll < 0.2:
            return self.class_prompt(rng, class_index)
        syn = self.synonym(rng, class_index)
        choices = [t for t in self.THING_TEMPLATES if stuff_index is not None or "{stuff}" not in t]
        template = choices[int(rng.integers(len(choices)))]
        stuff = self.synonym(rng, stuff_index) if stuff_index is not None else ""
        return template.format(
            a=_article(colour), colour=colour, syn=syn, stuff=stuff, size=size_word(area_fraction), a_syn=_article(syn)
        )

    def stuff(self, rng: np.random.Generator, class_index: int) -> str:
        """Caption of a patch of one stuff class."""
        if rng.random() < 0.3:
            return self.class_prompt(rng, class_index)
        template = self.STUFF_TEMPLATES[int(rng.integers(len(self.STUFF_TEMPLATES)))]
        return template.format(syn=self.synonym(rng, class_index))

    def scene(self, rng: np.random.Generator, things: Sequence[tuple[int, str]], stuff: Sequence[int]) -> str:
        """Caption listing a scene's contents.

        Args:
            things: (class index, colour) of the things, largest first.
            stuff: stuff class indices, largest first.
        """
        stuff_words = [self.synonym(rng, k) for k in stuff[:2]]
        background = " and ".join(stuff_words) if stuff_words else "a plain background"
        if not things:
            return ["a photo of {}.", "{}", "an empty scene of {}."][int(rng.integers(3))].format(background)
        listed = things[:3]
        items = []
        for k, colour in listed:
            syn = self.synonym(rng, k)
            items.append(f"{_article(colour)} {colour} {syn}" if rng.random() < 0.7 else f"{_article(syn)} {syn}")
        joined = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        form = int(rng.integers(3))
        if form == 0:
            return f"{joined} on {background}."
        if form == 1:
            return f"a photo of {background} with {joined}."
        count = _NUMBER_WORDS[min(len(things), 9)]
        noun = "shape" if len(things) == 1 else "shapes"
        return f"{count} {noun} on {background}, including {joined}."


# --------------------------------------------------------------------------------------------
# Training data
# --------------------------------------------------------------------------------------------
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


class WorldIndex:
    """Class lookups of the synthetic world (category id -> class index, thing flags, synonyms)."""

    def __init__(self) -> None:
        from ..data.synthetic import world_classes, world_splits

        classes = world_classes()
        self.names = [c.name for c in classes]
        self.synonyms = [tuple(c.synonyms) for c in classes]
        self.isthing = [bool(c.isthing) for c in classes]
        self.index_of_category = {c.id: i for i, c in enumerate(classes)}
        novel = set(world_splits()["novel"])
        self.is_novel = [c.name in novel for c in classes]

    def __len__(self) -> int:
        return len(self.names)


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


def make_clip_batch(
    rng: np.random.Generator,
    scenes: Sequence[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]],
    world: WorldIndex,
    captions: CaptionGenerator,
    sampling: ClipSampling,
) -> ClipBatch:
    """Cut crops, patches, small scenes and dense windows (with captions and labels) from scenes."""
    crop_items: list[tuple[torch.Tensor, str, bool, int]] = []  # (image, caption, is_thing, class)
    scene_items: list[tuple[torch.Tensor, str]] = []
    dense_pixels, dense_weights, dense_index, dense_labels = [], [], [], []
    for image, id_map, segments in scenes:
        size = id_map.shape[0]
        seg_class = {s["id"]: world.index_of_category[s["category_id"]] for s in segments}
        stuff_ids = [s["id"] for s in segments if not world.isthing[seg_class[s["id"]]]]
        things_desc: list[tuple[int, str, int]] = []  # (class, colour, area)
        for seg in segments:
            k = seg_class[seg["id"]]
            mask = id_map == seg["id"]
            if world.isthing[k]:
                colour = colour_name(image[mask].mean(axis=0))
                things_desc.append((k, colour, int(seg["area"])))
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
                crop_items.append((_resize_uint8(image[y0 : y0 + side, x0 : x0 + side], sampling.crop_size), caption, True, k))
                if sampling.cut_out_things:
                    cut_out = image[y0 : y0 + side, x0 : x0 + side].copy()
                    cut_out[id_map[y0 : y0 + side, x0 : x0 + side] != seg["id"]] = rng.integers(0, 256, 3).astype(np.uint8)
                    caption = captions.thing(rng, k, colour, seg["area"] / (size * size), None)
                    crop_items.append((_resize_uint8(cut_out, sampling.crop_size), caption, True, k))
            else:
                # A patch mostly of this stuff class, centred on one of its pixels.
                ys, xs = np.nonzero(mask)
                for _ in range(4):
                    i = int(rng.integers(len(xs)))
                    side = int(rng.uniform(0.15, 0.4) * size)
                    x0, y0, side = _square_window(xs[i], ys[i], side, size)
                    if (id_map[y0 : y0 + side, x0 : x0 + side] == seg["id"]).mean() >= 0.7:
                        crop_items.append((_resize_uint8(image[y0 : y0 + side, x0 : x0 + side], sampling.crop_size), captions.stuff(rng, k), False, k))
                        break
        # The whole scene, small, with a caption listing its contents.
        things_desc.sort(key=lambda t: -t[2])
        stuff_order = sorted((s for s in segments if s["id"] in stuff_ids), key=lambda s: -s["area"])
        scene_caption = captions.scene(rng, [(k, c) for k, c, _ in things_desc], [seg_class[s["id"]] for s in stuff_order])
        scene_items.append((_resize_uint8(image, sampling.crop_size), scene_caption))
        # A dense window at the inference scale.
        win = sampling.dense_window
        fed = int(round(win * sampling.dense_scale))
        x0, y0 = int(rng.integers(0, size - win + 1)), int(rng.integers(0, size - win + 1))
        window = torch.from_numpy(np.ascontiguousarray(image[y0 : y0 + win, x0 : x0 + win])).permute(2, 0, 1)[None].float()
        if fed != win:
            window = F.interpolate(window, size=(fed, fed), mode="bilinear", align_corners=False)
        dense_pixels.append(window[0])
        ids_win = torch.from_numpy(id_map[y0 : y0 + win, x0 : x0 + win])
        present = [int(v) for v in torch.unique(ids_win) if int(v) != 0]
        if present:
            masks = torch.stack([ids_win == v for v in present])
            grid = fed // 32
            coverage = F.adaptive_avg_pool2d(masks.float()[:, None], grid)[:, 0]
            keep = coverage.sum(dim=(-2, -1)) >= sampling.min_dense_cells
            if keep.any():
                dense_weights.append(cell_weights(masks[keep], grid))
                dense_labels.extend(seg_class[v] for v, kp in zip(present, keep.tolist()) if kp)
                dense_index.extend([len(dense_pixels) - 1] * int(keep.sum()))
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


# --------------------------------------------------------------------------------------------
# Losses and training
# --------------------------------------------------------------------------------------------
def multi_positive_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: Sequence[str], logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where pairs with identical captions are all positives.

    Args:
        image_emb, text_emb: (N, D) normalised.
        logit_scale: scalar (already exp'd).
    """
    keys = [" ".join(c.lower().strip(" .").split()) for c in captions]
    same = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.float32, device=image_emb.device)
    targets = same / same.sum(dim=1, keepdim=True)
    logits = logit_scale * image_emb @ text_emb.t()
    loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


@dataclass
class ClipTrainConfig:
    """Small-CLIP training run. Defaults reproduce the shipped checkpoint."""

    steps: int = 650
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    dense_weight: float = 1.0
    class_weight: float = 1.0
    thing_weight: float = 2.0
    text_class_weight: float = 1.0
    # Start from these weights (e.g. the previous shipped checkpoint) instead of random ones.
    init_checkpoint: Optional[str] = None
    # Take only the image tower (and the temperature) from init_checkpoint; the text tower starts
    # random. A text tower whose shape names have collapsed onto one point sits at a symmetric
    # point where the text-side class term has no gradient to separate them.
    init_visual_only: bool = False
    # Take only the text tower (and the temperature) from init_checkpoint; the image tower starts
    # random. For a new image-tower architecture under an already trained text tower.
    init_text_only: bool = False
    # Train the image tower only: the text tower and the temperature keep init_checkpoint's
    # values. PosSAM's text classifier (base and novel class embeddings) then stays exactly as the
    # heads were trained against, and only the dense features the heads read change.
    freeze_text_tower: bool = False
    log_every: int = 10
    num_workers: int = 1
    # One compute thread plus one rendering worker fill the 2 cores; measured on the shared
    # machine, 2 OpenMP threads next to the worker ran up to 10x slower (threads spin-waiting).
    num_threads: int = 1
    eval_scenes: int = 100
    sampling: ClipSampling = field(default_factory=ClipSampling)


def clip_step_losses(
    model: nn.Module,
    tokenizer: Any,
    batch: ClipBatch,
    dense_weight: float,
    class_weight: float,
    thing_weight: float,
    text_class_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Losses of one batch.

    * 'contrastive': InfoNCE between images and captions.
    * 'crop_class': cross-entropy of crop / patch embeddings against one ViLD prompt per class.
      Without it the contrastive term was satisfied by colour words alone: after 650 steps crops
      were classified by shape at chance level (4 %) while stuff was 97 % right.
    * 'dense': cross-entropy of mask-pooled window segments against the same class prompts, thing
      segments weighted ``thing_weight`` (they are the hard part).
    * 'text_class': every class prompt classified against the class means (text side only). It
      stands in for the language knowledge real CLIP brings from the web (synonyms close, different
      words apart): while the image tower cannot yet tell shapes apart, the image terms pull all
      shape names onto one point (the 12 shape classes of the 650-step checkpoint had pairwise
      cosine 1.00), and PosSAM's in-vocabulary classifier, built from these embeddings, then cannot
      separate base shapes either.
    Also training accuracies 'crop_thing_acc' and 'dense_thing_acc' (things only).
    """
    device = next(model.parameters()).device
    scale = model.logit_scale.exp().clamp(max=100.0)
    image_emb = F.normalize(model.encode_image(normalize_pixels(batch.images.to(device).float())), dim=-1)
    texts = list(batch.captions) + list(batch.class_prompts)
    text_all = F.normalize(model.encode_text(tokenizer(texts).to(device)), dim=-1)
    text_emb, prompt_emb = text_all[: len(batch.captions)], text_all[len(batch.captions) :]
    num_classes = int(batch.class_prompt_index.max()) + 1
    class_sum = torch.zeros(num_classes, prompt_emb.shape[1], device=device).index_add(0, batch.class_prompt_index.to(device), prompt_emb)
    class_emb = F.normalize(class_sum, dim=-1)
    contrastive = multi_positive_clip_loss(image_emb, text_emb, batch.captions, scale)
    zero = torch.zeros((), device=device)
    crop_class, crop_acc = zero, zero
    labels = batch.image_labels.to(device)
    labelled = labels >= 0
    if labelled.any():
        crop_logits = scale * image_emb[labelled] @ class_emb.t()
        crop_class = F.cross_entropy(crop_logits, labels[labelled])
        is_thing = batch.image_isthing.to(device)[labelled]
        if is_thing.any():
            crop_acc = (crop_logits.argmax(dim=1) == labels[labelled])[is_thing].float().mean()
    dense, dense_acc = zero, zero
    if len(batch.dense_labels):
        feats = model.visual.trunk.forward_features(normalize_pixels(batch.dense_pixels.to(device)))  # (B, 320, g, g)
        per_segment = feats[batch.dense_window_index.to(device)]  # (M, 320, g, g)
        w = batch.dense_weights.to(device)
        pooled = torch.einsum("mhw,mchw->mc", w, per_segment) / w.sum(dim=(-2, -1)).clamp(min=1e-6)[:, None]
        seg_emb = F.normalize(embed_pooled(model, pooled), dim=-1)
        logits = scale * seg_emb @ class_emb.t()
        seg_labels = batch.dense_labels.to(device)
        things = batch.dense_isthing.to(device)
        seg_weight = torch.where(things, torch.tensor(thing_weight, device=device), torch.tensor(1.0, device=device))
        dense = (F.cross_entropy(logits, seg_labels, reduction="none") * seg_weight).sum() / seg_weight.sum()
        if things.any():
            dense_acc = (logits.argmax(dim=1) == seg_labels)[things].float().mean()
    text_logits = scale * prompt_emb @ class_emb.t()
    text_class = F.cross_entropy(text_logits, batch.class_prompt_index.to(device))
    loss = contrastive + class_weight * crop_class + dense_weight * dense + text_class_weight * text_class
    return {
        "loss": loss,
        "text_class": text_class,
        "contrastive": contrastive,
        "crop_class": crop_class,
        "dense": dense,
        "crop_thing_acc": crop_acc,
        "dense_thing_acc": dense_acc,
    }


def train_small_clip(
    out_dir: str | Path,
    config: ClipTrainConfig = ClipTrainConfig(),
    renderer: Optional[SceneRenderer] = None,
    progress: bool = True,
) -> TrainResult:
    """Train the small CLIP (from scratch, or on from ``config.init_checkpoint``) and write into ``out_dir``:

    ``clip_small.safetensors`` (fp16, metadata: model config, train config, steps, seed, metrics),
    ``clip_small.json`` (open_clip model config), ``loss_clip_small.png``,
    ``train_log_clip_small.json`` (loss history, timing, held-out metrics).
    """
    from tqdm import tqdm

    if config.init_visual_only and config.init_text_only:
        raise ValueError("init_visual_only and init_text_only exclude each other")
    if config.freeze_text_tower and (not config.init_checkpoint or config.init_visual_only):
        raise ValueError("freeze_text_tower needs init_checkpoint (without init_visual_only): a frozen text tower must be a trained one")
    out = _check_out_dir(out_dir)
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    if config.init_checkpoint and config.init_visual_only:
        model = build_small_clip()
        state = {k: v.float() for k, v in load_state_dict(config.init_checkpoint).items() if k.startswith("visual.") or k == "logit_scale"}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(k.startswith("visual.") for k in missing):
            raise WeightsError(f"{config.init_checkpoint}: its image tower does not fit the small CLIP model")
        logger.info("image tower from %s, text tower random", config.init_checkpoint)
    elif config.init_checkpoint and config.init_text_only:
        model = build_small_clip()
        state = {k: v.float() for k, v in load_state_dict(config.init_checkpoint).items() if not k.startswith("visual.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("visual.") for k in missing):
            raise WeightsError(f"{config.init_checkpoint}: its text tower does not fit the small CLIP model")
        logger.info("text tower from %s, image tower random", config.init_checkpoint)
    else:
        model = build_small_clip(config.init_checkpoint)
    if config.freeze_text_tower:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("visual."))
    model.train()
    tokenizer = small_clip_tokenizer()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # No decay on norms, biases, embeddings, positional tables and the temperature.
        (no_decay if p.ndim <= 1 or "embedding" in name or name == "logit_scale" else decay).append(p)
    trainable = decay + no_decay  # with a frozen text tower, the image tower's parameters only
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loader = torch.utils.data.DataLoader(
        SyntheticCaptionStream(config.seed, config.sampling, renderer),
        batch_size=None,
        num_workers=config.num_workers,
        worker_init_fn=_single_thread_worker,
        prefetch_factor=3 if config.num_workers else None,
        persistent_workers=bool(config.num_workers),
    )
    history: list[dict[str, float]] = []
    keys = ("loss", "contrastive", "crop_class", "dense", "text_class", "crop_thing_acc", "dense_thing_acc")
    window: dict[str, list[float]] = {k: [] for k in keys}
    start = time.time()
    batches = iter(loader)
    bar = tqdm(range(config.steps), desc="small CLIP", disable=not progress, dynamic_ncols=True)
    for step in bar:
        lr = cosine_lr(step, config.steps, config.lr, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = clip_step_losses(model, tokenizer, next(batches), config.dense_weight, config.class_weight, config.thing_weight, config.text_class_weight)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, float(np.log(100.0)))
        for k in keys:
            window[k].append(float(losses[k].detach()))
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            row = {"step": step + 1, "lr": lr, "elapsed_s": time.time() - start, "logit_scale": float(model.logit_scale.detach().exp())}
            row.update({k: float(np.mean(v)) for k, v in window.items()})
            history.append(row)
            window = {k: [] for k in keys}
            bar.set_postfix(loss=f"{row['loss']:.3f}", thing_acc=f"{row['dense_thing_acc']:.2f}")
            logger.info(
                "step %d loss %.4f contrastive %.4f crop_class %.4f dense %.4f text_class %.4f thing acc crop %.3f dense %.3f scale %.1f",
                step + 1, row["loss"], row["contrastive"], row["crop_class"], row["dense"], row["text_class"],
                row["crop_thing_acc"], row["dense_thing_acc"], row["logit_scale"],
            )
    wall = time.time() - start
    model.eval()
    metrics = evaluate_dense_classification(model, tokenizer, num_scenes=config.eval_scenes, renderer=renderer, progress=progress)
    metadata = {
        "model": "open_clip.CLIP (small, possam_label.train.small_clip)",
        "model_config": SMALL_CLIP_CONFIG,
        "train_config": asdict(config),
        "steps": config.steps,
        "seed": config.seed,
        "train_wall_s": round(wall, 1),
        "final_loss": history[-1]["loss"] if history else None,
        "held_out_metrics": metrics,
    }
    ckpt = save_fp16_checkpoint(model, out / "clip_small.safetensors", metadata)
    (out / "clip_small.json").write_text(json.dumps(SMALL_CLIP_CONFIG, indent=2) + "\n")
    plot = plot_loss_curve(history, out / "loss_clip_small.png", f"small CLIP ({config.steps} steps, seed {config.seed})", ["loss", "contrastive", "crop_class", "dense", "text_class"])
    log_path = out / "train_log_clip_small.json"
    log_path.write_text(json.dumps({"metadata": metadata, "history": history}, indent=1))
    return TrainResult(ckpt, plot, log_path, history[-1]["loss"] if history else float("nan"), wall, metrics)


def _single_thread_worker(worker_id: int) -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Evaluation: zero-shot classification of GT segments through the dense path
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_dense_classification(
    model: nn.Module,
    tokenizer: Any,
    num_scenes: int = 100,
    renderer: Optional[SceneRenderer] = None,
    seed: int = HELD_OUT_SEED,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of classifying held-out GT segments by mask-pooled dense features at 512 input
    against the 18 class text embeddings (14 ViLD templates, max over synonyms).

    Returns accuracies for things / stuff x base / novel, overall, and segment counts.
    """
    from tqdm import tqdm

    from .small_sam import held_out_scenes

    world = WorldIndex()
    text, class_index = class_text_embeddings(model, tokenizer, world.synonyms)
    device = text.device
    correct: dict[str, list[bool]] = {k: [] for k in ("things_base", "things_novel", "stuff_base", "stuff_novel")}
    confusion = np.zeros((len(world), len(world)), dtype=np.int64)
    for image, id_map, segments in tqdm(held_out_scenes(num_scenes, renderer, seed), total=num_scenes, desc="eval CLIP", disable=not progress):
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device)
        feats = dense_features(model, pixels)[0]  # (320, 16, 16)
        ids = torch.from_numpy(id_map).to(device)
        masks = torch.stack([ids == s["id"] for s in segments])
        emb = mask_pooled_embeddings(feats, cell_weights(masks, feats.shape[-1]), model)
        pred = classify_embeddings(emb, text, class_index, len(world)).tolist()
        for seg, p in zip(segments, pred):
            k = world.index_of_category[seg["category_id"]]
            group = ("things" if world.isthing[k] else "stuff") + ("_novel" if world.is_novel[k] else "_base")
            correct[group].append(p == k)
            confusion[k, p] += 1
    result: dict[str, Any] = {"num_scenes": num_scenes}
    for group, vals in correct.items():
        result[f"acc_{group}"] = round(float(np.mean(vals)), 4) if vals else None
        result[f"n_{group}"] = len(vals)
    all_vals = [v for vals in correct.values() for v in vals]
    things_vals = correct["things_base"] + correct["things_novel"]
    stuff_vals = correct["stuff_base"] + correct["stuff_novel"]
    result["acc_all"] = round(float(np.mean(all_vals)), 4)
    result["acc_things"] = round(float(np.mean(things_vals)), 4) if things_vals else None
    result["acc_stuff"] = round(float(np.mean(stuff_vals)), 4) if stuff_vals else None
    result["per_class_acc"] = {
        world.names[k]: round(float(confusion[k, k] / confusion[k].sum()), 4) for k in range(len(world)) if confusion[k].sum()
    }
    return result
