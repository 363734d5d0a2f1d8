"""Regenerate ``tests/data/autolabel/``: real photos plus deliberately awkward or broken files.

Run from the repository root: ``python tests/data/make_autolabel_inputs.py``. The output is
deterministic (fixed seeds) and committed; this script documents how each file was made.
Sources: the 4 segment-anything photos (Apache-2.0, see photos/LICENSE-segment-anything.txt)
and 2 COCO val2017 images (CC-BY, from /work/shared/data/coco_panoptic_sample).
"""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path("/work/shared/data")
OUT = Path(__file__).resolve().parent / "autolabel"


def _small_rgb(size: tuple[int, int] = (96, 64)) -> Image.Image:
    with Image.open(SHARED / "photos" / "dog.jpg") as img:
        return img.convert("RGB").resize(size, Image.Resampling.BILINEAR)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG header claiming ``width`` x ``height`` RGB pixels, with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "photos").mkdir(parents=True)
    (OUT / "coco").mkdir()
    edge = OUT / "edge_cases"
    edge.mkdir()
    nested = edge / "nested" / "deeper"
    nested.mkdir(parents=True)

    for name in ("dog.jpg", "dogs.jpg", "groceries.jpg", "truck.jpg", "LICENSE-segment-anything.txt"):
        shutil.copyfile(SHARED / "photos" / name, OUT / "photos" / name)
    for name in ("000000142238.jpg", "000000439180.jpg"):
        shutil.copyfile(SHARED / "coco_panoptic_sample" / "images" / name, OUT / "coco" / name)

    rng = np.random.default_rng(0)
    base = _small_rgb()

    # Broken files.
    (edge / "corrupt_random_bytes.jpg").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    buffer = io.BytesIO()
    _small_rgb((160, 120)).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    (edge / "truncated_half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (edge / "zero_bytes.png").write_bytes(b"")
    # Header claims 40000 x 40000 (1.6 gigapixels): Pillow refuses it on open.
    (edge / "bomb_40000x40000.png").write_bytes(_bomb_png(40000, 40000))
    # Header claims 10000 x 10000 (100 megapixels): above our default limit, below Pillow's hard one.
    (edge / "bomb_10000x10000.png").write_bytes(_bomb_png(10000, 10000))

    # Unusual but valid files: each must decode to RGB.
    base.convert("L").save(edge / "grayscale.png")
    rgba = base.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, base.width, dtype=np.uint8), (base.height, 1))
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(edge / "rgba.png")
    la = base.convert("L").convert("LA")
    la.putalpha(Image.fromarray(alpha))
    la.save(edge / "gray_alpha_la.png")
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(edge / "palette.png")
    palette.save(edge / "palette_transparent.png", transparency=0)
    base.convert("CMYK").save(edge / "cmyk.jpg", quality=90)
    gradient16 = np.tile(np.linspace(0, 65535, 80).astype(np.uint16), (48, 1))
    Image.fromarray(gradient16).save(edge / "gray16.png")
    # EXIF orientation 6 (rotate 90 clockwise to display): stored 96x64, displayed 64x96.
    exif = Image.Exif()
    exif[0x0112] = 6
    base.save(edge / "exif_rotated_6.jpg", quality=90, exif=exif.tobytes())
    base.save(nested / "nested.webp", quality=80)
    base.save(edge / "plain.bmp")
    base.save(edge / "plain.tiff")
    # Upper-case extension: still an image.
    base.save(edge / "upper_case.JPG", quality=90)
    # Not an image by extension: must be ignored by directory listing.
    (edge / "README.txt").write_text("not an image; directory listing must skip this file\n")


if __name__ == "__main__":
    main()
