"""Procedural stuff textures of the synthetic world (sky, grass, water, sand, road, brick wall).

Value noise and fractal sums of it are the primitives (also used by the world's layouts and
shapes); each stuff class has a texture function, and a bank of pre-rendered tiles per class keeps
scene rendering cheap. Everything is drawn from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .classes import STUFF_CLASSES


# ------------------------------------------------------------------------------------ noise
def upsample(small: np.ndarray, h: int, w: int, resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize a float32 (h', w') array to (h, w) with PIL (fast, deterministic)."""
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(small, dtype=np.float32), mode="F").resize((w, h), resample)
    )


def value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``cell`` pixels large, shape (h, w)."""
    gh = max(2, int(math.ceil(h / cell)) + 1)
    gw = max(2, int(math.ceil(w / cell)) + 1)
    return upsample(rng.random((gh, gw), dtype=np.float32), h, w, Image.BICUBIC)


def fbm(rng: np.random.Generator, h: int, w: int, cells: Sequence[float]) -> np.ndarray:
    """Sum of value-noise octaves (coarse to fine, halving weights), rescaled to about [0, 1]."""
    total = np.zeros((h, w), np.float32)
    weight, norm = 1.0, 0.0
    for cell in cells:
        total += weight * value_noise(rng, h, w, cell)
        norm += weight
        weight *= 0.5
    return total / norm


def _jitter_color(rng: np.random.Generator, rgb: Sequence[float], amount: float = 0.12) -> np.ndarray:
    """Per-channel gain jitter plus a brightness shift; float32 (3,)."""
    gain = rng.uniform(1.0 - amount, 1.0 + amount, 3) * rng.uniform(0.85, 1.15)
    return np.clip(np.asarray(rgb, np.float32) * gain.astype(np.float32), 0, 255)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """a, b: (3,) colours; t: (h, w) -> (h, w, 3)."""
    return a[None, None, :] + (b - a)[None, None, :] * t[..., None]


def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row coordinates (h, 1) and column coordinates (1, w), float32, for broadcasting."""
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


# --------------------------------------------------------------------------------- textures
# Each texture fills the whole (h, w) canvas (float32 RGB in [0, 255]); the layout then keeps
# the pixels of its region. Coordinates are in pixels so texture scale does not depend on
# the region shape.


def _texture_sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    top = _jitter_color(rng, (60, 115, 200), 0.15)
    bottom = _jitter_color(rng, (165, 200, 240), 0.08)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    sky = _lerp(top, bottom, y ** rng.uniform(0.6, 1.5))
    clouds = fbm(rng, h, w, (rng.uniform(48, 96), 24, 12, 6))
    coverage = rng.uniform(0.45, 0.7)
    density = np.clip((clouds - coverage) / 0.12, 0.0, 1.0) * rng.uniform(0.7, 1.0)
    white = _jitter_color(rng, (245, 245, 250), 0.04)
    shade = 0.85 + 0.15 * value_noise(rng, h, w, 10)  # grey undersides of clouds
    return sky * (1 - density[..., None]) + white[None, None, :] * (shade * density)[..., None]


def _texture_grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = _jitter_color(rng, (70, 140, 45), 0.18)
    # Blades: noise stretched vertically (few rows, full columns) gives thin upright streaks.
    blade_len = rng.uniform(4, 9)
    blades = upsample(rng.random((max(2, int(h / blade_len)), w), dtype=np.float32), h, w)
    patches = value_noise(rng, h, w, rng.uniform(24, 60))
    tone = 0.55 + 0.55 * blades + 0.3 * (patches - 0.5)
    grass = base[None, None, :] * tone[..., None]
    tip = _jitter_color(rng, (170, 200, 80), 0.1)  # some yellowish tips
    tips = np.clip((blades - 0.82) / 0.18, 0, 1) * 0.5
    return grass * (1 - tips[..., None]) + tip[None, None, :] * tips[..., None]


