"""The frozen-CLIP path PosSAM uses, on the small CLIP: dense trunk features of the whole scene,
average-pooled inside each mask, embedded and classified against class text embeddings.

Used by the small CLIP's training (its dense term) and its held-out evaluation.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..model.clip_backbone import VILD_TEMPLATES

# OpenAI CLIP normalisation on the [0, 255] scale (the default of possam_label.config.CLIPConfig).
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)
# PosSAM feeds the 256x256 scene to CLIP at this side (its own scale: the CNN's 3x3 convolutions
# see shapes at the scale the crops teach them).
DENSE_INPUT_SIZE = 256


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
