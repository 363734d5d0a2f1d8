"""Training: schedule, checkpoints, overfitting a batch, and Ray Train runs (two workers; kill + resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from possam_label.config import load_config
from possam_label.data.coco_panoptic import CocoPanopticDataset
from possam_label.synthetic import generate_dataset
from possam_label.engine.train_data import TrainData, build_dataset
from possam_label.train.batches import collate_batch
from possam_label.model.possam import PosSAM
from possam_label.train.trainer import (
    HeadsForward,
    build_criterion,
    build_optimizer,
    fill_padding,
    freeze_modules,
    latest_checkpoint,
    load_training_checkpoint,
    lr_factor,
    save_training_checkpoint,
    train_step,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "possam_tiny.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("world"), num_images=12, seed=11)


def test_lr_schedule_warmup_and_steps():
    cfg = load_config(TINY).train
    cfg.warmup_iters, cfg.lr_steps, cfg.lr_gamma = 4, [10, 20], 0.1
    assert lr_factor(0, cfg) == pytest.approx(0.25)
    assert lr_factor(3, cfg) == pytest.approx(1.0)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(0.1)
    assert lr_factor(25, cfg) == pytest.approx(0.01)


def _setup(world, seed=0):
    cfg = load_config(TINY, {"train": {"lsj_min_scale": 0.9, "lsj_max_scale": 1.1, "lr": 1e-3, "warmup_iters": 0}})
    torch.manual_seed(seed)
    model = PosSAM.from_config(cfg)
    data = TrainData.from_dir(world)
    dataset = build_dataset(cfg, data, None, seed=0)
    vocab = dataset.vocabulary
    return cfg, model, dataset, vocab


def test_training_overfits_one_batch_and_checkpoints_resume_exactly(world, tmp_path):
    cfg, model, dataset, vocab = _setup(world)
    model.train()
    text = model.clip.text_classifier(vocab)
    criterion = build_criterion(cfg.train, len(vocab))
    optimizer = build_optimizer(model, cfg.train)
    batch = collate_batch([dataset[0], dataset[1]])
    assert batch["images"].shape == (2, 3, 128, 128) and batch["valid"].shape == (2, 128, 128)
    heads = HeadsForward(model)
    first = train_step(model, heads, criterion, optimizer, batch, text, cfg, torch.device("cpu"))["loss"]
    for _ in range(15):
        last = train_step(model, heads, criterion, optimizer, batch, text, cfg, torch.device("cpu"))["loss"]
    assert last < 0.6 * first, (first, last)

    path = save_training_checkpoint(tmp_path, model, optimizer, 16, cfg, vocab)
    assert latest_checkpoint(tmp_path) == path
    assert {p.name for p in path.iterdir()} == {"heads.safetensors", "optimizer.safetensors", "state.json"}
    torch.manual_seed(123)
    next_loss = train_step(model, heads, criterion, optimizer, batch, text, cfg, torch.device("cpu"))["loss"]

    # A fresh model restored from the checkpoint takes the same next step.
    _, model2, _, _ = _setup(world, seed=5)
    # The tiny config's backbones are random: share them, so only the checkpoint differs.
    model2.sam.load_state_dict(model.sam.state_dict())
    model2.clip.load_state_dict(model.clip.state_dict())
    model2.train()
    optimizer2 = build_optimizer(model2, cfg.train)
    assert load_training_checkpoint(path, model2, optimizer2, cfg) == 16
    torch.manual_seed(123)
    criterion2 = build_criterion(cfg.train, len(vocab))
    again = train_step(model2, HeadsForward(model2), criterion2, optimizer2, batch, model2.clip.text_classifier(vocab), cfg, torch.device("cpu"))["loss"]
    assert again == pytest.approx(next_loss, rel=1e-5)


@pytest.mark.parametrize(
    "reader, weight",
    [({"pixel_decoder": {"detail_stem": True}}, "detail_stem.proj.weight"), ({"ldp": {"crop_encoder": True}}, "ldp.crop_encoder.proj.weight")],
    ids=["detail_stem", "crop_encoder"],
)
def test_cached_features_carry_the_pixels_the_heads_read(world, reader, weight):
    from possam_label.train.feature_cache import CachedFeatures

    cfg = load_config(TINY, {**reader, "train": {"lr": 1e-3, "warmup_iters": 0}})
    torch.manual_seed(0)
    model = PosSAM.from_config(cfg)
    dataset = build_dataset(cfg, TrainData.from_dir(world), None, seed=0)
    cache = CachedFeatures(model, dataset, [0, 1, 2], 2, torch.device("cpu"), progress=False)
    batch = next(cache.batches(torch.Generator().manual_seed(0)))
    assert batch["pixels"].dtype == torch.float32 and batch["pixels"].shape == (2, 3, 128, 128)
    # The same inputs the uncached path encodes: padding filled with SAM's exact mean.
    replay = build_dataset(cfg, TrainData.from_dir(world), None, seed=0)  # same jitter stream, same order
    samples = [replay[i] for i in (0, 1, 2)]
    assert any(not s["valid"].all() for s in samples)
    expected = [fill_padding(s["image"][None], s["valid"][None], cfg.sam.pixel_mean)[0] for s in samples]
    for pixels in batch["pixels"]:
        assert sum(torch.equal(pixels, e) for e in expected) == 1
    model.train()
    optimizer = build_optimizer(model, cfg.train)
    before = model.get_parameter(weight).detach().clone()
    losses = train_step(model, HeadsForward(model), build_criterion(cfg.train, len(dataset.vocabulary)), optimizer, batch, model.clip.text_classifier(dataset.vocabulary), cfg, torch.device("cpu"))
    assert torch.isfinite(torch.tensor(losses["loss"]))
    assert not torch.equal(model.get_parameter(weight), before)
    # Heads that read no pixels keep none.
    plain = PosSAM.from_config(load_config(TINY))
    assert CachedFeatures(plain, dataset, [0, 1], 2, torch.device("cpu"), progress=False).pixels is None


def test_frozen_modules_keep_their_weights_and_final_stage_only_training(world):
    cfg, model, dataset, vocab = _setup(world)
    cfg.train.frozen_modules = ["pyramid", "pixel_decoder", "transformer_decoder", "mask_quality_head"]
    cfg.train.deep_supervision = False
    model.train()
    frozen = freeze_modules(model, cfg.train.frozen_modules)
    assert frozen and all(not model.get_parameter(n).requires_grad for n in frozen)
    assert not model.transformer_decoder.training and model.ldp.training
    before = {k: v.clone() for k, v in model.heads_state_dict().items()}
    optimizer = build_optimizer(model, cfg.train)
    batch = collate_batch([dataset[0], dataset[1]])
    losses = train_step(model, HeadsForward(model, cfg.train.deep_supervision), build_criterion(cfg.train, len(vocab)), optimizer, batch, model.clip.text_classifier(vocab), cfg, torch.device("cpu"))
    assert not any(k.endswith("_0") for k in losses)  # no auxiliary stages
    after = model.heads_state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("ldp.") for k in changed)
    with pytest.raises(ValueError, match="not head modules"):
        freeze_modules(model, ["sam"])
    with pytest.raises(ValueError, match="nothing to train"):
        freeze_modules(model, ["pyramid", "pixel_decoder", "transformer_decoder", "mask_quality_head", "ldp"])


def test_training_data_targets_only_use_the_training_vocabulary(world):
    from possam_label.vocab import Vocabulary

    paths = TrainData.from_dir(world)
    full = CocoPanopticDataset(paths.json_path, paths.image_dir, paths.panoptic_dir)
    names = ("circle", "square", "sky")
    small = Vocabulary(
        names=names,
        synonyms=tuple((n,) for n in names),
        isthing=(True, True, False),
        category_ids=tuple(full.vocabulary.category_ids[full.vocabulary.index_of(n)] for n in names),
        colors=((1, 1, 1), (2, 2, 2), (3, 3, 3)),
    )
    ds = CocoPanopticDataset(paths.json_path, paths.image_dir, paths.panoptic_dir, vocabulary=small)
    labels = torch.cat([ds[i]["labels"] for i in range(len(ds))])
    full_labels = torch.cat([full[i]["labels"] for i in range(len(full))])
    # Other categories become ignore; labels index the small vocabulary.
    assert 0 < labels.numel() < full_labels.numel()
    assert int(labels.max()) <= 2


def _run_train(args, out, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.train", "--config", str(TINY), *args, "--out", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw
    )


@pytest.mark.slow
@pytest.mark.ray  # Ray Train in subprocesses
def test_killed_two_worker_training_resumes_from_its_last_checkpoint(world, tmp_path):
    """A two-worker Ray Train run (the cached-feature path: frozen encoders run once) killed after a
    checkpoint resumes from it and ends with heads that load as a PosSAM checkpoint."""
    out = tmp_path / "killed"
    iters = 10
    args = ["--data", str(world), "--workers", "2", "--cpus-per-worker", "1", "--max-iters", str(iters), "--cache-features"]
    proc = _run_train(args, out)
    deadline = time.time() + 400
    try:
        while time.time() < deadline:
            ckpt = latest_checkpoint(out)
            if ckpt is not None and int(ckpt.name.split("_")[1]) >= 4:
                break
            if proc.poll() is not None:
                pytest.fail("training ended before it could be killed:\n" + proc.stdout.read()[-3000:])
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint written in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = int(latest_checkpoint(out).name.split("_")[1])
    assert killed_at < iters
    proc = _run_train(args, out)
    log, _ = proc.communicate(timeout=500)
    assert proc.returncode == 0, log[-3000:]
    assert "resumed from" in log
    assert "world_rank=1" in log  # a second worker really took part
    metrics = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    # First run: 1..m (m >= the checkpoint it was killed after); the rerun continues at killed_at + 1.
    m = len(metrics) - (iters - killed_at)  # the rerun appends exactly the iterations after the checkpoint
    assert metrics[:m] == list(range(1, m + 1)) and m >= killed_at
    assert metrics[m:] == list(range(killed_at + 1, iters + 1))
    assert int(latest_checkpoint(out).name.split("_")[1]) == iters
    assert (out / "heads.safetensors").is_file()
    from possam_label.predictor import PosSAMPredictor

    PosSAMPredictor.from_config(TINY, checkpoint=str(out / "heads.safetensors"), device="cpu")
