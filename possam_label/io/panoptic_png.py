"""COCO-panoptic PNG id encoding: ``id = R + 256 * G + 256**2 * B`` (0 is void)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """(H, W) integer ids -> (H, W, 3) uint8 RGB."""
    ids = np.asarray(id_map).astype(np.uint32)
    if ids.size and int(ids.max()) >= 256**3:
        raise ValueError("panoptic ids must be < 256**3 to fit an RGB PNG")
    rgb = np.empty(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = (ids // 256) % 256
    rgb[..., 2] = ids // 256**2
    return rgb


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) int32 ids."""
    rgb = np.asarray(rgb).astype(np.int32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got shape {rgb.shape}")
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a COCO-panoptic PNG into an (H, W) int32 id map."""
    with Image.open(path) as img:
        if img.mode != "RGB":
            raise ValueError(f"{path}: panoptic PNG must be RGB, got mode {img.mode}")
        return rgb2id(np.asarray(img))


def write_panoptic_png(path: str | Path, id_map: np.ndarray) -> None:
    """Write an (H, W) id map as a COCO-panoptic RGB PNG (not atomic; see io writers)."""
    Image.fromarray(id2rgb(id_map), mode="RGB").save(path, format="PNG")
