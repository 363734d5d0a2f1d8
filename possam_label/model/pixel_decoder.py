"""Mask2Former's multi-scale deformable-attention pixel decoder, in pure PyTorch.

Deformable attention samples values with ``F.grid_sample`` instead of the custom CUDA op, so
the decoder runs anywhere (CPU included) with the same maths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import PositionEmbeddingSine


def ms_deform_attn_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention core.

    Args:
        value: (B, S, M, D) values of all levels flattened (S = sum of H_l * W_l), M heads of D dims.
        spatial_shapes: [(H_l, W_l)] per level.
        sampling_locations: (B, Lq, M, L, P, 2) in [0, 1] (x, y).
        attention_weights: (B, Lq, M, L, P), softmaxed over L * P.
    Returns:
        (B, Lq, M * D).
    """
    b, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        v = value_list[level].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*M, Lq, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B*M, D, Lq, L, P) weighted over levels and points
    stacked = torch.stack(sampled, dim=-2)
    weights = attention_weights.transpose(1, 2).reshape(b * m, 1, lq, n_levels, n_points)
    out = (stacked * weights).sum(dim=(-1, -2)).view(b, m * d, lq)
    return out.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR).

    Args:
        d_model: channels.
        n_levels: feature levels.
        n_heads: heads (d_model divisible by it).
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        # Initial offsets point in n_heads evenly spread directions, further for later points.
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """
        Args:
            query: (B, Lq, C).
            reference_points: (B, Lq, L, 2) normalised (x, y).
            value_input: (B, S, C) flattened multi-level features.
            spatial_shapes: [(H_l, W_l)].
        Returns:
            (B, Lq, C).
        """
        b, lq, _ = query.shape
        value = self.value_proj(value_input).view(b, value_input.shape[1], self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(b, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(b, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(b, lq, self.n_heads, self.n_levels, self.n_points)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn_sample(value, spatial_shapes, locations, weights)
        return self.output_proj(out)


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention then FFN."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder: deformable encoder on res3..res5, FPN path to res2, per-pixel mask features.

    Args:
        in_channels: channels of each input level (res2..res5).
        conv_dim: transformer/FPN width.
        mask_dim: channels of the mask features.
        num_layers: deformable encoder layers.
        num_heads, num_points, ffn_dim, dropout: encoder sizes.
        num_groups: GroupNorm groups.
    """

    transformer_levels = ("res5", "res4", "res3")  # low to high resolution, as Mask2Former

    def __init__(
        self,
        in_channels: int,
        conv_dim: int,
        mask_dim: int,
        num_layers: int,
        num_heads: int,
        num_points: int,
        ffn_dim: int,
        dropout: float,
        num_groups: int,
    ) -> None:
        super().__init__()
        n_levels = len(self.transformer_levels)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, conv_dim, 1), nn.GroupNorm(num_groups, conv_dim)) for _ in range(n_levels)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.level_embed = nn.Parameter(torch.empty(n_levels, conv_dim).normal_())
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, ffn_dim, dropout, n_levels, num_heads, num_points) for _ in range(num_layers)
        )
        self.lateral_conv = nn.Sequential(nn.Conv2d(in_channels, conv_dim, 1, bias=False), nn.GroupNorm(num_groups, conv_dim))
        self.output_conv = nn.Sequential(
            nn.Conv2d(conv_dim, conv_dim, 3, padding=1, bias=False), nn.GroupNorm(num_groups, conv_dim), nn.ReLU()
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.constant_(self.mask_features.bias, 0)
        self.num_feature_levels = n_levels

    @staticmethod
    def _reference_points(spatial_shapes: list[tuple[int, int]], batch: int, n_levels: int, device: torch.device) -> torch.Tensor:
        points = []
        for h, w in spatial_shapes:
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, device=device) / h,
                torch.linspace(0.5, w - 0.5, w, device=device) / w,
                indexing="ij",
            )
            points.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
        ref = torch.cat(points, 0)  # (S, 2)
        return ref[None, :, None, :].expand(batch, -1, n_levels, -1)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            features: {"res2": (B, C_in, H/4, W/4), ..., "res5": (B, C_in, H/32, W/32)}.
        Returns:
            mask_features: (B, mask_dim, H/4, W/4).
            multi_scale_features: [(B, conv_dim, H/32, W/32), (.., H/16, ..), (.., H/8, ..)].
        """
        srcs, pos, shapes = [], [], []
        for level, name in enumerate(self.transformer_levels):
            x = self.input_proj[level](features[name])
            shapes.append((x.shape[-2], x.shape[-1]))
            p = self.pe_layer(x).flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
            srcs.append(x.flatten(2).transpose(1, 2))
            pos.append(p)
        src = torch.cat(srcs, 1)
        pos_flat = torch.cat(pos, 1)
        ref = self._reference_points(shapes, src.shape[0], len(shapes), src.device).to(src.dtype)
        for layer in self.layers:
            src = layer(src, pos_flat, ref, shapes)
        b = src.shape[0]
        outs = [
            chunk.transpose(1, 2).reshape(b, -1, h, w)
            for chunk, (h, w) in zip(src.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        lateral = self.lateral_conv(features["res2"])
        y = lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        y = self.output_conv(y)
        return self.mask_features(y), outs
