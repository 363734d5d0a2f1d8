"""Robust image decoding for auto-labeling: any common file -> (H, W, 3) uint8 RGB, or a clear error.

Every failure raises :class:`ImageDecodeError`, whose message names the file and the reason
(empty file, not an image, truncated, too many pixels, ...), so a batch job can record the reason
per image and carry on.

Normalisation rules (applied in this order):

1. EXIF orientation is applied (``ImageOps.exif_transpose``), so width and height are those of
   the image as displayed; the outputs (panoptic PNG, RLE, ``width``/``height``) use that frame.
2. Modes are converted to RGB:
   - ``RGB`` as is; ``L``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` through Pillow's converters;
   - 16-bit (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and 32-bit ``I`` gray: the top 8 of 16 bits
     (``value >> 8``, values clipped to 0..65535), so the full 16-bit range maps onto 0..255;
   - ``F`` (float) gray: clipped to 0..255 (values in [0, 1] are first scaled by 255);
   - anything with transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index, ``RGBa``):
     alpha-composited onto a white background, because the colour under fully transparent pixels
     is arbitrary (often black) and would otherwise show up as spurious regions.
3. Images with more than ``max_pixels`` pixels (width x height from the header, checked before any
   pixel is decoded) are refused, as are files Pillow itself flags as decompression bombs.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: File extensions (lower case, with the dot) treated as images when listing a directory or glob.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

#: Default pixel limit: Pillow's own decompression-bomb threshold (about 89.5 megapixels,
#: e.g. 9459 x 9459). Above ``2 * Image.MAX_IMAGE_PIXELS`` Pillow refuses on its own, so a larger
#: ``max_pixels`` has no effect beyond that.
DEFAULT_MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageDecodeError(ValueError):
    """A file that cannot be turned into an RGB image; ``reason`` is a short machine-friendly tag.

    Attributes:
        path: the file.
        reason: one of ``missing``, ``empty``, ``unreadable``, ``not_an_image``, ``truncated``,
            ``too_large``, ``zero_size``, ``decode_failed``.
        detail: human-readable detail.
    """

    def __init__(self, path: Union[str, Path], reason: str, detail: str) -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}: {detail}")


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before decoding: size as stored (before EXIF orientation), mode, format."""

    width: int
    height: int
    mode: str
    format: Optional[str]


def is_image_path(path: Union[str, Path]) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ImageDecodeError(path, "missing", "file does not exist") from exc
    except OSError as exc:
        raise ImageDecodeError(path, "unreadable", exc.strerror or str(exc)) from exc
    if not path.is_file():
        raise ImageDecodeError(path, "unreadable", "not a regular file")
    if size == 0:
        raise ImageDecodeError(path, "empty", "file is empty (0 bytes)")


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse bombs; the caller must close the image."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_IMAGE_PIXELS and twice that; make it an error we can report.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(path, "too_large", f"refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(path, "not_an_image", "not a recognised image format") from exc
    except PermissionError as exc:
        raise ImageDecodeError(path, "unreadable", exc.strerror or str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(path, "not_an_image", f"cannot parse header: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        img.close()
        raise ImageDecodeError(path, "zero_size", f"image has size {width}x{height}")
    if width * height > max_pixels:
        img.close()
        raise ImageDecodeError(
            path, "too_large", f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} pixels"
        )
    return img


def read_image_header(path: Union[str, Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Size, mode and format from the header, without decoding pixels.

    Raises:
        ImageDecodeError: missing/empty/unrecognised file or too many pixels.
    """
    path = Path(path)
    _check_file(path)
    img = _open(path, max_pixels)
    try:
        return ImageHeader(width=img.size[0], height=img.size[1], mode=img.mode, format=img.format)
    finally:
        img.close()


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image (any mode) -> (H, W, 3) uint8 RGB array, per the module rules."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and finite.max() <= 1.0:
            values = values * 255.0
        gray = np.clip(np.nan_to_num(values, nan=0.0), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        return np.asarray(_flatten_alpha(img), dtype=np.uint8).copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image_rgb(path: Union[str, Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array in display orientation.

    Args:
        path: image file (JPEG, PNG, WebP, BMP, TIFF, or anything else Pillow reads).
        max_pixels: refuse images whose header declares more pixels than this.

    Returns:
        (H, W, 3) uint8 array; H and W are after EXIF orientation.

    Raises:
        ImageDecodeError: with a reason tag; never any other exception for a bad file.
    """
    return _decode(Path(path), max_pixels, draft_side=None)[0]


def load_image_for_model(
    path: Union[str, Path], max_side: Optional[int], max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, int, int]:
    """Decode an image downscaled so its longest side is at most ``max_side``, plus its full size.

    JPEGs are decoded directly at a reduced scale (libjpeg's DCT scaling by 1/2, 1/4 or 1/8,
    never below the target size) before the final bilinear resize, which is several times faster
    than decoding every pixel of a large photo that the model sees at, say, 1024 pixels.

    Returns:
        (h, w, 3) uint8 array with max(h, w) <= max_side (no upscaling), and the full-resolution
        width and height in display orientation (what :func:`load_image_rgb` would return).
    """
    rgb, (width, height) = _decode(Path(path), max_pixels, draft_side=max_side)
    return resize_longest_side(rgb, max_side), width, height


_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _decode(path: Path, max_pixels: int, draft_side: Optional[int]) -> tuple[np.ndarray, tuple[int, int]]:
    """(rgb, (full width, full height)) in display orientation; ``rgb`` may be reduced by JPEG draft."""
    _check_file(path)
    img = _open(path, max_pixels)
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                # Never accept half-decoded files: the process-wide flag must be off.
                if ImageFile.LOAD_TRUNCATED_IMAGES:
                    raise ImageDecodeError(
                        path, "decode_failed", "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode"
                    )
                stored_w, stored_h = img.size
                orientation = img.getexif().get(0x0112, 1)
                full = (stored_h, stored_w) if orientation in _TRANSPOSING_ORIENTATIONS else (stored_w, stored_h)
                if draft_side is not None and max(stored_w, stored_h) > draft_side and img.format == "JPEG":
                    scale = draft_side / max(stored_w, stored_h)
                    img.draft(img.mode, (math.ceil(stored_w * scale), math.ceil(stored_h * scale)))
                img.load()
                oriented = ImageOps.exif_transpose(img)
                rgb = to_rgb_array(oriented)
        except ImageDecodeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(path, "too_large", f"refused as a decompression bomb ({exc})") from exc
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
            message = str(exc) or type(exc).__name__
            reason = "truncated" if "truncated" in message.lower() or isinstance(exc, EOFError) else "decode_failed"
            raise ImageDecodeError(path, reason, message) from exc
    finally:
        img.close()
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageDecodeError(path, "decode_failed", f"decoded to an unexpected shape {rgb.shape}")
    return rgb, full


def resize_longest_side(image: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """Downscale so that max(H, W) <= ``max_side`` (bilinear, aspect kept); never upscales.

    Args:
        image: (H, W, 3) uint8.
        max_side: limit, or None for no resizing.

    Returns:
        (H', W', 3) uint8, the input itself when no resizing is needed.
    """
    if max_side is None:
        return image
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image
    scale = max_side / float(longest)
    new_w = max(1, int(round(width * scale)))
    new_h = max(1, int(round(height * scale)))
    resized = Image.fromarray(image).resize((new_w, new_h), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)
