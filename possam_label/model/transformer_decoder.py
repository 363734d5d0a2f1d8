"""Mask2Former's masked-attention transformer decoder."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .common import PositionEmbeddingSine
from .heads import MaskHead


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        q = k = x + query_pos
        out = tgt + self.dropout(self.self_attn(q, k, x, need_weights=False)[0])
        return out if self.pre_norm else self.norm(out)


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, attn_mask: Optional[torch.Tensor], pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        attn = self.multihead_attn(x + query_pos, memory + pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        out = tgt + self.dropout(attn)
        return out if self.pre_norm else self.norm(out)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        out = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return out if self.pre_norm else self.norm(out)


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Queries attend to one pyramid level per layer (1/32, 1/16, 1/8 round-robin), restricted to
    the foreground of the previous layer's mask prediction.

    Args:
        in_channels: channels of the multi-scale features.
        hidden_dim: query width.
        num_queries: learnable queries.
        num_layers: decoder layers (predictions are made after the initial queries and every layer).
        num_heads, ffn_dim, dropout, pre_norm: layer sizes.
        mask_head: maps normalised query outputs to mask embeddings.
    """

    num_feature_levels = 3

    def __init__(
        self,
        in_channels: int,
        hidden_dim: int,
        num_queries: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        pre_norm: bool,
        mask_head: MaskHead,
    ) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.self_attention_layers = nn.ModuleList(SelfAttentionLayer(hidden_dim, num_heads, dropout, pre_norm) for _ in range(num_layers))
        self.cross_attention_layers = nn.ModuleList(CrossAttentionLayer(hidden_dim, num_heads, dropout, pre_norm) for _ in range(num_layers))
        self.ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, ffn_dim, dropout, pre_norm) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity()
            for _ in range(self.num_feature_levels)
        )
        self.mask_head = mask_head

    def _predict(self, output: torch.Tensor, mask_features: torch.Tensor, attn_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised queries, mask logits and the attention mask for the next layer."""
        normed = self.decoder_norm(output)
        mask_logits = self.mask_head(normed, mask_features)
        with torch.no_grad():
            small = F.interpolate(mask_logits.float(), size=attn_size, mode="bilinear", align_corners=False)
            # True = blocked; positions with sigmoid < 0.5 are blocked.
            attn_mask = (small.sigmoid() < 0.5).flatten(2)
            # A query that would block everything attends everywhere instead.
            attn_mask[attn_mask.all(-1)] = False
            attn_mask = attn_mask.repeat_interleave(self.num_heads, dim=0)
        return normed, mask_logits, attn_mask

    def forward(self, multi_scale_features: list[torch.Tensor], mask_features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            multi_scale_features: [(B, C, H/32, W/32), (B, C, H/16, W/16), (B, C, H/8, W/8)].
            mask_features: (B, mask_dim, H/4, W/4).
        Returns:
            num_layers + 1 stages of (query outputs (B, Q, hidden) after decoder_norm,
            mask logits (B, Q, H/4, W/4)); the last entry is the final prediction.
        """
        srcs, pos, sizes = [], [], []
        for i, feat in enumerate(multi_scale_features):
            sizes.append(tuple(feat.shape[-2:]))
            pos.append(self.pe_layer(feat).flatten(2).transpose(1, 2))
            srcs.append(self.input_proj[i](feat).flatten(2).transpose(1, 2) + self.level_embed.weight[i][None, None, :])
        b = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)
        stages = []
        normed, mask_logits, attn_mask = self._predict(output, mask_features, sizes[0])
        stages.append((normed, mask_logits))
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.cross_attention_layers[i](output, srcs[level], attn_mask, pos[level], query_pos)
            output = self.self_attention_layers[i](output, query_pos)
            output = self.ffn_layers[i](output)
            normed, mask_logits, attn_mask = self._predict(output, mask_features, sizes[(i + 1) % self.num_feature_levels])
            stages.append((normed, mask_logits))
        return stages
