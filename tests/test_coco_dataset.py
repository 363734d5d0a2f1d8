"""COCO-panoptic reader on real COCO files, its error handling, and the LSJ / eval transforms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from possam_label.data.augment import LargeScaleJitter, ResizeLongestSidePad
from possam_label.data.coco_panoptic import CocoPanopticDataset, MissingFileError, collate
from possam_label.io.panoptic_png import id2rgb, read_panoptic_png
from possam_label.vocab import Vocabulary, load_vocabulary

SAMPLE = Path(__file__).parent / "data" / "coco_panoptic_sample"
JSON = SAMPLE / "panoptic_examples.json"


def _dataset(root: Path = SAMPLE, **kwargs) -> CocoPanopticDataset:
    return CocoPanopticDataset(root / "panoptic_examples.json", root / "images", root / "panoptic", **kwargs)


@pytest.fixture()
def sample_copy(tmp_path) -> Path:
    root = tmp_path / "sample"
    shutil.copytree(SAMPLE, root)
    return root


def _edit_json(root: Path, edit) -> None:
    path = root / "panoptic_examples.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------ reader
def test_reads_coco_sample_with_133_categories():
    data = json.loads(JSON.read_text())
    ds = _dataset()
    assert len(ds.vocabulary) == 133 and len(ds) == 2
    coco = load_vocabulary("coco")
    assert ds.vocabulary.category_ids == coco.category_ids
    for i, ann in enumerate(data["annotations"]):
        sample = ds[i]
        ids = read_panoptic_png(SAMPLE / "panoptic" / ann["file_name"])
        h, w = ids.shape
        assert sample["image"].dtype == torch.uint8 and tuple(sample["image"].shape) == (3, h, w)
        assert sample["file_name"] == ann["file_name"].replace(".png", ".jpg")
        assert sample["image_id"] == ann["image_id"]
        non_crowd = [s for s in ann["segments_info"] if not s["iscrowd"]]
        crowd = [s for s in ann["segments_info"] if s["iscrowd"]]
        assert crowd, "the sample is expected to contain crowd segments"
        assert sample["masks"].dtype == torch.bool and tuple(sample["masks"].shape) == (len(non_crowd), h, w)
        assert sample["labels"].dtype == torch.int64
        for label, mask, seg in zip(sample["labels"].tolist(), sample["masks"], non_crowd):
            assert coco.category_ids[label] == seg["category_id"]
            assert np.array_equal(mask.numpy(), ids == seg["id"])
            assert int(mask.sum()) == seg["area"]
        expected_ignore = ids == 0
        for seg in crowd:
            expected_ignore |= ids == seg["id"]
        assert np.array_equal(sample["ignore"].numpy(), expected_ignore)


def test_vocabulary_subset_drops_other_categories():
    full = load_vocabulary("coco")
    keep = [full.index_of_category_id(c) for c in (1, 19, 187)]  # two things, one stuff in the sample
    sub = Vocabulary(
        names=[full.names[i] for i in keep],
        synonyms=[full.synonyms[i] for i in keep],
        isthing=[full.isthing[i] for i in keep],
        category_ids=[full.category_ids[i] for i in keep],
        colors=[full.colors[i] for i in keep],
    )
    ds = _dataset(vocabulary=sub)
    data = json.loads(JSON.read_text())
    for i, ann in enumerate(data["annotations"]):
        sample = ds[i]
        expected = [
            sub.category_ids.index(s["category_id"])
            for s in ann["segments_info"]
            if not s["iscrowd"] and s["category_id"] in sub.category_ids
        ]
        assert sample["labels"].tolist() == expected
        assert ds.label_of_category(ann["segments_info"][0]["category_id"]) in (-1, *range(3))
        # Everything that is not a kept mask is ignore.
        covered = sample["masks"].any(0) if len(sample["masks"]) else torch.zeros_like(sample["ignore"])
        assert torch.equal(covered, ~sample["ignore"])


def test_collate_keeps_lists():
    ds = _dataset()
    batch = collate([ds[0], ds[1]])
    assert set(batch) >= {"image", "labels", "masks", "image_id", "file_name"}
    assert len(batch["masks"]) == 2 and batch["masks"][0].shape[0] != batch["masks"][1].shape[0]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    (only,) = list(loader)
    assert [m.shape for m in only["masks"]] == [m.shape for m in batch["masks"]]


def test_png_id_missing_from_json(sample_copy):
    _edit_json(sample_copy, lambda d: d["annotations"][0]["segments_info"].pop(0))
    ds = _dataset(sample_copy)
    with pytest.raises(ValueError, match=r"000000142238\.png.*appear in the PNG but not in segments_info"):
        ds[0]


def test_json_id_missing_from_png(sample_copy):
    def add_segment(d):
        d["annotations"][1]["segments_info"].append(
            {"id": 1234567, "category_id": 1, "iscrowd": 0, "area": 10, "bbox": [0, 0, 1, 1]}
        )

    _edit_json(sample_copy, add_segment)
    with pytest.raises(ValueError, match=r"000000439180\.png.*1234567.*do not appear in the PNG"):
        _dataset(sample_copy)[1]


def test_unknown_category_id(sample_copy):
    _edit_json(sample_copy, lambda d: d["annotations"][0]["segments_info"][2].update(category_id=999))
    with pytest.raises(ValueError, match=r"panoptic_examples\.json.*unknown category id 999"):
        _dataset(sample_copy)


def test_missing_image_and_png(sample_copy):
    (sample_copy / "images" / "000000439180.jpg").unlink()
    with pytest.raises(ValueError, match=r"image file not found: .*000000439180\.jpg"):
        _dataset(sample_copy)
    shutil.copy(SAMPLE / "images" / "000000439180.jpg", sample_copy / "images")
    (sample_copy / "panoptic" / "000000142238.png").unlink()
    with pytest.raises(MissingFileError, match=r"panoptic PNG not found: .*000000142238\.png"):
        _dataset(sample_copy)


def test_size_mismatch_and_unreadable_png(sample_copy):
    png = sample_copy / "panoptic" / "000000142238.png"
    ids = read_panoptic_png(png)
    Image.fromarray(id2rgb(ids[:-5]), mode="RGB").save(png)
    with pytest.raises(ValueError, match=r"000000142238\.png: PNG is 640x422 but image"):
        _dataset(sample_copy)[0]
    png.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"000000142238\.png: cannot read panoptic PNG"):
        _dataset(sample_copy)[0]


def test_file_names_must_stay_inside_their_folder(sample_copy):
    _edit_json(sample_copy, lambda d: d["annotations"][0].update(file_name="../escape.png"))
    with pytest.raises(ValueError, match="must be a relative path inside its folder"):
        _dataset(sample_copy)


# ------------------------------------------------------------------------------- transforms
def _l_shape_sample(h: int = 120, w: int = 160) -> dict:
    """Grey image with a red L-shape (mask 0) and a blue square (mask 1) near the right edge.
    The L is asymmetric, so a flip that moved the image but not the mask would be caught."""
    image = np.full((h, w, 3), 128, np.uint8)
    red = np.zeros((h, w), bool)
    red[20:90, 20:40] = True
    red[70:90, 20:80] = True
    blue = np.zeros((h, w), bool)
    blue[10:40, 120:150] = True
    image[red] = (230, 20, 20)
    image[blue] = (20, 20, 230)
    return {
        "image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
        "masks": torch.from_numpy(np.stack([red, blue])),
        "labels": torch.tensor([3, 7]),
        "ignore": torch.zeros((h, w), dtype=torch.bool),
        "image_id": 1,
    }


def _interior(mask: torch.Tensor, steps: int = 2) -> torch.Tensor:
    """Mask eroded ``steps`` times (4-neighbourhood, outside the canvas counts as outside the
    mask: a shape cut by the crop also has a resampled edge there)."""
    m = mask.numpy()
    for _ in range(steps):
        p = np.pad(m, 1, constant_values=False)
        m = m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return torch.from_numpy(m)


def test_lsj_keeps_masks_on_their_shapes():
    colours = {3: (230, 20, 20), 7: (20, 20, 230)}
    for seed in range(12):
        lsj = LargeScaleJitter(target_size=128, min_scale=0.5, max_scale=2.0, seed=seed)
        out = lsj(_l_shape_sample())
        assert out["image"].shape == (3, 128, 128) and out["image"].dtype == torch.uint8
        assert out["masks"].shape[1:] == (128, 128) and out["masks"].shape[0] == out["labels"].shape[0]
        rh, rw = out["resized_size"]
        assert out["valid"].sum() == min(rh, 128) * min(rw, 128)
        assert not out["image"][:, ~out["valid"]].any()  # padding is pad_value 0
        assert out["ignore"][~out["valid"]].all()
        image = out["image"].permute(1, 2, 0).numpy().astype(int)
        for label, mask in zip(out["labels"].tolist(), out["masks"]):
            assert mask.any()
            inner = _interior(mask).numpy()
            if inner.any():
                assert np.abs(image[inner] - colours[label]).max() <= 2
            # Outside the mask (and its one-pixel rim) the colour of this shape does not occur.
            near = ~mask.numpy() & ~np.roll(mask.numpy(), 1, 0) & ~np.roll(mask.numpy(), -1, 0)
            near &= ~np.roll(mask.numpy(), 1, 1) & ~np.roll(mask.numpy(), -1, 1)
            assert (np.abs(image[near] - colours[label]).max(axis=1) > 40).all()


def test_lsj_flip_mirrors_image_and_masks_together():
    sample = _l_shape_sample()
    plain = LargeScaleJitter(target_size=128, min_scale=1.0, max_scale=1.0, flip_prob=0.0, seed=0)(sample)
    flipped = LargeScaleJitter(target_size=128, min_scale=1.0, max_scale=1.0, flip_prob=1.0, seed=0)(sample)
    rh, rw = plain["resized_size"]
    assert (rh, rw) == (96, 128) and flipped["resized_size"] == (96, 128)
    diff = flipped["image"][:, :rh, :rw].int() - plain["image"][:, :rh, :rw].flip(-1).int()
    assert diff.abs().max() <= 1
    assert torch.equal(flipped["masks"][:, :rh, :rw], plain["masks"][:, :rh, :rw].flip(-1))
    # The L's vertical bar is on the left of its box unless flipped.
    for out, bar_on_left in ((plain, True), (flipped, False)):
        red = out["masks"][out["labels"].tolist().index(3)]
        top_row = red[red.any(1).nonzero().min()].nonzero().float().mean()
        cols = red.any(0).nonzero().flatten().float()
        assert (top_row < (cols.min() + cols.max()) / 2) == bar_on_left


def test_lsj_drops_masks_cropped_away_and_is_deterministic():
    sample = _l_shape_sample()
    dropped = 0
    for seed in range(20):
        lsj = LargeScaleJitter(target_size=64, min_scale=2.0, max_scale=2.0, seed=seed)
        out = lsj(sample)
        assert out["masks"].flatten(1).any(1).all()
        assert len(out["labels"]) == len(out["masks"]) <= 2
        dropped += len(out["labels"]) < 2
        again = LargeScaleJitter(target_size=64, min_scale=2.0, max_scale=2.0, seed=seed)(sample)
        assert torch.equal(out["image"], again["image"]) and torch.equal(out["masks"], again["masks"])
    assert dropped > 0
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    lsj = LargeScaleJitter(target_size=64)
    assert torch.equal(lsj(sample, generator=gen_a)["image"], lsj(sample, generator=gen_b)["image"])


def test_lsj_on_coco_sample_and_eval_transform():
    ds = _dataset(transform=LargeScaleJitter(target_size=256, min_scale=0.1, max_scale=2.0, seed=0))
    for i in range(2):
        out = ds[i]
        assert out["image"].shape == (3, 256, 256)
        assert out["masks"].shape[0] == out["labels"].shape[0]
        if len(out["masks"]):
            assert out["masks"].flatten(1).any(1).all()
            assert int(out["masks"].sum(0).max()) == 1  # still disjoint

    plain = _dataset()[0]  # 640x427
    ev = ResizeLongestSidePad(target_size=320)(plain)
    assert ev["image"].shape == (3, 320, 320)
    assert ev["resized_size"] == (214, 320) and ev["original_size"] == (427, 640)
    assert ev["valid"][:214].all() and not ev["valid"][214:].any()
    assert ev["masks"].shape[0] == plain["masks"].shape[0]  # nothing is cropped at eval
    ratio = ev["masks"].flatten(1).sum(1).float() / plain["masks"].flatten(1).sum(1).float()
    big = plain["masks"].flatten(1).sum(1) > 2000
    assert torch.allclose(ratio[big], torch.full_like(ratio[big], (320 / 640) ** 2), rtol=0.1)
    no_targets = ResizeLongestSidePad(target_size=320)({"image": plain["image"]})
    assert no_targets["image"].shape == (3, 320, 320) and "masks" not in no_targets
