"""Mask head and mask-quality (IoU) head."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP


class MaskHead(nn.Module):
    """Mask logits as the dot product of a per-query embedding with per-pixel mask features.

    Args:
        hidden_dim: query width.
        mask_dim: mask-feature channels.
        num_layers: MLP depth.
    """

    def __init__(self, hidden_dim: int, mask_dim: int, num_layers: int) -> None:
        super().__init__()
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, num_layers)

    def forward(self, queries: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """(B, Q, hidden) normalised queries, (B, mask_dim, H, W) -> (B, Q, H, W) mask logits."""
        return torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), mask_features)


class MaskQualityHead(nn.Module):
    """Predicts each query mask's IoU with its ground truth (SAM-style IoU head) [I].

    Args:
        hidden_dim: query width.
        mlp_dim: MLP hidden width.
        num_layers: MLP depth.
    """

    def __init__(self, hidden_dim: int, mlp_dim: int, num_layers: int) -> None:
        super().__init__()
        self.mlp = MLP(hidden_dim, mlp_dim, 1, num_layers)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, Q, hidden) normalised queries -> (B, Q) predicted IoU in [0, 1]."""
        return self.mlp(queries).squeeze(-1).sigmoid()