def _texture_water(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    deep = _jitter_color(rng, (20, 70, 150), 0.2)
    light = _jitter_color(rng, (70, 140, 200), 0.15)
    yy, xx = pixel_grid(h, w)
    angle = rng.uniform(-0.25, 0.25)
    along = yy * math.cos(angle) + xx * math.sin(angle)
    warp = value_noise(rng, h, w, rng.uniform(16, 40)) * rng.uniform(4, 12)
    wavelength = rng.uniform(5, 13)
    waves = np.sin((along + warp) * (2 * math.pi / wavelength) + rng.uniform(0, 2 * math.pi))
    depth = value_noise(rng, h, w, rng.uniform(40, 90))
    water = _lerp(deep, light, np.clip(0.35 * depth + 0.3 + 0.2 * waves, 0, 1))
    glint = np.clip((waves - 0.85) / 0.15, 0, 1) * (rng.random((h, w), dtype=np.float32) < 0.35)
    return water + (235 - water) * (0.6 * glint)[..., None]


def _texture_sand(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = _jitter_color(rng, (214, 188, 140), 0.1)
    yy, xx = pixel_grid(h, w)
    angle = rng.uniform(0, math.pi)
    ripples = np.sin(
        (yy * math.cos(angle) + xx * math.sin(angle) + 6 * value_noise(rng, h, w, 30))
        * (2 * math.pi / rng.uniform(10, 20))
    )
    dunes = value_noise(rng, h, w, rng.uniform(50, 100))
    tone = 0.9 + 0.05 * ripples + 0.15 * (dunes - 0.5)
    sand = base[None, None, :] * tone[..., None]
    grain = rng.normal(0.0, 9.0, (h, w)).astype(np.float32)
    specks = rng.random((h, w), dtype=np.float32)
    grain = grain - 45.0 * (specks < 0.03) + 25.0 * (specks > 0.985)
    return sand + grain[..., None]


def _texture_road(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    grey = rng.uniform(55, 95)
    base = _jitter_color(rng, (grey, grey, grey * rng.uniform(0.97, 1.06)), 0.04)
    stains = value_noise(rng, h, w, rng.uniform(20, 50))
    road = base[None, None, :] * (0.85 + 0.3 * stains)[..., None]
    road = road + rng.normal(0.0, 7.0, (h, w)).astype(np.float32)[..., None]
    # Lane marks: 1-2 parallel dashed lines in a random direction through the canvas.
    yy, xx = pixel_grid(h, w)
    angle = rng.uniform(0, math.pi)
    across = xx * math.cos(angle) + yy * math.sin(angle)
    along = -xx * math.sin(angle) + yy * math.cos(angle)
    centre = float(np.median(across)) + rng.uniform(-0.25, 0.25) * min(h, w)
    spacing = rng.uniform(35, 70)
    half_width = rng.uniform(1.2, 2.8)
    period, dash = rng.uniform(20, 40), rng.uniform(0.4, 0.7)
    paint = _jitter_color(rng, (235, 235, 230) if rng.random() < 0.6 else (230, 190, 40), 0.05)
    marks = np.zeros((h, w), bool)
    for k in range(int(rng.integers(1, 3))):
        line = np.abs(across - (centre + k * spacing)) < half_width
        dashed = ((along / period + rng.random()) % 1.0) < dash
        marks |= line & dashed
    road[marks] = paint * rng.uniform(0.85, 1.0)
    return road


def _texture_brick(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    brick_h = rng.uniform(8, 16)
    brick_w = brick_h * rng.uniform(1.8, 2.8)
    mortar = rng.uniform(1.0, 2.2)
    brick_color = _jitter_color(rng, (165, 72, 50), 0.15)
    mortar_color = _jitter_color(rng, (190, 185, 175), 0.08)
    yy, xx = pixel_grid(h, w)
    yy = np.broadcast_to(yy + rng.uniform(0, brick_h), (h, w))
    row = np.floor(yy / brick_h).astype(np.int64)
    xs = xx + rng.uniform(0, brick_w) + (row % 2) * (brick_w / 2)
    col = np.floor(xs / brick_w).astype(np.int64)
    rows, cols = int(row.max()) + 1, int(col.max()) + 1
    per_brick = rng.normal(1.0, 0.1, (rows, cols)).astype(np.float32)
    in_mortar = ((yy - row * brick_h) < mortar) | ((xs - col * brick_w) < mortar)
    tone = per_brick[row, col] * (0.9 + 0.2 * value_noise(rng, h, w, 6))
    wall = brick_color[None, None, :] * tone[..., None]
    wall[in_mortar] = mortar_color
    return wall + rng.normal(0.0, 5.0, (h, w)).astype(np.float32)[..., None]


_TEXTURES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "sky": _texture_sky,
    "grass": _texture_grass,
    "water": _texture_water,
    "sand": _texture_sand,
    "road": _texture_road,
    "brick wall": _texture_brick,
}

# Texture bank. Rendering a texture costs several ms, too much for trainers that render
# thousands of scenes on two cores, so each stuff class gets a bank of pre-rendered variant
# tiles 1.5x the scene size (built lazily, once per process, from a fixed seed: independent of
# the scene seed and of rendering order). A scene picks a variant, a random crop, flips and a
# colour gain, all from its own generator.
TEXTURE_VARIANTS = 16  # per stuff class at 256 px; fewer for large scenes (memory cap below)
_TEXTURE_BANK_SEED = 0x5EED
_TEXTURE_BANK_BYTES = 48 * 2**20
_GRAIN_TILE = 512


def _texture_tile_size(size: int) -> int:
    return int(math.ceil(1.5 * size))


def _num_texture_variants(size: int) -> int:
    per_tile = _texture_tile_size(size) ** 2 * 3
    return int(np.clip(_TEXTURE_BANK_BYTES // (len(STUFF_CLASSES) * per_tile), 2, TEXTURE_VARIANTS))


@lru_cache(maxsize=128)
def _texture_tile(name: str, variant: int, tile: int) -> np.ndarray:
    """(tile, tile, 3) uint8 read-only texture of stuff class ``name``."""
    rng = np.random.default_rng([_TEXTURE_BANK_SEED, STUFF_CLASSES.index(name), variant, tile])
    out = np.clip(np.rint(_TEXTURES[name](rng, tile, tile)), 0, 255).astype(np.uint8)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=1)
def _grain_tile() -> np.ndarray:
    tile = np.random.default_rng(_TEXTURE_BANK_SEED).standard_normal((_GRAIN_TILE, _GRAIN_TILE), dtype=np.float32)
    tile.flags.writeable = False
    return tile


def pixel_grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 standard-normal pixel noise (a random crop of a fixed tile when it fits)."""
    if h > _GRAIN_TILE or w > _GRAIN_TILE:
        return rng.standard_normal((h, w), dtype=np.float32)
    oy, ox = int(rng.integers(0, _GRAIN_TILE - h + 1)), int(rng.integers(0, _GRAIN_TILE - w + 1))
    return _grain_tile()[oy : oy + h, ox : ox + w]


def prepare_texture_bank(size: int = 256) -> None:
    """Build every texture tile for ``size`` now (about 1-3 s), e.g. before forking workers."""
    for name in STUFF_CLASSES:
        for variant in range(_num_texture_variants(size)):
            _texture_tile(name, variant, _texture_tile_size(size))


def stuff_texture(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 texture of ``name`` for one scene (bank tile, crop, flips, gain)."""
    tile_size = _texture_tile_size(max(h, w))
    tile = _texture_tile(name, int(rng.integers(_num_texture_variants(max(h, w)))), tile_size)
    oy, ox = int(rng.integers(0, tile_size - h + 1)), int(rng.integers(0, tile_size - w + 1))
    crop = tile[oy : oy + h, ox : ox + w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if name != "sky" and rng.random() < 0.5:  # the sky keeps its vertical gradient
        crop = crop[::-1]
    gain = (rng.uniform(0.92, 1.08, 3) * rng.uniform(0.85, 1.15)).astype(np.float32)
    return crop * gain
