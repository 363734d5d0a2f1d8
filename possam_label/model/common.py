"""Small building blocks shared by the model components."""

from __future__ import annotations

import math

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

__all__ = ["LayerNorm2d", "MLP", "PositionEmbeddingSine", "masked_average_pool"]


class MLP(nn.Module):
    """Plain MLP with ReLU between layers.

    Args:
        input_dim, hidden_dim, output_dim: widths.
        num_layers: number of linear layers (>= 1).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class PositionEmbeddingSine(nn.Module):
    """DETR sine positional encoding of a feature map.

    Args:
        num_pos_feats: half the output channels.
        temperature: frequency base.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 2 * num_pos_feats, H, W)."""
        b, _, h, w = x.shape
        y_embed = torch.arange(1, h + 1, device=x.device, dtype=torch.float32).view(1, h, 1).expand(b, h, w)
        x_embed = torch.arange(1, w + 1, device=x.device, dtype=torch.float32).view(1, 1, w).expand(b, h, w)
        eps, scale = 1e-6, 2 * math.pi
        y_embed = y_embed / (h + eps) * scale
        x_embed = x_embed / (w + eps) * scale
        dim_t = torch.arange(self.num_pos_feats, device=x.device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(x.dtype)


def masked_average_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Average features inside binary masks.

    Args:
        features: (B, C, H, W).
        masks: (B, Q, H, W) binary (float or bool), same spatial size.
    Returns:
        (B, Q, C); zero vectors for empty masks.
    """
    masks = masks.to(features.dtype)
    summed = torch.einsum("bqhw,bchw->bqc", masks, features)
    return summed / (masks.sum(dim=(-2, -1))[..., None] + 1e-8)
