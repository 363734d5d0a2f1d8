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

import torch
from torch import nn


class ImageDetailStem(nn.Module):
    """Two stride-2 convolutions and one stride-1 convolution on the normalised pixels.

    Args:
        out_channels: channels of the mask features it is added to (``pixel_decoder.mask_dim``).
        channels: width of the first convolution; the later ones use twice this.
        num_groups: GroupNorm groups.
    """

    def __init__(self, out_channels: int, channels: int, num_groups: int) -> None:
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

    def forward(self, normalized: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) padded pixels normalised as the SAM encoder's input (``SAMBackbone.normalize``:
        padding at zero) -> (B, out, S/4, S/4)."""
        return self.proj(self.convs(normalized.to(self.proj.weight.dtype)))
