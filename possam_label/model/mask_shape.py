"""Mask shape encoder: an embedding of each query's predicted mask outline for LDP [I].

Mask-average pooling (LDP) keeps what the pixels inside a mask look like and discards the mask's
geometry. When the frozen CLIP cannot tell classes apart by appearance (this project's small CLIP
trained on its synthetic world, where thing classes differ only by shape), the outline is the
evidence left. The encoder crops each mask's box, resizes it to a fixed square and runs a small CNN;
box aspect ratio and relative area are added because the square resize removes them.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


class MaskShapeEncoder(nn.Module):
    """Per-query shape embedding from mask logits.

    Args:
        hidden_dim: output width (the decoder's query width).
        crop_size: side of the square each mask's box is resampled to.
        channels: output channels of the stride-2 convolutions.
    """

    def __init__(self, hidden_dim: int, crop_size: int = 24, channels: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.crop_size = crop_size
        layers: list[nn.Module] = []
        in_channels = 1
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.GroupNorm(min(8, out_channels), out_channels), nn.GELU()]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers)
        # +2: log aspect ratio and log relative area of the box.
        self.proj = nn.Linear(in_channels + 2, hidden_dim)

    @staticmethod
    def boxes(masks: torch.Tensor) -> torch.Tensor:
        """Tight boxes of binary masks, all at once (torchvision's ``masks_to_boxes`` loops over the
        masks in Python and fails on empty ones; every stage of every training step calls this).

        Args:
            masks: (N, H, W) bool.
        Returns:
            (N, 4) float ``x0, y0, x1, y1`` in pixels (exclusive end); the whole map for empty masks.
        """
        n, h, w = masks.shape
        rows, cols = masks.any(dim=2), masks.any(dim=1)
        ys = torch.arange(h, device=masks.device)
        xs = torch.arange(w, device=masks.device)
        big = torch.tensor(max(h, w), device=masks.device)
        y0 = torch.where(rows, ys, big).amin(dim=1)
        y1 = torch.where(rows, ys, -1).amax(dim=1) + 1
        x0 = torch.where(cols, xs, big).amin(dim=1)
        x1 = torch.where(cols, xs, -1).amax(dim=1) + 1
        empty = ~rows.any(dim=1)
        full = torch.tensor([0, 0, w, h], device=masks.device)
        out = torch.stack([x0, y0, x1, y1], dim=1)
        return torch.where(empty[:, None], full, out).float()

    def forward(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """Shape embeddings of the queries' masks (no gradient into the masks).

        Args:
            mask_logits: (B, Q, H, W) mask logits.
        Returns:
            (B, Q, hidden_dim).
        """
        b, q, h, w = mask_logits.shape
        # Always float32: under bf16 autocast the crops' small convolutions drift by several
        # percent, and the class depends on this embedding alone for shapes.
        with torch.autocast(device_type=mask_logits.device.type, enabled=False):
            probs = mask_logits.detach().float().sigmoid().reshape(b * q, 1, h, w)
            boxes = self.boxes(probs[:, 0] > 0.5)
            indexed = torch.cat([torch.arange(b * q, device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
            crops = roi_align(probs, indexed, output_size=self.crop_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
            feats = self.convs(crops).mean(dim=(2, 3))
            box_w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
            box_h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
            geometry = torch.stack([torch.log(box_w / box_h), torch.log(box_w * box_h / (h * w))], dim=1)
            return self.proj(torch.cat([feats, geometry], dim=1)).view(b, q, -1)
