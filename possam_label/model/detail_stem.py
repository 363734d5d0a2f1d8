"""Image detail stem: stride-4 features from the input pixels for the mask features [I].

Mask2Former's pixel decoder adds the backbone's stride-4 stage to its mask features, and that is
where mask outlines get their detail. A plain ViT such as SAM's has no stride-4 stage: the simple
feature pyramid deconvolves the stride-16 map, which at SAM's full 1024 px input still carries fine
detail, but at a small input (this project's 256 px small SAM: a 16 x 16 map) gives blob-shaped
masks whose outlines no longer tell a star from a pentagon. The stem restores that stage with a few
trainable convolutions on the pixels. Its last layer starts at zero, so switching it on in a
warm-started run (``train.init_heads``) starts from exactly the previous model.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ImageDetailStem(nn.Module):
    """Two stride-2 convolutions and one stride-1 convolution on the normalised pixels.

    Args:
        out_channels: channels of the mask features it is added to (``pixel_decoder.mask_dim``).
        channels: width of the first convolution; the later ones use twice this.
        num_groups: GroupNorm groups.
        pixel_mean, pixel_std: per-channel normalisation on the [0, 255] scale (SAM's).
    """

    def __init__(self, out_channels: int, channels: int, num_groups: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
        super().__init__()
        wide = 2 * channels
        self.convs = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1),
            nn.GroupNorm(min(num_groups, channels), channels),
            nn.GELU(),
            nn.Conv2d(channels, wide, 3, stride=2, padding=1),
            nn.GroupNorm(min(num_groups, wide), wide),
            nn.GELU(),
            nn.Conv2d(wide, wide, 3, padding=1),
            nn.GroupNorm(min(num_groups, wide), wide),
            nn.GELU(),
        )
        self.proj = nn.Conv2d(wide, out_channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.register_buffer("pixel_mean", torch.tensor(list(pixel_mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(list(pixel_std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) padded pixels on the [0, 255] scale (padding = the mean) -> (B, out, S/4, S/4)."""
        x = (pixels.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return self.proj(self.convs(x.to(self.proj.weight.dtype)))
