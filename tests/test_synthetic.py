"""The synthetic world: determinism, exact ground truth, class coverage, base/novel split."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import make_synthetic
from possam_label import synthetic
from possam_label.data.coco_panoptic import CocoPanopticDataset
from possam_label.io.panoptic_png import read_panoptic_png


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def base_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_base")
    return synthetic.generate_dataset(out, num_images=12, seed=5, size=128, classes=synthetic.world_splits()["base"])


def test_vocab_and_splits_files_agree_with_renderer():
    vocab = synthetic.load_world_vocabulary()
    assert set(vocab.names) == set(synthetic.THING_CLASSES) | set(synthetic.STUFF_CLASSES)
    assert vocab.num_things == 12 and vocab.num_stuff == 6
    for name, flag in zip(vocab.names, vocab.isthing):
        assert flag == (name in synthetic.THING_CLASSES)
    assert vocab.index_of("crescent") == vocab.index_of("moon")
    assert vocab.index_of("donut") == vocab.index_of("ring")
    assert vocab.index_of("bricks") == vocab.index_of("brick wall")
    splits = synthetic.world_splits()
    assert set(splits["novel"]) == {"star", "heart", "arrow", "moon", "sand"}
    assert not set(splits["base"]) & set(splits["novel"])
    base = synthetic.load_world_vocabulary("base")
    assert list(base.names) == splits["base"]
    # Category ids are the world's ids in every split.
    assert base.category_ids[base.index_of("sky")] == vocab.category_ids[vocab.index_of("sky")]


def test_render_scene_is_deterministic_and_seed_dependent():
    a = synthetic.render_scene(synthetic.scene_rng(0, 7), size=96)
    b = synthetic.render_scene(synthetic.scene_rng(0, 7), size=96)
    c = synthetic.render_scene(synthetic.scene_rng(1, 7), size=96)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (96, 96, 3) and a[0].dtype == np.uint8
    assert a[1].shape == (96, 96) and a[1].dtype == np.int32


def test_segments_match_id_map_exactly():
    for index in range(25):
        image, id_map, segments = synthetic.render_scene(synthetic.scene_rng(11, index), size=128)
        present = set(np.unique(id_map).tolist()) - {0}
        assert present == {s["id"] for s in segments}
        cats = {c.id: c for c in synthetic.world_classes()}
        stuff_count = 0
        for seg in segments:
            mask = id_map == seg["id"]
            assert seg["area"] == int(mask.sum())
            rows, cols = np.nonzero(mask)
            x, y = cols.min(), rows.min()
            assert seg["bbox"] == [x, y, cols.max() - x + 1, rows.max() - y + 1]
            assert seg["iscrowd"] == 0
            stuff_count += not cats[seg["category_id"]].isthing
            if cats[seg["category_id"]].isthing:
                assert seg["area"] >= synthetic.MIN_THING_AREA * (128 / 256) ** 2
        assert 1 <= stuff_count <= 3
        # Each stuff class appears at most once per scene (it is one segment).
        stuff_cats = [s["category_id"] for s in segments if not cats[s["category_id"]].isthing]
        assert len(stuff_cats) == len(set(stuff_cats))


def test_thing_pixels_show_their_shape_colour():
    """A thing is painted in one colour (plus soft shading and grain), so its pixels spread far
    less than a texture's: the id map and the drawn pixels agree."""
    image, id_map, segments = synthetic.render_scene(synthetic.scene_rng(2, 3), size=128)
    cats = {c.id: c for c in synthetic.world_classes()}
    things = [s for s in segments if cats[s["category_id"]].isthing and s["area"] > 100]
    assert things
    for seg in things:
        pixels = image[id_map == seg["id"]].astype(np.float32)
        # Solid colour + soft shading + grain: low spread compared with textured stuff.
        assert pixels.std(axis=0).max() < 40


def test_all_classes_appear_over_fifty_scenes():
    counts: Counter[int] = Counter()
    for index in range(50):
        _, _, segments = synthetic.render_scene(synthetic.scene_rng(3, index), size=64)
        counts.update(s["category_id"] for s in segments)
    assert set(counts) == {c.id for c in synthetic.world_classes()}


