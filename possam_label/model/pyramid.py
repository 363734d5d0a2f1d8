"""Simple feature pyramid (ViTDet) from SAM's single stride-16 map [I]."""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerNorm2d


class SimpleFeaturePyramid(nn.Module):
    """Build res2..res5 (strides 4, 8, 16, 32) from one stride-16 map.

    Args:
        in_channels: channels of the SAM feature (256 for the neck).
        out_channels: channels of every level.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        c = in_channels
        self.scales = nn.ModuleDict(
            {
                "res2": nn.Sequential(
                    nn.ConvTranspose2d(c, c // 2, 2, stride=2),
                    LayerNorm2d(c // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(c // 2, c // 4, 2, stride=2),
                ),
                "res3": nn.ConvTranspose2d(c, c // 2, 2, stride=2),
                "res4": nn.Identity(),
                "res5": nn.MaxPool2d(2, stride=2),
            }
        )
        level_in = {"res2": c // 4, "res3": c // 2, "res4": c, "res5": c}
        self.outputs = nn.ModuleDict(
            {
                name: nn.Sequential(
                    nn.Conv2d(ch, out_channels, 1, bias=False),
                    LayerNorm2d(out_channels),
                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                    LayerNorm2d(out_channels),
                )
                for name, ch in level_in.items()
            }
        )
        self.strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C_in, H/16, W/16) -> {"res2": (B, C, H/4, W/4), ..., "res5": (B, C, H/32, W/32)}."""
        return {name: self.outputs[name](self.scales[name](x)) for name in self.scales}
