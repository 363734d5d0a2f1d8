"""Local Discriminative Pooling (LDP): class embeddings from SAM mask features and frozen CLIP features [I]."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .clip_backbone import TextClassifier
from .common import MLP, masked_average_pool
from .mask_shape import MaskShapeEncoder

FUSIONS = ("pixel_add", "pixel_gated", "pool_then_fuse")


class LocalDiscriminativePooling(nn.Module):
    """Pools fused SAM/CLIP features inside each predicted mask and maps them into CLIP text space.

    ``pixel_add``:      F_ldp = Conv1x1(up(F_clip)) + F_masked, pooled at stride 4.
    ``pixel_gated``:    F_ldp = Conv1x1(up(F_clip)) * sigmoid(Conv1x1(F_masked)) + F_masked.
    ``pool_then_fuse``: pool F_clip (stride 32) and F_masked (stride 4) separately, project and sum.
    Then g = Linear(LN(g)) (+ query embedding) and G = MLP_3(g) -> text space; logits are
    scaled cosines with the text classifier (max over synonyms) plus a learnable void class.

    Args:
        mask_dim: channels of the SAM mask features.
        clip_dim: channels of the dense CLIP features.
        hidden_dim: query width.
        embed_dim: CLIP joint-space width.
        fusion: one of ``FUSIONS``.
        use_query_embedding: add the query output before the MLP.
        logit_scale_init: initial temperature (exp of the learnt log scale).
        logit_scale_max: clamp of the temperature.
        shape_encoder: adds an embedding of each mask's outline to g (``ldp.shape_encoder``;
            None: the pooled features only, as in the paper).
        crop_encoder: adds an embedding of the image around each mask at full resolution
            (``ldp.crop_encoder``; a :class:`MaskShapeEncoder` with ``use_pixels``).
    """

    def __init__(
        self,
        mask_dim: int,
        clip_dim: int,
        hidden_dim: int,
        embed_dim: int,
        fusion: str,
        use_query_embedding: bool,
        logit_scale_init: float,
        logit_scale_max: float,
        shape_encoder: Optional[MaskShapeEncoder] = None,
        crop_encoder: Optional[MaskShapeEncoder] = None,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"ldp.fusion must be one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        self.use_query_embedding = use_query_embedding
        if fusion == "pool_then_fuse":
            self.clip_proj = nn.Linear(clip_dim, mask_dim)
        else:
            self.clip_proj = nn.Conv2d(clip_dim, mask_dim, 1)
        # Zero at the start: heads warm-started (train.init_heads) onto a new CLIP, whose clip_proj
        # no longer fits, begin from the previous heads' predictions without the CLIP term.
        nn.init.zeros_(self.clip_proj.weight)
        nn.init.zeros_(self.clip_proj.bias)
        self.gate = nn.Conv2d(mask_dim, mask_dim, 1) if fusion == "pixel_gated" else None
        self.pool_norm = nn.LayerNorm(mask_dim)
        self.pool_proj = nn.Linear(mask_dim, hidden_dim)
        self.embed = MLP(hidden_dim, hidden_dim, embed_dim, 3)
        self.void_embedding = nn.Embedding(1, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.logit_scale_max = logit_scale_max
        self.shape_encoder = shape_encoder
        self.crop_encoder = crop_encoder

    def fuse(self, mask_features: torch.Tensor, clip_features: torch.Tensor) -> torch.Tensor:
        """Per-pixel fusion, computed once per image for all decoder stages.

        Args:
            mask_features: (B, mask_dim, H/4, W/4).
            clip_features: (B, clip_dim, h, w) (stride 32 of the CLIP input).
        Returns:
            (B, mask_dim, H/4, W/4) for the pixel fusions; for ``pool_then_fuse`` the CLIP map unchanged.
        """
        if self.fusion == "pool_then_fuse":
            return clip_features
        up = F.interpolate(clip_features.to(mask_features.dtype), size=mask_features.shape[-2:], mode="bilinear", align_corners=False)
        projected = self.clip_proj(up)
        if self.fusion == "pixel_gated":
            projected = projected * torch.sigmoid(self.gate(mask_features))
        return projected + mask_features

    def forward(
        self,
        fused: torch.Tensor,
        mask_features: torch.Tensor,
        mask_logits: torch.Tensor,
        queries: torch.Tensor,
        pixels: Optional[torch.Tensor] = None,
        crop_inputs: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        embed_crops: bool = True,
    ) -> torch.Tensor:
        """Class embeddings of the queries.

        Args:
            fused: output of :meth:`fuse`.
            mask_features: (B, mask_dim, H/4, W/4).
            mask_logits: (B, Q, H/4, W/4) (binarised without gradient).
            queries: (B, Q, hidden) normalised query outputs.
            pixels: (B, 3, S, S) normalised input pixels, for the crop encoder.
            crop_inputs: the crop encoder's ``crop_inputs`` of these masks, if already computed.
            embed_crops: False leaves the crop encoder out. Only equivalent for an encoder whose
                projection is zero (a fresh one, before heads training): crop-encoder pretraining
                collects crops so without running its convolutions on every query.
        Returns:
            (B, Q, embed_dim) embeddings G_ldp.
        """
        masks = (mask_logits.detach() > 0).to(mask_features.dtype)
        if self.fusion == "pool_then_fuse":
            small = F.interpolate(mask_logits.detach().float(), size=fused.shape[-2:], mode="bilinear", align_corners=False)
            clip_pooled = masked_average_pool(fused.float(), (small > 0).float())
            pooled = masked_average_pool(mask_features, masks) + self.clip_proj(clip_pooled.to(mask_features.dtype))
        else:
            pooled = masked_average_pool(fused, masks)
        g = self.pool_proj(self.pool_norm(pooled))
        if self.use_query_embedding:
            g = g + queries
        if self.shape_encoder is not None:
            g = g + self.shape_encoder(mask_logits)
        if self.crop_encoder is not None and embed_crops:
            g = g + self.crop_encoder(mask_logits, pixels, crop_inputs=crop_inputs)
        return self.embed(g)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.logit_scale_max)

    def classify(self, embeddings: torch.Tensor, text: TextClassifier) -> torch.Tensor:
        """(B, Q, D) embeddings -> (B, Q, K + 1) logits, void last."""
        scale = self.scale()
        logits = text.class_logits(embeddings, scale)
        void = F.normalize(self.void_embedding.weight, dim=-1)
        void_logit = scale * F.normalize(embeddings, dim=-1) @ void.t().to(embeddings.dtype)
        return torch.cat([logits, void_logit], dim=-1)
