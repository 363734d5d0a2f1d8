"""Bootstrap with no heads at all (docs/bootstrap.md): the recipe's three commands end to end.

(1) ``pipelines.autolabel --model sam-clip`` labels a few synthetic scenes with a config that names
no PosSAM heads (``checkpoint: null``, as a team with only SAM and CLIP has); (2) ``pipelines.train
--min-score T`` trains heads from random initialisation on its confident segments; (3)
``pipelines.autolabel --checkpoint HEADS`` labels other scenes with PosSAM and those heads. At toy
scale (3 + 2 scenes, 2 iterations of batch 1): the figures of the recipe are in docs/bootstrap.md.
The three commands share one local Ray, started here (each command would otherwise start its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "configs" / "possam_small.yaml"
NO_HEADS = ("--set", "checkpoint=null")  # the shipped config as a team without heads would have it


def _run(main, argv: list[str]) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue() + stderr.getvalue()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from pipelines.make_synthetic import main as make_synthetic

    root = tmp_path_factory.mktemp("bootstrap")
    assert make_synthetic(["--out", str(root / "labelled"), "--num-images", "3", "--seed", "5151"]) == 0
    assert make_synthetic(["--out", str(root / "rest"), "--num-images", "2", "--seed", "5252"]) == 0
    return root


def test_a_config_without_heads_refuses_possam_but_labels_with_sam_clip(tmp_path: Path) -> None:
    """Without heads, PosSAM would label with random heads: refused before any Ray, naming the way out."""
    from pipelines.autolabel import main

    image = REPO / "possam_label" / "assets" / "demo" / "909_000000.png"
    code, log = _run(main, ["--dataset", str(image), "--out", str(tmp_path / "a"), "--config", str(SMALL), *NO_HEADS])
    assert code == 2
    assert "names no PosSAM head weights" in log and "--checkpoint" in log and "--model sam-clip" in log
    assert not (tmp_path / "a" / "run.json").exists()
    missing = tmp_path / "missing.safetensors"
    code, log = _run(main, ["--dataset", str(image), "--out", str(tmp_path / "b"), "--config", str(SMALL), "--set", f"checkpoint={missing}"])
    assert code == 2 and f"checkpoint {missing} (PosSAM head weights) does not exist" in log


def test_bootstrap_recipe_end_to_end(world: Path, tmp_path: Path, ray_session) -> None:
    from pipelines.autolabel import main as autolabel
    from pipelines.train import main as train
    from possam_label.data.sources import PanopticTargetDataset
    from possam_label.engine.train_data import resolve_training_source, training_vocabulary
    from possam_label.io.coco_panoptic_validate import validate_coco_panoptic
    from possam_label.io.output_store import read_images_table, read_segments_table
    from possam_label.io.panoptic_png import read_panoptic_png
    from possam_label.model.possam import read_heads_metadata
    from possam_label.predictor import PosSAMPredictor

    quiet = ["--no-progress", "--no-fsync", "--num-cpus", "2"]
    # (1) The two-stage path labels the set (fewer SAM prompts than the config's, for time).
    pseudo = tmp_path / "pseudo"
    code, log = _run(autolabel, [
        "--dataset", str(world / "labelled" / "images"), "--out", str(pseudo), "--config", str(SMALL), "--model", "sam-clip",
        *NO_HEADS, "--set", "baseline.points_per_side=8", "--batch-size", "3", *quiet,
    ])
    assert code == 0, log[-3000:]
    segments = read_segments_table(pseudo, columns=["image_id", "segment_id", "category", "score"]).to_pylist()
    scores = sorted(r["score"] for r in segments)
    # The confidence threshold: the median score, so both confident and voided segments occur.
    threshold = scores[len(scores) // 2]
    confident = [r for r in segments if r["score"] >= threshold]
    doubtful = [r for r in segments if r["score"] < threshold]
    assert confident and doubtful, scores

    # The training data built from it: the confident segments, void (ignored) for the rest, pixel by pixel.
    source = resolve_training_source(pseudo, min_score=threshold)
    vocabulary = training_vocabulary(source)
    dataset = PanopticTargetDataset(source, vocabulary)
    by_image = {}
    for r in segments:
        by_image.setdefault(r["image_id"], []).append(r)
    index = max(range(len(source)), key=lambda i: len({r["score"] >= threshold for r in by_image.get(source.target(i).image_id, [])}))
    target = source.target(index)
    png = read_panoptic_png(target.label_path)
    rows = by_image[target.image_id]
    expected = np.full(png.shape, -1)
    for r in rows:
        if r["score"] >= threshold:
            expected[png == r["segment_id"]] = vocabulary.index_of(r["category"])
    sample = dataset[index]
    labels = np.full(png.shape, -1)
    for label, mask in zip(sample["labels"].tolist(), sample["masks"].numpy()):
        labels[mask] = label
    assert np.array_equal(labels, expected)
    assert np.array_equal(sample["ignore"].numpy(), expected == -1)
    assert (expected >= 0).any()

    # (2) Heads from no heads on the confident segments.
    heads_dir = tmp_path / "heads"
    code, log = _run(train, [
        "--config", str(SMALL), *NO_HEADS, "--data", str(pseudo), "--min-score", str(threshold), "--out", str(heads_dir),
        "--max-iters", "2", "--batch-size", "1", "--cpus-per-worker", "1", "--set", "train.num_points=256",
    ])
    assert code == 0, log[-3000:]
    record = json.loads((heads_dir / "train_config.json").read_text())
    assert record["config"]["train"]["init_heads"] is None and record["source"].startswith("autolabel_output")
    assert record["min_score"] == threshold and record["data_summary"]["segments"] == len(confident)
    assert json.loads((heads_dir / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 2
    heads = heads_dir / "heads.safetensors"
    metadata = read_heads_metadata(heads)
    assert metadata["iteration"] == "2"
    assert [c["name"] for c in json.loads(metadata["train_vocabulary"])["classes"]] == list(vocabulary.names)
    predictor = PosSAMPredictor.from_config(SMALL, checkpoint=str(heads), device="cpu")
    assert predictor.weight_files["heads"] == str(heads)
    # Random initialisation, not the shipped heads: after 2 tiny steps they are far from them.
    from safetensors.torch import load_file

    new, shipped = load_file(str(heads)), load_file(str(PosSAMPredictor.from_config(SMALL, device="cpu").weight_files["heads"]))
    assert new.keys() == shipped.keys()
    far = sum(not np.allclose(new[k].float().numpy(), shipped[k].float().numpy(), atol=1e-3) for k in new if new[k].numel() > 16)
    assert far >= 0.9 * sum(1 for k in new if new[k].numel() > 16)

    # (3) PosSAM with the new heads labels the rest.
    out = tmp_path / "relabelled"
    code, log = _run(autolabel, [
        "--dataset", str(world / "rest" / "images"), "--out", str(out), "--config", str(SMALL), "--checkpoint", str(heads), *quiet,
    ])
    assert code == 0, log[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["model"]["kind"] == "possam"
    assert run["model"]["checkpoint"] == str(heads) and run["model"]["weights_sha256"]["heads"] == _sha256(heads)
    counts = validate_coco_panoptic(out / "panoptic.json", out / "panoptic")
    assert counts["annotations"] == 2
    assert [r["status"] for r in read_images_table(out, columns=["status"]).to_pylist()] == ["ok", "ok"]
