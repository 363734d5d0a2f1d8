"""Robust image decoding (possam_label.io.images) on the real files of tests/data/autolabel."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from possam_label.io.images import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    is_image_path,
    load_image_rgb,
    read_image_header,
    resize_longest_side,
    to_rgb_array,
)

DATA = Path(__file__).resolve().parent / "data" / "autolabel"
EDGE = DATA / "edge_cases"


@pytest.mark.parametrize(
    "name, shape",
    [
        ("photos/dog.jpg", (534, 800, 3)),
        ("photos/truck.jpg", (1200, 1800, 3)),
        ("coco/000000142238.jpg", (427, 640, 3)),
        ("edge_cases/grayscale.png", (64, 96, 3)),
        ("edge_cases/rgba.png", (64, 96, 3)),
        ("edge_cases/gray_alpha_la.png", (64, 96, 3)),
        ("edge_cases/palette.png", (64, 96, 3)),
        ("edge_cases/palette_transparent.png", (64, 96, 3)),
        ("edge_cases/cmyk.jpg", (64, 96, 3)),
        ("edge_cases/gray16.png", (48, 80, 3)),
        ("edge_cases/plain.bmp", (64, 96, 3)),
        ("edge_cases/plain.tiff", (64, 96, 3)),
        ("edge_cases/upper_case.JPG", (64, 96, 3)),
        ("edge_cases/nested/deeper/nested.webp", (64, 96, 3)),
        # Stored 96x64 with EXIF orientation 6: displayed (and decoded) as 64 wide, 96 high.
        ("edge_cases/exif_rotated_6.jpg", (96, 64, 3)),
    ],
)
def test_valid_files_decode_to_rgb(name: str, shape: tuple[int, int, int]) -> None:
    rgb = load_image_rgb(DATA / name)
    assert rgb.shape == shape
    assert rgb.dtype == np.uint8
    assert rgb.flags.writeable
    assert 0 < rgb.mean() < 255  # real content, not a blank placeholder


@pytest.mark.parametrize(
    "name, reason",
    [
        ("corrupt_random_bytes.jpg", "not_an_image"),
        ("truncated_half.jpg", "truncated"),
        ("zero_bytes.png", "empty"),
        ("bomb_40000x40000.png", "too_large"),
        ("bomb_10000x10000.png", "too_large"),
        ("README.txt", "not_an_image"),
        ("does_not_exist.jpg", "missing"),
    ],
)
def test_broken_files_raise_with_reason_and_path(name: str, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        load_image_rgb(EDGE / name)
    assert info.value.reason == reason
    assert info.value.path == str(EDGE / name)
    assert name in str(info.value)


def test_bomb_files_are_small_and_refused_from_the_header() -> None:
    assert (EDGE / "bomb_40000x40000.png").stat().st_size < 1024
    # Pillow itself only warns between MAX_IMAGE_PIXELS and twice that; we refuse it anyway.
    with pytest.warns(Image.DecompressionBombWarning):
        header = Image.open(EDGE / "bomb_10000x10000.png")  # lazily: only the header is read
    try:
        assert header.size == (10000, 10000)
    finally:
        header.close()


def test_max_pixels_limit_is_applied_before_decoding() -> None:
    with pytest.raises(ImageDecodeError) as info:
        load_image_rgb(DATA / "photos" / "dog.jpg", max_pixels=800 * 534 - 1)
    assert info.value.reason == "too_large"
    assert "exceeds the limit of 427199 pixels" in str(info.value)
    assert load_image_rgb(DATA / "photos" / "dog.jpg", max_pixels=800 * 534).shape == (534, 800, 3)


def test_exif_orientation_is_applied() -> None:
    stored = np.asarray(Image.open(EDGE / "exif_rotated_6.jpg").convert("RGB"))
    assert stored.shape == (64, 96, 3)
    decoded = load_image_rgb(EDGE / "exif_rotated_6.jpg")
    # Orientation 6 = rotate 90 degrees clockwise for display.
    expected = np.rot90(stored, k=-1)
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 2
    assert read_image_header(EDGE / "exif_rotated_6.jpg").width == 96  # the header is as stored


def test_sixteen_bit_gray_keeps_the_full_range() -> None:
    with Image.open(EDGE / "gray16.png") as img:
        assert img.mode == "I;16"
        raw = np.asarray(img).astype(np.int64)
    rgb = load_image_rgb(EDGE / "gray16.png")
    assert np.array_equal(rgb[..., 0], (raw >> 8).astype(np.uint8))
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert rgb.min() == 0 and rgb.max() == 255  # a plain convert("RGB") would clip to 255 almost everywhere


def test_transparency_is_flattened_onto_white() -> None:
    with Image.open(EDGE / "rgba.png") as img:
        rgba = np.asarray(img).astype(np.float64)
    rgb = load_image_rgb(EDGE / "rgba.png").astype(np.float64)
    alpha = rgba[..., 3:] / 255.0
    expected = rgba[..., :3] * alpha + 255.0 * (1 - alpha)
    assert np.abs(rgb - expected).max() <= 1.0
    assert rgb[:, 0].mean() > 250  # fully transparent column -> white


def test_cmyk_and_palette_match_the_rgb_original() -> None:
    reference = load_image_rgb(EDGE / "plain.bmp").astype(int)
    assert np.abs(load_image_rgb(EDGE / "cmyk.jpg").astype(int) - reference).mean() < 12
    assert np.abs(load_image_rgb(EDGE / "palette.png").astype(int) - reference).mean() < 12
    gray = load_image_rgb(EDGE / "grayscale.png")
    assert np.array_equal(gray[..., 0], gray[..., 1])


def test_other_modes() -> None:
    floats = Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), mode="F")
    out = to_rgb_array(floats)
    assert out.shape == (3, 4, 3) and out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    bilevel = Image.fromarray(np.eye(4, dtype=bool))
    assert to_rgb_array(bilevel)[0, 0].tolist() == [255, 255, 255]


def test_directory_and_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError) as info:
        load_image_rgb(tmp_path)
    assert info.value.reason == "unreadable"
    # A valid image behind a wrong extension still decodes: content decides, not the name.
    renamed = tmp_path / "really_a_png.jpg"
    shutil.copyfile(EDGE / "grayscale.png", renamed)
    assert load_image_rgb(renamed).shape == (64, 96, 3)


def test_resize_longest_side() -> None:
    image = np.zeros((600, 1000, 3), dtype=np.uint8)
    assert resize_longest_side(image, 500).shape == (300, 500, 3)
    assert resize_longest_side(image, 2000) is image  # never upscales
    assert resize_longest_side(image, None) is image


def test_is_image_path() -> None:
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
    assert is_image_path("a/b.JPEG") and is_image_path("x.tif")
    assert not is_image_path("notes.txt") and not is_image_path("archive.png.gz")


def test_load_image_for_model_matches_full_decode(tmp_path: Path) -> None:
    from possam_label.io.images import load_image_for_model

    # A large EXIF-rotated JPEG: decoded at reduced DCT scale, rotated, then resized.
    photo = Image.open(DATA / "photos" / "truck.jpg").convert("RGB").resize((800, 400))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    photo.save(path, quality=92, exif=exif.tobytes())
    image, width, height = load_image_for_model(path, max_side=100)
    assert (width, height) == (400, 800)  # full size in display orientation
    assert image.shape == (100, 50, 3)
    reference = resize_longest_side(load_image_rgb(path), 100)
    assert np.abs(image.astype(int) - reference.astype(int)).mean() < 6
    # Non-JPEG and small images take the plain path; never upscaled.
    small, width, height = load_image_for_model(EDGE / "gray16.png", max_side=1024)
    assert small.shape == (48, 80, 3) and (width, height) == (80, 48)
    with pytest.raises(ImageDecodeError) as info:
        load_image_for_model(EDGE / "truncated_half.jpg", max_side=32)
    assert info.value.reason == "truncated"