def test_restricted_classes_and_errors():
    base = synthetic.world_splits()["base"]
    novel_ids = {c.id for c in synthetic.world_classes() if c.name not in base}
    for index in range(20):
        _, _, segments = synthetic.render_scene(synthetic.scene_rng(4, index), size=64, classes=base)
        assert not {s["category_id"] for s in segments} & novel_ids
    with pytest.raises(ValueError, match="unknown synthetic-world class"):
        synthetic.render_scene(synthetic.scene_rng(0, 0), classes=["circle", "unicorn"])
    with pytest.raises(ValueError, match="stuff class"):
        synthetic.render_scene(synthetic.scene_rng(0, 0), classes=["circle", "square"])
    assert synthetic.resolve_classes(exclude_classes=["sky"]) == [
        c.name for c in synthetic.world_classes() if c.name != "sky"
    ]


def test_generate_dataset_is_byte_identical_per_seed(tmp_path):
    a = synthetic.generate_dataset(tmp_path / "a", num_images=3, seed=9, size=64)
    b = synthetic.generate_dataset(tmp_path / "b", num_images=3, seed=9, size=64)
    c = synthetic.generate_dataset(tmp_path / "c", num_images=3, seed=10, size=64)
    assert _tree_digest(a) == _tree_digest(b)
    assert sorted(p.name for p in (a / "images").iterdir()) == ["9_000000.png", "9_000001.png", "9_000002.png"]
    digest_c = _tree_digest(c)
    assert _tree_digest(a)["images/9_000000.png"] != digest_c["images/10_000000.png"]


def test_base_dataset_files_and_reader(base_dataset):
    data = json.loads((base_dataset / "panoptic.json").read_text())
    splits = synthetic.world_splits()
    assert [c["name"] for c in data["categories"]] == splits["base"]
    novel_ids = {c.id for c in synthetic.world_classes() if c.name in splits["novel"]}
    assert len(data["images"]) == len(data["annotations"]) == 12
    for ann in data["annotations"]:
        ids = read_panoptic_png(base_dataset / "panoptic" / ann["file_name"])
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in ann["segments_info"]}
        assert not {s["category_id"] for s in ann["segments_info"]} & novel_ids
        for seg in ann["segments_info"]:
            assert int((ids == seg["id"]).sum()) == seg["area"]
        with Image.open(base_dataset / "images" / ann["file_name"]) as img:
            assert img.format == "PNG" and img.size == (128, 128) and img.mode == "RGB"

    # Read back through the dataset reader with the full world vocabulary.
    vocab = synthetic.load_world_vocabulary()
    ds = CocoPanopticDataset(
        base_dataset / "panoptic.json", base_dataset / "images", base_dataset / "panoptic", vocabulary=vocab
    )
    assert len(ds) == 12
    for i in range(len(ds)):
        sample = ds[i]
        ann = data["annotations"][i]
        ids = read_panoptic_png(base_dataset / "panoptic" / ann["file_name"])
        assert sample["masks"].shape == (len(ann["segments_info"]), 128, 128)
        for label, mask, seg in zip(sample["labels"].tolist(), sample["masks"], ann["segments_info"]):
            assert vocab.category_ids[label] == seg["category_id"]
            assert np.array_equal(mask.numpy(), ids == seg["id"])
        # Masks tile the image exactly (no void in this world unless stuff was nearly hidden).
        coverage = sample["masks"].sum(0)
        assert int(coverage.max()) == 1
        assert np.array_equal((coverage == 0).numpy(), sample["ignore"].numpy())


def test_cli_writes_a_base_split(tmp_path):
    out = tmp_path / "cli"
    rc = make_synthetic.main(["--out", str(out), "--num-images", "2", "--seed", "1", "--size", "64", "--split", "base"])
    assert rc == 0
    data = json.loads((out / "panoptic.json").read_text())
    assert data["info"]["classes"] == synthetic.world_splits()["base"]
    assert len(list((out / "panoptic").glob("*.png"))) == 2
    assert make_synthetic.main(["--out", str(tmp_path / "bad"), "--num-images", "1", "--seed", "-1"]) == 2
