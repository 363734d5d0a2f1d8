"""Mask shape encoder: an embedding of each query's predicted mask outline for LDP [I].

Mask-average pooling (LDP) keeps what the pixels inside a mask look like and discards the mask's
geometry. When the frozen CLIP cannot tell classes apart by appearance (this project's small CLIP
trained on its synthetic world, where thing classes differ only by shape), the outline is the
evidence left. The encoder crops each mask's box, resizes it to a fixed square and runs a small CNN;
box aspect ratio and relative area are added because the square resize removes them.

The mask logits sit on a stride-4 grid: at this project's 256 px input a small shape spans a few
cells there and its corners are gone. With ``use_pixels`` the encoder also crops the input image in
a square box around the mask at full resolution, where the outline is still sharp, and the mask
channel says which object in the crop is meant.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from .masked_crop import mask_boxes, square_box_crops


# (out_channels, stride) of each convolution. Masks alone: three stride-2 convolutions. With the
# image crop: a deeper stack that keeps full resolution for the first layer, because the outline
# in the pixels is only a few pixels wide at the small model's 256 px input.
MASK_ONLY_LAYERS: tuple[tuple[int, int], ...] = ((16, 2), (32, 2), (64, 2))
WITH_PIXELS_LAYERS: tuple[tuple[int, int], ...] = ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1))
# The wider stack of ``ldp.crop_encoder_arch: batchnorm_wide`` (BatchNorm + ReLU). On crops of the
# small model's own predicted masks (1500 training scenes, things only, 750 steps of 128 crops) it
# named 71 % of 416 matched validation base shapes at 48 px, the GroupNorm stack at 32 px 51 %.
WIDE_LAYERS: tuple[tuple[int, int], ...] = ((32, 1), (32, 2), (64, 1), (64, 2), (128, 1), (128, 2))
# ldp.crop_encoder_arch -> (layers, normalisation).
CROP_ENCODER_ARCHS: dict[str, tuple[tuple[tuple[int, int], ...], str]] = {
    "groupnorm_small": (WITH_PIXELS_LAYERS, "group"),
    "batchnorm_wide": (WIDE_LAYERS, "batch"),
}
# The image crop is the mask's box made square and enlarged by this factor (context around the outline).
PIXEL_BOX_MARGIN = 1.2


class MaskShapeEncoder(nn.Module):
    """Per-query shape embedding from mask logits, optionally with the image inside each mask's box.

    Args:
        hidden_dim: output width (the decoder's query width).
        crop_size: side of the square each mask's box is resampled to.
        layers: (out_channels, stride) of each 3x3 convolution; default ``MASK_ONLY_LAYERS``, or
            ``WITH_PIXELS_LAYERS`` when ``use_pixels``.
        use_pixels: also read the normalised input pixels in a square box around each mask, at
            the input's full resolution (``ldp.crop_encoder``): 3 more input channels. The output
            projection then starts at zero: added to trained heads it changes nothing until trained.
        norm: ``"group"`` (GroupNorm + GELU after each convolution) or ``"batch"`` (BatchNorm +
            ReLU; trains much faster on crops, and a frozen encoder keeps its running statistics).
    """

    def __init__(
        self,
        hidden_dim: int,
        crop_size: int = 24,
        layers: Optional[Sequence[tuple[int, int]]] = None,
        use_pixels: bool = False,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if norm not in ("group", "batch"):
            raise ValueError(f"norm must be 'group' or 'batch', got {norm!r}")
        self.crop_size = crop_size
        self.use_pixels = use_pixels
        if layers is None:
            layers = WITH_PIXELS_LAYERS if use_pixels else MASK_ONLY_LAYERS
        modules: list[nn.Module] = []
        in_channels = 4 if use_pixels else 1
        for out_channels, stride in layers:
            if norm == "group":
                modules += [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1), nn.GroupNorm(min(8, out_channels), out_channels), nn.GELU()]
            else:
                modules += [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]
            in_channels = out_channels
        self.convs = nn.Sequential(*modules)
        # +2: log aspect ratio and log relative area of the box.
        self.proj = nn.Linear(in_channels + 2, hidden_dim)
        if use_pixels:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    @staticmethod
    def boxes(masks: torch.Tensor) -> torch.Tensor:
        """Tight boxes of binary masks: :func:`possam_label.model.masked_crop.mask_boxes`."""
        return mask_boxes(masks)

    def forward(
        self,
        mask_logits: torch.Tensor,
        pixels: Optional[torch.Tensor] = None,
        crop_inputs: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Shape embeddings of the queries' masks (no gradient into the masks or the pixels).

        Args:
            mask_logits: (B, Q, H, W) mask logits.
            pixels: (B, 3, S, S) normalised input pixels (``SAMBackbone.normalize``) whose grid the
                mask logits cover at stride S / W; needed when the encoder ``use_pixels``.
            crop_inputs: :meth:`crop_inputs` of these masks and pixels, when the caller already
                has them (they are then not computed again).
        Returns:
            (B, Q, hidden_dim).
        """
        b, q = mask_logits.shape[:2]
        features = self.features_from_crops(*(crop_inputs if crop_inputs is not None else self.crop_inputs(mask_logits, pixels)))
        with torch.autocast(device_type=mask_logits.device.type, enabled=False):
            return self.proj(features).view(b, q, -1)

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`features` (the input of ``proj``)."""
        return self.proj.in_features

    def features(self, mask_logits: torch.Tensor, pixels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The convolutional features and box geometry before the output projection.

        Args: as :meth:`forward`.
        Returns:
            (B * Q, feature_dim) float32.
        """
        return self.features_from_crops(*self.crop_inputs(mask_logits, pixels))

    def crop_inputs(self, mask_logits: torch.Tensor, pixels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the convolutions read for each mask, and its box geometry (no gradient).

        Args: as :meth:`forward`.
        Returns:
            (B * Q, C, crop, crop) float32 crops (C = 4 with ``use_pixels``: pixels and mask
            probability; else 1) and (B * Q, 2) geometry: log aspect ratio and log relative area
            of each mask's box.
        """
        b, q, h, w = mask_logits.shape
        if self.use_pixels and pixels is None:
            raise ValueError("this shape encoder reads the image (ldp.crop_encoder): pass the normalised pixels")
        # Always float32: under bf16 autocast the crops' small convolutions drift by several
        # percent, and the class depends on this embedding alone for shapes.
        with torch.no_grad(), torch.autocast(device_type=mask_logits.device.type, enabled=False):
            probs = mask_logits.detach().float().sigmoid().reshape(b * q, 1, h, w)
            boxes = self.boxes(probs[:, 0] > 0.5)
            if self.use_pixels:
                crops = self._crops_with_pixels(probs, boxes, pixels.detach().float(), q)
            else:
                indexed = torch.cat([torch.arange(b * q, device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
                crops = roi_align(probs, indexed, output_size=self.crop_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
            box_w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
            box_h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
            geometry = torch.stack([torch.log(box_w / box_h), torch.log(box_w * box_h / (h * w))], dim=1)
        return crops, geometry

    def features_from_crops(self, crops: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """(N, C, crop, crop) crops and (N, 2) geometry (:meth:`crop_inputs`) -> (N, feature_dim) float32."""
        with torch.autocast(device_type=crops.device.type, enabled=False):
            return torch.cat([self.convs(crops.float()).mean(dim=(2, 3)), geometry.float()], dim=1)

    def _crops_with_pixels(self, probs: torch.Tensor, boxes: torch.Tensor, pixels: torch.Tensor, queries: int) -> torch.Tensor:
        """(B*Q, 4, crop, crop): the pixels and the mask probability in each mask's square box.

        The box (mask-logit grid) is made square, enlarged by ``PIXEL_BOX_MARGIN`` and sampled in
        input-pixel coordinates: the outline comes from the full-resolution image, the mask
        (bilinearly resampled) says which object in the crop is meant.
        """
        return torch.cat(square_box_crops(pixels, probs, boxes, queries, self.crop_size, PIXEL_BOX_MARGIN), dim=1)


def crop_encoder_from_config(hidden_dim: int, ldp: Any) -> MaskShapeEncoder:
    """The ``ldp.crop_encoder`` of an ``LDPConfig`` (``crop_encoder_size``, ``crop_encoder_arch``)."""
    if ldp.crop_encoder_arch not in CROP_ENCODER_ARCHS:
        raise ValueError(f"ldp.crop_encoder_arch must be one of {sorted(CROP_ENCODER_ARCHS)}, got {ldp.crop_encoder_arch!r}")
    layers, norm = CROP_ENCODER_ARCHS[ldp.crop_encoder_arch]
    return MaskShapeEncoder(hidden_dim, ldp.crop_encoder_size, layers=layers, use_pixels=True, norm=norm)
