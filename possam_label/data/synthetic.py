"""The synthetic world: procedurally rendered panoptic scenes with exact ground truth.

A scene is a layout of 1-3 *stuff* regions (sky, grass, water, sand, road, brick wall), each
filled with its own procedural texture, covered by 0-8 *thing* instances whose class is their
shape (circle, square, triangle, star, hexagon, cross, heart, ring, arrow, moon, diamond,
pentagon). Thing colours are drawn from a wide palette independently of the class, so only the
shape tells the class. Later instances occlude earlier ones; an instance left with less than
30 % of its area visible (occluded or cut by the image border) or with fewer than
``MIN_THING_AREA`` pixels is not drawn at all, so every ground-truth segment is reasonable.

Everything is drawn from the ``numpy.random.Generator`` passed in, so a scene is a pure
function of the generator state: the same seed gives identical pixels and ids.

The class table (names, synonyms, ids, colours) lives in
``possam_label/assets/synthetic_world/vocab.yaml`` and the base/novel split in ``splits.yaml``
next to it. :func:`generate_dataset` writes a COCO-panoptic dataset in the detectron2 layout::

    DIR/images/{seed}_{index:06d}.png      RGB scene (PNG: lossless, so pixels and ids agree)
    DIR/panoptic/{seed}_{index:06d}.png    RGB-encoded segment ids (id = R + 256 G + 256^2 B)
    DIR/panoptic.json                      images, annotations (segments_info), categories

Segment ids in a scene are 1..N (stuff first, then things in drawing order); 0 is void (only
used for a stuff region that things cover almost entirely).
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import yaml
from PIL import Image, ImageDraw

from possam_label.io.panoptic_png import id2rgb

if TYPE_CHECKING:  # vocab.py is imported lazily at run time (see load_world_vocabulary)
    from possam_label.vocab import Vocabulary

logger = logging.getLogger(__name__)

THING_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "cross",
    "heart", "ring", "arrow", "moon", "diamond", "pentagon",
)
STUFF_CLASSES: tuple[str, ...] = ("sky", "grass", "water", "sand", "road", "brick wall")

# Thing geometry, in pixels at the output resolution: diameter of the circle the shape fits in.
MIN_THING_SIZE = 18.0
MAX_THING_SIZE = 90.0
MAX_THINGS = 8
MIN_VISIBLE_FRACTION = 0.3  # of the instance's full (unoccluded, unclipped) area
MIN_THING_AREA = 40  # pixels at 256x256; scaled with the image area
MIN_STUFF_FRACTION = 0.06  # each stuff region of a layout covers at least this share of the image
MIN_STUFF_AREA_FRACTION = 0.002  # visible stuff below this share of the image becomes void
_SUPERSAMPLE = 2  # things are drawn at 2x and box-filtered: anti-aliased edges, exact ids

_ASSET_DIR = ("assets", "synthetic_world")


# ------------------------------------------------------------------------------- class table
@dataclass(frozen=True)
class WorldClass:
    """One class of the synthetic world, as listed in ``vocab.yaml``."""

    name: str
    synonyms: tuple[str, ...]
    isthing: bool
    id: int
    color: tuple[int, int, int]


def _read_asset_yaml(file_name: str) -> object:
    resource = resources.files("possam_label").joinpath(*_ASSET_DIR, file_name)
    with resources.as_file(resource) as path:
        try:
            return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the synthetic world's {file_name}: {err}") from None


def world_vocab_path() -> Path:
    """Path of ``vocab.yaml`` (valid input for :func:`possam_label.vocab.load_vocabulary`)."""
    resource = resources.files("possam_label").joinpath(*_ASSET_DIR, "vocab.yaml")
    return Path(str(resource))


@lru_cache(maxsize=1)
def world_classes() -> tuple[WorldClass, ...]:
    """All classes of the world in ``vocab.yaml`` order (things first, then stuff)."""
    entries = _read_asset_yaml("vocab.yaml")
    if not isinstance(entries, list):
        raise ValueError("synthetic_world/vocab.yaml: expected a list of classes")
    out = []
    for j, entry in enumerate(entries):
        try:
            out.append(
                WorldClass(
                    name=str(entry["name"]),
                    synonyms=tuple([str(entry["name"])] + [str(s) for s in entry.get("synonyms", [])]),
                    isthing=bool(entry["isthing"]),
                    id=int(entry["id"]),
                    color=tuple(int(c) for c in entry["color"]),  # type: ignore[arg-type]
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"synthetic_world/vocab.yaml: entry {j}: {err!r}") from None
    names = [c.name for c in out]
    expected = set(THING_CLASSES) | set(STUFF_CLASSES)
    if set(names) != expected or len(names) != len(expected):
        raise ValueError(
            f"synthetic_world/vocab.yaml lists {sorted(names)}, the renderer knows {sorted(expected)}"
        )
    for c in out:
        if c.isthing != (c.name in THING_CLASSES):
            raise ValueError(f"synthetic_world/vocab.yaml: {c.name!r} has the wrong isthing flag")
    return tuple(out)


def _class_by_name() -> dict[str, WorldClass]:
    return {c.name: c for c in world_classes()}


@lru_cache(maxsize=1)
def _world_splits_cached() -> tuple[tuple[str, ...], tuple[str, ...]]:
    data = _read_asset_yaml("splits.yaml")
    if not isinstance(data, dict) or set(data) != {"base", "novel"}:
        raise ValueError("synthetic_world/splits.yaml: expected a mapping with keys 'base' and 'novel'")
    base, novel = tuple(data["base"]), tuple(data["novel"])
    names = [c.name for c in world_classes()]
    if sorted(base + novel) != sorted(names):
        raise ValueError("synthetic_world/splits.yaml: base + novel must list every class exactly once")
    # Keep the vocab.yaml order inside each split so derived vocabularies are stable.
    return tuple(n for n in names if n in base), tuple(n for n in names if n in novel)


def world_splits() -> dict[str, list[str]]:
    """``{"base": [...], "novel": [...]}``: class names of each split, in vocab.yaml order."""
    base, novel = _world_splits_cached()
    return {"base": list(base), "novel": list(novel)}


def classes_for_split(split: str) -> list[str]:
    """Class names for ``"all"``, ``"base"`` or ``"novel"``."""
    if split == "all":
        return [c.name for c in world_classes()]
    splits = world_splits()
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; use 'all', 'base' or 'novel'")
    return splits[split]


def load_world_vocabulary(split: str = "all") -> "Vocabulary":
    """The world's :class:`~possam_label.vocab.Vocabulary` (``"all"``, ``"base"`` or ``"novel"``).

    Category ids are the world's ids in every split, so a base vocabulary reads the base
    classes of any world dataset and drops the others.
    """
    from possam_label.vocab import Vocabulary, load_vocabulary_file

    full = load_vocabulary_file(world_vocab_path())
    keep = set(classes_for_split(split))
    idx = [i for i, n in enumerate(full.names) if n in keep]
    return Vocabulary(
        names=tuple(full.names[i] for i in idx),
        synonyms=tuple(full.synonyms[i] for i in idx),
        isthing=tuple(full.isthing[i] for i in idx),
        category_ids=tuple(full.category_ids[i] for i in idx),
        colors=tuple(full.colors[i] for i in idx),
    )


def coco_categories(classes: Optional[Iterable[str]] = None) -> list[dict]:
    """COCO-panoptic ``categories`` entries ``{id, name, supercategory, isthing, color, synonyms}``.

    ``synonyms`` (excluding the name) is an extra key that
    :meth:`possam_label.vocab.Vocabulary.from_coco_categories` reads; COCO tools ignore it.
    """
    keep = None if classes is None else set(classes)
    return [
        {
            "id": c.id,
            "name": c.name,
            "supercategory": "shape" if c.isthing else "scenery",
            "isthing": int(c.isthing),
            "color": list(c.color),
            "synonyms": list(c.synonyms[1:]),
        }
        for c in world_classes()
        if keep is None or c.name in keep
    ]


def resolve_classes(
    classes: Optional[Sequence[str]] = None, exclude_classes: Optional[Sequence[str]] = None
) -> list[str]:
    """The class names a scene may use, in vocab.yaml order; checks the names."""
    known = [c.name for c in world_classes()]
    chosen = list(known) if classes is None else list(classes)
    for name in list(chosen) + list(exclude_classes or []):
        if name not in known:
            raise ValueError(f"unknown synthetic-world class {name!r}; classes: {known}")
    excluded = set(exclude_classes or [])
    result = [n for n in known if n in set(chosen) and n not in excluded]
    if not any(n in STUFF_CLASSES for n in result):
        raise ValueError(f"a scene needs at least one stuff class ({list(STUFF_CLASSES)}); got {result}")
    return result


# ------------------------------------------------------------------------------------ noise
def _upsample(small: np.ndarray, h: int, w: int, resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize a float32 (h', w') array to (h, w) with PIL (fast, deterministic)."""
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(small, dtype=np.float32), mode="F").resize((w, h), resample)
    )


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``cell`` pixels large, shape (h, w)."""
    gh = max(2, int(math.ceil(h / cell)) + 1)
    gw = max(2, int(math.ceil(w / cell)) + 1)
    return _upsample(rng.random((gh, gw), dtype=np.float32), h, w, Image.BICUBIC)


def _fbm(rng: np.random.Generator, h: int, w: int, cells: Sequence[float]) -> np.ndarray:
    """Sum of value-noise octaves (coarse to fine, halving weights), rescaled to about [0, 1]."""
    total = np.zeros((h, w), np.float32)
    weight, norm = 1.0, 0.0
    for cell in cells:
        total += weight * _value_noise(rng, h, w, cell)
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


# --------------------------------------------------------------------------------- textures
# Each texture fills the whole (h, w) canvas (float32 RGB in [0, 255]); the layout then keeps
# the pixels of its region. Coordinates are in pixels so texture scale does not depend on
# the region shape.


def _texture_sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    top = _jitter_color(rng, (60, 115, 200), 0.15)
    bottom = _jitter_color(rng, (165, 200, 240), 0.08)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    sky = _lerp(top, bottom, y ** rng.uniform(0.6, 1.5))
    clouds = _fbm(rng, h, w, (rng.uniform(48, 96), 24, 12, 6))
    coverage = rng.uniform(0.45, 0.7)
    density = np.clip((clouds - coverage) / 0.12, 0.0, 1.0) * rng.uniform(0.7, 1.0)
    white = _jitter_color(rng, (245, 245, 250), 0.04)
    shade = 0.85 + 0.15 * _value_noise(rng, h, w, 10)  # grey undersides of clouds
    return sky * (1 - density[..., None]) + white[None, None, :] * (shade * density)[..., None]


def _texture_grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = _jitter_color(rng, (70, 140, 45), 0.18)
    # Blades: noise stretched vertically (few rows, full columns) gives thin upright streaks.
    blade_len = rng.uniform(4, 9)
    blades = _upsample(rng.random((max(2, int(h / blade_len)), w), dtype=np.float32), h, w)
    patches = _value_noise(rng, h, w, rng.uniform(24, 60))
    tone = 0.55 + 0.55 * blades + 0.3 * (patches - 0.5)
    grass = base[None, None, :] * tone[..., None]
    tip = _jitter_color(rng, (170, 200, 80), 0.1)  # some yellowish tips
    tips = np.clip((blades - 0.82) / 0.18, 0, 1) * 0.5
    return grass * (1 - tips[..., None]) + tip[None, None, :] * tips[..., None]


def _texture_water(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    deep = _jitter_color(rng, (20, 70, 150), 0.2)
    light = _jitter_color(rng, (70, 140, 200), 0.15)
    yy, xx = _grid(h, w)
    angle = rng.uniform(-0.25, 0.25)
    along = yy * math.cos(angle) + xx * math.sin(angle)
    warp = _value_noise(rng, h, w, rng.uniform(16, 40)) * rng.uniform(4, 12)
    wavelength = rng.uniform(5, 13)
    waves = np.sin((along + warp) * (2 * math.pi / wavelength) + rng.uniform(0, 2 * math.pi))
    depth = _value_noise(rng, h, w, rng.uniform(40, 90))
    water = _lerp(deep, light, np.clip(0.35 * depth + 0.3 + 0.2 * waves, 0, 1))
    glint = np.clip((waves - 0.85) / 0.15, 0, 1) * (rng.random((h, w), dtype=np.float32) < 0.35)
    return water + (235 - water) * (0.6 * glint)[..., None]


def _texture_sand(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = _jitter_color(rng, (214, 188, 140), 0.1)
    yy, xx = _grid(h, w)
    angle = rng.uniform(0, math.pi)
    ripples = np.sin(
        (yy * math.cos(angle) + xx * math.sin(angle) + 6 * _value_noise(rng, h, w, 30))
        * (2 * math.pi / rng.uniform(10, 20))
    )
    dunes = _value_noise(rng, h, w, rng.uniform(50, 100))
    tone = 0.9 + 0.05 * ripples + 0.15 * (dunes - 0.5)
    sand = base[None, None, :] * tone[..., None]
    grain = rng.normal(0.0, 9.0, (h, w)).astype(np.float32)
    specks = rng.random((h, w), dtype=np.float32)
    grain = grain - 45.0 * (specks < 0.03) + 25.0 * (specks > 0.985)
    return sand + grain[..., None]


def _texture_road(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    grey = rng.uniform(55, 95)
    base = _jitter_color(rng, (grey, grey, grey * rng.uniform(0.97, 1.06)), 0.04)
    stains = _value_noise(rng, h, w, rng.uniform(20, 50))
    road = base[None, None, :] * (0.85 + 0.3 * stains)[..., None]
    road = road + rng.normal(0.0, 7.0, (h, w)).astype(np.float32)[..., None]
    # Lane marks: 1-2 parallel dashed lines in a random direction through the canvas.
    yy, xx = _grid(h, w)
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
    yy, xx = _grid(h, w)
    yy = np.broadcast_to(yy + rng.uniform(0, brick_h), (h, w))
    row = np.floor(yy / brick_h).astype(np.int64)
    xs = xx + rng.uniform(0, brick_w) + (row % 2) * (brick_w / 2)
    col = np.floor(xs / brick_w).astype(np.int64)
    rows, cols = int(row.max()) + 1, int(col.max()) + 1
    per_brick = rng.normal(1.0, 0.1, (rows, cols)).astype(np.float32)
    in_mortar = ((yy - row * brick_h) < mortar) | ((xs - col * brick_w) < mortar)
    tone = per_brick[row, col] * (0.9 + 0.2 * _value_noise(rng, h, w, 6))
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


def _grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
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


def _stuff_texture(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
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


# ---------------------------------------------------------------------------------- layouts
def _horizon(rng: np.random.Generator, h: int, w: int, lo: float = 0.3, hi: float = 0.7) -> np.ndarray:
    """True below a wavy horizontal line at a random height."""
    x = np.arange(w, dtype=np.float32)
    line = (
        rng.uniform(lo, hi) * h
        + rng.uniform(0, 0.06) * h * np.sin(x * 2 * math.pi / rng.uniform(0.5, 2.0) / w + rng.uniform(0, 6.3))
        + (_value_noise(rng, 1, w, 24)[0] - 0.5) * rng.uniform(0, 10)
    )
    return np.arange(h, dtype=np.float32)[:, None] > line[None, :]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row coordinates (h, 1) and column coordinates (1, w), float32, for broadcasting."""
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def _half_plane(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """True on one side of a straight line through a random point in the central area."""
    yy, xx = _grid(h, w)
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    return (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle) > 0


def _band(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """True inside a diagonal band of random width through the central area."""
    yy, xx = _grid(h, w)
    angle = rng.uniform(0, math.pi)
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    dist = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    return np.abs(dist) < rng.uniform(0.12, 0.25) * min(h, w)


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Organic blobs covering about 20-45 % of the image (thresholded smooth noise).

    The noise and its threshold are computed at 1/4 resolution and the field is upsampled
    bilinearly before thresholding, which keeps the outline smooth at a fraction of the cost.
    """
    lh, lw = max(8, h // 4), max(8, w // 4)
    field = _fbm(rng, lh, lw, (rng.uniform(15, 28), 8))
    threshold = np.quantile(field, 1.0 - rng.uniform(0.2, 0.45))
    return _upsample(field, h, w) > threshold


def _stuff_layout(rng: np.random.Generator, h: int, w: int, num_regions: int, sky_first: bool) -> np.ndarray:
    """(h, w) int region index in [0, num_regions); region 0 is on top when ``sky_first``."""
    regions = np.zeros((h, w), np.uint8)
    if num_regions == 1:
        return regions
    if num_regions == 2:
        kind = 0 if sky_first else int(rng.integers(0, 3))
        regions[(_horizon, _half_plane, _blob)[kind](rng, h, w)] = 1
        return regions
    kind = 0 if sky_first else int(rng.integers(0, 3))
    if kind == 0:  # horizon, lower part split by a line or a blob
        lower = _horizon(rng, h, w, 0.2, 0.5)
        split = _half_plane(rng, h, w) if rng.random() < 0.5 else _blob(rng, h, w)
        regions[lower] = 1
        regions[lower & split] = 2
    elif kind == 1:  # a diagonal band across a background split in two
        regions[_half_plane(rng, h, w)] = 1
        regions[_band(rng, h, w)] = 2
    else:  # two blobs over a background
        regions[_blob(rng, h, w)] = 1
        regions[_blob(rng, h, w)] = 2
    return regions


# ----------------------------------------------------------------------------------- shapes
def _regular(n: int, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _circle_poly(radius: float = 1.0, centre: tuple[float, float] = (0.0, 0.0), n: int = 64) -> np.ndarray:
    return _regular(n) * radius + np.asarray(centre)


def _heart_poly(n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # image y down
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.max(np.linalg.norm(pts, axis=1))


def _shape_polygons(rng: np.random.Generator, name: str) -> list[tuple[np.ndarray, bool]]:
    """Polygons of a shape in the unit disc as ``(vertices (n, 2), filled)``; unfilled cut holes."""
    if name == "circle":
        return [(_circle_poly(), True)]
    if name == "square":
        return [(_regular(4, math.pi / 4), True)]
    if name == "triangle":
        return [(_regular(3), True)]
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, inner)[:, None]
        return [(_regular(10) * radii, True)]
    if name == "hexagon":
        return [(_regular(6, 0.0), True)]
    if name == "pentagon":
        return [(_regular(5), True)]
    if name == "cross":
        a = rng.uniform(0.24, 0.36)
        pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
        return [(np.asarray(pts, np.float64), True)]
    if name == "heart":
        return [(_heart_poly(), True)]
    if name == "ring":
        return [(_circle_poly(), True), (_circle_poly(rng.uniform(0.45, 0.65)), False)]
    if name == "arrow":
        shaft, head, neck = rng.uniform(0.14, 0.24), rng.uniform(0.5, 0.7), rng.uniform(0.05, 0.35)
        pts = [(-1, -shaft), (neck, -shaft), (neck, -head), (1, 0), (neck, head), (neck, shaft), (-1, shaft)]
        return [(np.asarray(pts, np.float64), True)]
    if name == "moon":
        offset = rng.uniform(0.35, 0.6)
        return [(_circle_poly(), True), (_circle_poly(rng.uniform(0.8, 0.95), (offset, -0.1 * offset)), False)]
    if name == "diamond":
        a = rng.uniform(0.5, 0.68)
        return [(np.asarray([(0, -1), (a, 0), (0, 1), (-a, 0)], np.float64), True)]
    raise ValueError(f"unknown thing class {name!r}")


@dataclass
class _Instance:
    """One thing instance rasterised on a local canvas at output resolution."""

    name: str
    x0: int  # canvas origin in image pixels (may be negative / beyond the image)
    y0: int
    coverage: np.ndarray  # (h, w) float32 in [0, 1]: anti-aliased coverage
    mask: np.ndarray  # (h, w) bool: coverage >= 0.5 (the id map uses this)
    color: np.ndarray  # (3,) float32


def _rasterise(rng: np.random.Generator, name: str, cx: float, cy: float, size: float) -> _Instance:
    radius = size / 2
    angle = rng.uniform(0, 2 * math.pi) if name != "circle" else 0.0
    stretch = 1.0 if name in ("circle", "square", "ring") else rng.uniform(0.9, 1.1)
    rot = np.asarray([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    scale = np.asarray([radius * stretch, radius / stretch])
    x0, y0 = int(math.floor(cx - radius * 1.12)) - 1, int(math.floor(cy - radius * 1.12)) - 1
    side = int(math.ceil(radius * 2.24)) + 3
    ss = _SUPERSAMPLE
    canvas = Image.new("L", (side * ss, side * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for unit, filled in _shape_polygons(rng, name):
        pts = (unit * scale) @ rot.T + np.asarray([cx - x0, cy - y0])
        draw.polygon([(float(x) * ss, float(y) * ss) for x, y in pts], fill=255 if filled else 0)
    hi = np.asarray(canvas, np.float32).reshape(side, ss, side, ss)
    coverage = hi.mean(axis=(1, 3)) / 255.0
    return _Instance(name, x0, y0, coverage, coverage >= 0.5, np.zeros(3, np.float32))


def _random_thing_color(rng: np.random.Generator) -> np.ndarray:
    hue = rng.random()
    sat = rng.uniform(0.0, 1.0) ** 0.6  # mostly saturated, some greys
    val = rng.uniform(0.25, 1.0)
    return np.asarray(colorsys.hsv_to_rgb(hue, sat, val), np.float32) * 255


def _paint_thing(rng: np.random.Generator, inst: _Instance) -> np.ndarray:
    """(h, w, 3) float32 colour patch: the instance colour with a soft light gradient + grain."""
    h, w = inst.mask.shape
    yy, xx = _grid(h, w)
    light = rng.uniform(0, 2 * math.pi)
    grad = ((xx - w / 2) * math.cos(light) + (yy - h / 2) * math.sin(light)) / max(h, w)
    shade = 1.0 + rng.uniform(0.1, 0.35) * grad
    patch = inst.color[None, None, :] * shade[..., None]
    return patch + (rng.uniform(1.0, 5.0) * _grain(rng, h, w))[..., None]


# ------------------------------------------------------------------------------------ scene
def _clip_box(inst: _Instance, h: int, w: int) -> Optional[tuple[slice, slice, slice, slice]]:
    """(image rows, image cols, canvas rows, canvas cols) of the overlap, or None."""
    ch, cw = inst.mask.shape
    ys, xs = max(inst.y0, 0), max(inst.x0, 0)
    ye, xe = min(inst.y0 + ch, h), min(inst.x0 + cw, w)
    if ye <= ys or xe <= xs:
        return None
    return (
        slice(ys, ye),
        slice(xs, xe),
        slice(ys - inst.y0, ye - inst.y0),
        slice(xs - inst.x0, xe - inst.x0),
    )


def _bbox(mask: np.ndarray) -> list[int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def render_scene(
    rng: np.random.Generator,
    size: int = 256,
    classes: Optional[Sequence[str]] = None,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Render one scene.

    Args:
        rng: the only source of randomness (same state -> same scene).
        size: output height and width in pixels.
        classes: class names the scene may contain (default: all); needs >= 1 stuff class.
            Thing classes not listed never appear; stuff classes not listed are never used.

    Returns:
        image: (size, size, 3) uint8 RGB.
        id_map: (size, size) int32 segment ids; 0 = void.
        segments: one dict per id in ``id_map`` (ids 1..N): ``{id, category_id, area,
            bbox [x, y, w, h], iscrowd: 0}`` (COCO-panoptic ``segments_info``).
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    allowed = resolve_classes(classes)
    by_name = _class_by_name()
    stuff = [n for n in allowed if n in STUFF_CLASSES]
    things = [n for n in allowed if n in THING_CLASSES]
    h = w = int(size)
    scale = size / 256.0
    image_area = h * w

    # --- stuff: 1-3 regions covering the image
    num_regions = int(min(len(stuff), rng.choice([1, 2, 3], p=[0.25, 0.5, 0.25])))
    region_names = [stuff[i] for i in rng.permutation(len(stuff))[:num_regions]]
    sky_first = "sky" in region_names and num_regions > 1
    if sky_first:
        region_names.remove("sky")
        region_names.insert(0, "sky")
    for _ in range(10):
        regions = _stuff_layout(rng, h, w, num_regions, sky_first)
        counts = np.bincount(regions.ravel(), minlength=num_regions)
        if counts.min() >= MIN_STUFF_FRACTION * image_area:
            break
    else:  # fall back to a single region rather than keep a sliver
        regions = np.zeros((h, w), np.uint8)
        region_names = region_names[:1]
    image = _stuff_texture(rng, region_names[0], h, w)
    for r, name in enumerate(region_names[1:], start=1):
        np.copyto(image, _stuff_texture(rng, name, h, w), where=(regions == r)[..., None])
    owner_cat = [by_name[n].id for n in region_names]  # owner index -> category id
    owner = regions.copy()  # per pixel: index into owner_cat

    # --- things: sample, rasterise, keep the reasonably visible ones (top-down), paint bottom-up
    instances: list[_Instance] = []
    if things:
        for _ in range(int(rng.integers(1, MAX_THINGS + 1))):
            name = things[int(rng.integers(len(things)))]
            diameter = rng.uniform(MIN_THING_SIZE, MAX_THING_SIZE) * scale
            margin = 0.15 * diameter
            cx, cy = rng.uniform(-margin, w + margin), rng.uniform(-margin, h + margin)
            inst = _rasterise(rng, name, cx, cy, diameter)
            inst.color = _random_thing_color(rng)
            instances.append(inst)
    min_thing_area = MIN_THING_AREA * scale * scale
    covered = np.zeros((h, w), bool)
    kept: list[bool] = [False] * len(instances)
    for i in range(len(instances) - 1, -1, -1):  # topmost first
        inst = instances[i]
        box = _clip_box(inst, h, w)
        full = int(inst.mask.sum())
        if box is None or full == 0:
            continue
        iy, ix, cy_, cx_ = box
        visible = int((inst.mask[cy_, cx_] & ~covered[iy, ix]).sum())
        if visible >= MIN_VISIBLE_FRACTION * full and visible >= min_thing_area:
            kept[i] = True
            covered[iy, ix] |= inst.mask[cy_, cx_]
    for i, inst in enumerate(instances):
        # Draw the paint for every sampled instance so the rng stream (and hence the rest of
        # the scene) does not depend on which instances were dropped.
        patch = _paint_thing(rng, inst)
        if not kept[i]:
            continue
        iy, ix, cy_, cx_ = _clip_box(inst, h, w)  # type: ignore[misc]
        alpha = inst.coverage[cy_, cx_][..., None]
        image[iy, ix] = image[iy, ix] * (1 - alpha) + patch[cy_, cx_] * alpha
        owner[iy, ix][inst.mask[cy_, cx_]] = len(owner_cat)
        owner_cat.append(by_name[inst.name].id)

    # --- ids: stuff regions first, then things in drawing order; tiny stuff leftovers -> void
    counts = np.bincount(owner.ravel(), minlength=len(owner_cat))
    id_of_owner = np.zeros(len(owner_cat), np.int32)
    segments: list[dict] = []
    for k, cat in enumerate(owner_cat):
        is_stuff = k < len(region_names)
        if counts[k] == 0 or (is_stuff and counts[k] < MIN_STUFF_AREA_FRACTION * image_area):
            continue  # id 0 (void)
        seg_id = len(segments) + 1
        id_of_owner[k] = seg_id
        segments.append({"id": seg_id, "category_id": int(cat), "area": int(counts[k]), "iscrowd": 0})
    for k, seg_id in enumerate(id_of_owner):
        if seg_id:
            segments[seg_id - 1]["bbox"] = _bbox(owner == k)
    id_map = id_of_owner[owner]
    np.clip(image, 0.0, 255.0, out=image)
    image += 0.5  # round half up on the non-negative values, then truncate
    return image.astype(np.uint8), id_map, segments


# ---------------------------------------------------------------------------------- dataset
def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for scene ``index`` of dataset ``seed`` (independent of the dataset size)."""
    return np.random.default_rng([int(seed), int(index)])


def generate_dataset(
    out_dir: Union[str, os.PathLike],
    num_images: int,
    seed: int,
    size: int = 256,
    classes: Optional[Sequence[str]] = None,
    exclude_classes: Optional[Sequence[str]] = None,
) -> Path:
    """Write ``num_images`` scenes as a COCO-panoptic dataset (layout in the module docstring).

    Scene ``i`` is rendered from :func:`scene_rng` ``(seed, i)``, so the same arguments give
    byte-identical files. ``classes`` / ``exclude_classes`` restrict the classes (e.g.
    ``classes=world_splits()["base"]`` for a training set without novel classes); the JSON's
    ``categories`` lists only the allowed classes.

    Returns:
        ``out_dir`` as a Path; ``out_dir / "panoptic.json"`` is written last (atomically).
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    allowed = resolve_classes(classes, exclude_classes)
    out = Path(out_dir)
    image_dir, pan_dir = out / "images", out / "panoptic"
    image_dir.mkdir(parents=True, exist_ok=True)
    pan_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    from tqdm import tqdm

    for index in tqdm(range(num_images), desc="synthetic scenes", disable=num_images < 200):
        image, id_map, segments = render_scene(scene_rng(seed, index), size=size, classes=allowed)
        file_name = f"{seed}_{index:06d}.png"
        Image.fromarray(image, mode="RGB").save(image_dir / file_name, format="PNG", compress_level=1)
        Image.fromarray(id2rgb(id_map), mode="RGB").save(pan_dir / file_name, format="PNG", compress_level=3)
        images.append({"id": index, "file_name": file_name, "width": size, "height": size})
        annotations.append({"image_id": index, "file_name": file_name, "segments_info": segments})
    dataset = {
        "info": {
            "description": "possam-label synthetic world",
            "seed": int(seed),
            "size": int(size),
            "classes": allowed,
        },
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(allowed),
    }
    tmp = out / "panoptic.json.tmp"
    tmp.write_text(json.dumps(dataset), encoding="utf-8")
    os.replace(tmp, out / "panoptic.json")
    logger.info("wrote %d synthetic scenes (seed %d, %d classes) to %s", num_images, seed, len(allowed), out)
    return out
