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

The class table (names, synonyms, ids, colours, base/novel split) is
:mod:`possam_label.synthetic.classes`, the stuff textures :mod:`possam_label.synthetic.textures`.
:func:`generate_dataset` writes a COCO-panoptic dataset in the detectron2 layout::

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
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from possam_label.io.panoptic_png import id2rgb

from .classes import STUFF_CLASSES, THING_CLASSES, class_by_name, coco_categories, resolve_classes
from .textures import fbm, pixel_grain, pixel_grid, stuff_texture, upsample, value_noise

logger = logging.getLogger(__name__)

# Thing geometry, in pixels at the output resolution: diameter of the circle the shape fits in.
MIN_THING_SIZE = 18.0
MAX_THING_SIZE = 90.0
MAX_THINGS = 8
MIN_VISIBLE_FRACTION = 0.3  # of the instance's full (unoccluded, unclipped) area
MIN_THING_AREA = 40  # pixels at 256x256; scaled with the image area
MIN_STUFF_FRACTION = 0.06  # each stuff region of a layout covers at least this share of the image
MIN_STUFF_AREA_FRACTION = 0.002  # visible stuff below this share of the image becomes void
_SUPERSAMPLE = 2  # things are drawn at 2x and box-filtered: anti-aliased edges, exact ids


# ---------------------------------------------------------------------------------- layouts
def _horizon(rng: np.random.Generator, h: int, w: int, lo: float = 0.3, hi: float = 0.7) -> np.ndarray:
    """True below a wavy horizontal line at a random height."""
    x = np.arange(w, dtype=np.float32)
    line = (
        rng.uniform(lo, hi) * h
        + rng.uniform(0, 0.06) * h * np.sin(x * 2 * math.pi / rng.uniform(0.5, 2.0) / w + rng.uniform(0, 6.3))
        + (value_noise(rng, 1, w, 24)[0] - 0.5) * rng.uniform(0, 10)
    )
    return np.arange(h, dtype=np.float32)[:, None] > line[None, :]


def _half_plane(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """True on one side of a straight line through a random point in the central area."""
    yy, xx = pixel_grid(h, w)
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    return (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle) > 0


def _band(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """True inside a diagonal band of random width through the central area."""
    yy, xx = pixel_grid(h, w)
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
    field = fbm(rng, lh, lw, (rng.uniform(15, 28), 8))
    threshold = np.quantile(field, 1.0 - rng.uniform(0.2, 0.45))
    return upsample(field, h, w) > threshold


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
    yy, xx = pixel_grid(h, w)
    light = rng.uniform(0, 2 * math.pi)
    grad = ((xx - w / 2) * math.cos(light) + (yy - h / 2) * math.sin(light)) / max(h, w)
    shade = 1.0 + rng.uniform(0.1, 0.35) * grad
    patch = inst.color[None, None, :] * shade[..., None]
    return patch + (rng.uniform(1.0, 5.0) * pixel_grain(rng, h, w))[..., None]


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


def _stuff_background(rng: np.random.Generator, stuff: Sequence[str], h: int, w: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """1-3 textured stuff regions covering the image.

    Returns:
        (h, w, 3) float32 image, (h, w) uint8 region index, and the stuff class of each region.
    """
    image_area = h * w
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
    image = stuff_texture(rng, region_names[0], h, w)
    for r, name in enumerate(region_names[1:], start=1):
        np.copyto(image, stuff_texture(rng, name, h, w), where=(regions == r)[..., None])
    return image, regions, region_names


def _sample_things(rng: np.random.Generator, things: Sequence[str], h: int, w: int, scale: float) -> list[_Instance]:
    """1-``MAX_THINGS`` rasterised, coloured thing instances in drawing order (none without thing classes)."""
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
    return instances


def _visible_things(instances: Sequence[_Instance], h: int, w: int, min_thing_area: float) -> list[bool]:
    """Which instances stay reasonably visible under the ones drawn after them (decided top-down)."""
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
    return kept


def _segment_ids(owner: np.ndarray, owner_cat: Sequence[int], num_stuff: int) -> tuple[np.ndarray, list[dict]]:
    """Segment ids from the per-pixel owner map: stuff regions first, then things in drawing order;
    tiny stuff leftovers become void (0).

    Args:
        owner: (h, w) index into ``owner_cat`` per pixel; the first ``num_stuff`` owners are stuff.
        owner_cat: category id of each owner.
    Returns:
        (h, w) int32 id map and the COCO-panoptic ``segments_info`` entries.
    """
    counts = np.bincount(owner.ravel(), minlength=len(owner_cat))
    id_of_owner = np.zeros(len(owner_cat), np.int32)
    segments: list[dict] = []
    for k, cat in enumerate(owner_cat):
        is_stuff = k < num_stuff
        if counts[k] == 0 or (is_stuff and counts[k] < MIN_STUFF_AREA_FRACTION * owner.size):
            continue  # id 0 (void)
        seg_id = len(segments) + 1
        id_of_owner[k] = seg_id
        segments.append({"id": seg_id, "category_id": int(cat), "area": int(counts[k]), "iscrowd": 0})
    for k, seg_id in enumerate(id_of_owner):
        if seg_id:
            segments[seg_id - 1]["bbox"] = _bbox(owner == k)
    return id_of_owner[owner], segments


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
    by_name = class_by_name()
    stuff = [n for n in allowed if n in STUFF_CLASSES]
    things = [n for n in allowed if n in THING_CLASSES]
    h = w = int(size)
    scale = size / 256.0

    image, regions, region_names = _stuff_background(rng, stuff, h, w)
    owner_cat = [by_name[n].id for n in region_names]  # owner index -> category id
    owner = regions.copy()  # per pixel: index into owner_cat

    # Things: sample, rasterise, keep the reasonably visible ones (top-down), paint bottom-up.
    instances = _sample_things(rng, things, h, w, scale)
    kept = _visible_things(instances, h, w, MIN_THING_AREA * scale * scale)
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

    id_map, segments = _segment_ids(owner, owner_cat, len(region_names))
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


# ------------------------------------------------------------------------- held-out scenes
# Held-out scene i is rendered from ``scene_rng(HELD_OUT_SEED, i)`` (the dataset convention above).
# Training streams are seeded with three numbers ([seed, worker, stream tag]), so they never
# coincide with any dataset's scenes (two numbers) whatever the seeds.
HELD_OUT_SEED = 777

SceneRenderer = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]


def default_scene_renderer(size: int = 256) -> SceneRenderer:
    """The synthetic world's ``render_scene`` at ``size``."""
    return partial(render_scene, size=size)


def held_out_scenes(
    num_scenes: int, renderer: Optional[SceneRenderer] = None, seed: int = HELD_OUT_SEED
) -> Iterator[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]:
    """Scenes ``scene_rng(seed, i)``, i < num_scenes: never seen by a training stream."""
    render = renderer or default_scene_renderer()
    for index in range(num_scenes):
        yield render(scene_rng(seed, index))
