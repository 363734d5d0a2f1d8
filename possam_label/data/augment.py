"""Joint image + mask transforms: large-scale jitter for training, resize-and-pad for evaluation.

Both work on the sample dicts of :class:`possam_label.data.coco_panoptic.CocoPanopticDataset`:
``image`` uint8 (3, H, W), ``masks`` bool (N, H, W) with ``labels`` int64 (N,) (both optional
together), optionally ``ignore`` bool (H, W); other keys pass through. They return a new dict with the image at
``target_size x target_size`` and add

* ``valid``: bool (T, T), True where the output shows image content (False on padding);
* ``resized_size``: (h, w) of the resized image before crop/pad (for eval: the region of the
  padded canvas that holds the image; predictions are cropped to it and resized back).

Geometry conventions, so that image and masks stay aligned: the image is resized bilinearly
with half-pixel centres (``align_corners=False``, antialiased when shrinking) and masks are
resized by nearest neighbour under the same half-pixel mapping (output pixel i samples input
pixel ``floor((i + 0.5) * in / out)``). Masks are resampled directly inside the crop window,
so memory is N x T x T even when the jittered image is twice the target size.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def _resized_shape(height: int, width: int, longest: float) -> tuple[int, int]:
    """(h, w) with the longest side scaled to ``longest`` (rounded), each side >= 1."""
    scale = longest / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> float32 (3, h, w), bilinear, antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.float()
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(
        image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )[0]


def _nearest_index(out_start: int, out_len: int, out_total: int, in_total: int) -> torch.Tensor:
    """Input indices sampled by output pixels ``out_start .. out_start+out_len-1`` (half-pixel nearest)."""
    i = torch.arange(out_start, out_start + out_len, dtype=torch.float64)
    return ((i + 0.5) * (in_total / out_total)).floor().long().clamp_(0, in_total - 1)


def _place(
    sample: dict,
    resized: tuple[int, int],
    offset: tuple[int, int],
    target: int,
    flip: bool,
    pad_value: float,
) -> dict:
    """Resize ``sample`` to ``resized``, take the window at ``offset`` (may exceed the image:
    the rest is padding) of size target x target, optionally flipped horizontally."""
    image = sample["image"]
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
    in_h, in_w = int(image.shape[-2]), int(image.shape[-1])
    rh, rw = resized
    oy, ox = offset
    # Visible part of the resized image inside the window.
    vh, vw = max(0, min(rh - oy, target)), max(0, min(rw - ox, target))

    if flip:
        image = image.flip(-1)
    resized_image = _resize_image(image, (rh, rw))
    out_image = torch.full((3, target, target), float(pad_value), dtype=torch.float32)
    out_image[:, :vh, :vw] = resized_image[:, oy : oy + vh, ox : ox + vw]
    out_image = out_image.round_().clamp_(0, 255).to(torch.uint8)

    rows = _nearest_index(oy, vh, rh, in_h)
    cols = _nearest_index(ox, vw, rw, in_w)
    if flip:
        cols = in_w - 1 - cols

    def resample(planes: torch.Tensor, fill: bool) -> torch.Tensor:
        """(..., H, W) bool -> (..., target, target) bool via the index maps."""
        out = torch.full(planes.shape[:-2] + (target, target), fill, dtype=torch.bool)
        out[..., :vh, :vw] = planes[..., rows, :][..., :, cols]
        return out

    out = dict(sample)
    out["image"] = out_image
    if sample.get("masks") is not None:  # inference samples may come without targets
        masks = sample["masks"]
        if masks.ndim != 3 or tuple(masks.shape[-2:]) != (in_h, in_w):
            raise ValueError(f"masks of shape {tuple(masks.shape)} do not match the image ({in_h}, {in_w})")
        labels = sample["labels"]
        if labels.shape[0] != masks.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {masks.shape[0]} masks")
        out_masks = resample(masks.bool(), False)
        keep = out_masks.flatten(1).any(dim=1)
        out["masks"] = out_masks[keep]
        out["labels"] = labels[keep]
    if "ignore" in sample and sample["ignore"] is not None:
        out["ignore"] = resample(sample["ignore"].bool(), True)  # padding carries no labels
    valid = torch.zeros((target, target), dtype=torch.bool)
    valid[:vh, :vw] = True
    out["valid"] = valid
    out["resized_size"] = (rh, rw)
    return out


class LargeScaleJitter:
    """Training augmentation: flip, random rescale, fixed-size random crop / pad.

    1. horizontal flip with probability ``flip_prob``;
    2. resize so the longest side is ``s * target_size`` with ``s ~ U[min_scale, max_scale]``;
    3. a ``target_size`` window: a uniformly random crop along each side longer than the
       target, padding (bottom/right, ``pad_value``) along shorter sides.

    Masks that end up empty are dropped together with their labels. Randomness comes only from
    the ``torch.Generator`` passed to :meth:`__call__`, else from the transform's own generator
    (seeded with ``seed``; unseeded: from torch's global RNG). In DataLoader workers call
    :meth:`reseed` in ``worker_init_fn`` so workers draw different streams.
    """

    def __init__(
        self,
        target_size: int = 1024,
        min_scale: float = 0.1,
        max_scale: float = 2.0,
        flip_prob: float = 0.5,
        pad_value: float = 0.0,
        seed: Optional[int] = None,
    ) -> None:
        if target_size < 1:
            raise ValueError(f"target_size must be >= 1, got {target_size}")
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.target_size = int(target_size)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.flip_prob = float(flip_prob)
        self.pad_value = float(pad_value)
        self.generator: Optional[torch.Generator] = None
        if seed is not None:
            self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the transform's own generator from ``seed``."""
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, sample: dict, generator: Optional[torch.Generator] = None) -> dict:
        gen = generator if generator is not None else self.generator
        u = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        flip = u[0] < self.flip_prob
        scale = self.min_scale + (self.max_scale - self.min_scale) * u[1]
        h, w = int(sample["image"].shape[-2]), int(sample["image"].shape[-1])
        rh, rw = _resized_shape(h, w, scale * self.target_size)
        # Crop offsets uniform over the valid range (0 when the side is shorter than the target).
        oy = min(int(math.floor(u[2] * (max(rh - self.target_size, 0) + 1))), max(rh - self.target_size, 0))
        ox = min(int(math.floor(u[3] * (max(rw - self.target_size, 0) + 1))), max(rw - self.target_size, 0))
        return _place(sample, (rh, rw), (oy, ox), self.target_size, flip, self.pad_value)


class ResizeLongestSidePad:
    """Evaluation transform (SAM's way): longest side -> ``target_size``, pad bottom/right."""

    def __init__(self, target_size: int = 1024, pad_value: float = 0.0) -> None:
        if target_size < 1:
            raise ValueError(f"target_size must be >= 1, got {target_size}")
        self.target_size = int(target_size)
        self.pad_value = float(pad_value)

    def __call__(self, sample: dict) -> dict:
        h, w = int(sample["image"].shape[-2]), int(sample["image"].shape[-1])
        resized = _resized_shape(h, w, self.target_size)
        out = _place(sample, resized, (0, 0), self.target_size, False, self.pad_value)
        out["original_size"] = (h, w)
        return out
