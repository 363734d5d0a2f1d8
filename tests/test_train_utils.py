"""Shared training utilities: the LR schedule, the run's output folder, fp16 checkpoints, loss plots."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from torch import nn

from possam_label.model.weights import WeightsError
from possam_label.train.checkpoints import load_checkpoint_into, prepare_out_dir, read_checkpoint_metadata, save_fp16_checkpoint
from possam_label.train.plots import plot_loss_curve
from possam_label.train.schedules import cosine_lr


def test_cosine_lr_warms_up_linearly_then_decays_to_the_final_ratio() -> None:
    assert cosine_lr(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert cosine_lr(10, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 1.0, warmup=10) == pytest.approx(0.05 + 0.95 * 0.5)
    assert cosine_lr(100, 100, 1.0, warmup=10) == pytest.approx(0.05)
    assert cosine_lr(500, 100, 2.0, warmup=10, final_ratio=0.0) == pytest.approx(0.0)
    rates = [cosine_lr(s, 100, 1.0, warmup=0) for s in range(101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_prepare_out_dir_creates_parents_and_refuses_a_file(tmp_path) -> None:
    out = prepare_out_dir(tmp_path / "a" / "b")
    assert out.is_dir()
    assert prepare_out_dir(out) == out  # an existing folder is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        prepare_out_dir(tmp_path / "file")


def test_fp16_checkpoint_round_trip_with_metadata(tmp_path) -> None:
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    path = save_fp16_checkpoint(model, tmp_path / "sub" / "m.safetensors", {"name": "tiny", "steps": 3, "arch": {"width": 4}})
    state = load_file(str(path))
    assert set(state) == set(model.state_dict())
    assert state["0.weight"].dtype == torch.float16
    assert torch.equal(state["0.weight"], model[0].weight.detach().half())
    assert state["1.num_batches_tracked"].dtype == torch.int64  # non-float tensors keep their dtype
    assert model[0].weight.dtype == torch.float32  # the model itself is untouched
    meta = read_checkpoint_metadata(path)
    assert meta["name"] == "tiny" and json.loads(meta["steps"]) == 3 and json.loads(meta["arch"]) == {"width": 4}


def test_load_checkpoint_into_reads_fp16_safetensors_and_weights_only_torch_files(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    fp16 = save_fp16_checkpoint(model, tmp_path / "m.safetensors", {})
    torch.manual_seed(1)
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    assert load_checkpoint_into(fresh, fp16, "the tiny model") is fresh
    assert fresh[0].weight.dtype == torch.float32
    assert torch.equal(fresh[0].weight, model[0].weight.detach().half().float())
    pickled = tmp_path / "m.pt"
    torch.save(model.state_dict(), pickled)
    load_checkpoint_into(fresh, pickled, "the tiny model")
    assert torch.equal(fresh[0].weight, model[0].weight)
    with pytest.raises(WeightsError, match=r"m\.safetensors: does not fit the wide model"):
        load_checkpoint_into(nn.Sequential(nn.Linear(5, 3)), fp16, "the wide model")
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint_into(fresh, tmp_path / "missing.safetensors", "the tiny model")


def test_read_checkpoint_metadata_names_the_bad_file(tmp_path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        read_checkpoint_metadata(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        read_checkpoint_metadata(bad)


def test_plot_loss_curve_writes_a_png(tmp_path) -> None:
    history = [{"step": s, "loss": math.exp(-s / 10), "mask": 0.5} for s in range(1, 30)] + [{"step": 30, "other": 1.0}]
    path = plot_loss_curve(history, tmp_path / "plots" / "loss.png", "tiny run", ["loss", "mask", "absent"])
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (700, 400)
