"""Image transforms shared by the predictors: SAM's resize-longest-side and the padded model input."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def resize_longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """SAM's ResizeLongestSide output shape."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def check_rgb_image(index: int, image: np.ndarray) -> np.ndarray:
    """The image as an array; ValueError naming the image when it is not (H, W, 3) uint8 RGB."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image {index}: expected an (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
    return arr


def preprocess(images: Sequence[np.ndarray], size: int, pad_value: Sequence[float], device: torch.device) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Resize each image's longest side to ``size`` and pad bottom/right to ``size x size``.

    Args:
        images: (H, W, 3) uint8 RGB arrays of any sizes.
        size: encoder input side.
        pad_value: per-channel fill of the padding ([0, 255] scale; SAM's pixel mean so that
            padding is zero after normalisation).
    Returns:
        pixels (B, 3, size, size) float32 on ``device`` and the resized (h, w) of each image.
    """
    batch = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=device)
    batch[:] = torch.tensor(pad_value, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    shapes = []
    for i, image in enumerate(images):
        arr = check_rgb_image(i, image)
        h, w = resize_longest_side_shape(arr.shape[0], arr.shape[1], size)
        # Arrays from Ray are read-only; torch wants writable memory.
        arr = np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy()
        t = torch.from_numpy(arr).to(device).permute(2, 0, 1)[None].float()
        if (h, w) != tuple(arr.shape[:2]):
            t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 255)
        batch[i, :, :h, :w] = t[0]
        shapes.append((h, w))
    return batch, shapes
