"""The GPU suite end to end on the CPU (``--smoke``: tiny config at 64 px, one iteration): every
section of its JSON is filled, the time budget skips what would start too late, and the FLOP
bound uses the device table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import benchmark_gpu


def test_peak_table_by_device_name() -> None:
    assert benchmark_gpu.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert benchmark_gpu.bf16_peak_tflops("NVIDIA H200") == 989.0
    assert benchmark_gpu.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert benchmark_gpu.bf16_peak_tflops("Some Future GPU") is None


def test_smoke_run_fills_every_section(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    assert benchmark_gpu.main(["--smoke", "--time-budget", "1200", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for section in ("machine", "settings", "model_only", "predict", "flops", "sam_clip", "train_step", "summary", "skipped", "errors"):
        assert section in result, section
    assert result["errors"] == [] and result["smoke"] is True and result["machine"]["device"] == "cpu"
    grid = {(r["model"], r["precision"], r["compiled"], r["batch_size"]) for r in result["model_only"]}
    assert grid == {(m, p, False, 1) for m in ("possam_h", "possam_b") for p in ("bf16", "fp32")}
    assert all(r["images_per_second"] > 0 and r["peak_memory_mb"] > 0 for r in result["model_only"])
    # torch.compile is not run in smoke mode, and says so.
    compiled = [s for s in result["skipped"] if s.get("compiled")]
    assert {(s["model"], s["precision"]) for s in compiled} == {("possam_h", "bf16"), ("possam_b", "bf16"), ("possam_h", "fp32"), ("possam_b", "fp32")}
    assert all("smoke" in s["reason"] for s in compiled)
    for model in ("possam_h", "possam_b"):
        assert result["flops"][model]["gflops_per_image"] > 0
        assert result["flops"][model]["gflops_by_module"]
    assert result["flops"]["peak_bf16_tflops"] is None and "peak-tflops" in result["flops"]["peak_source"]  # CPU: not in the table
    assert result["sam_clip"]["images_per_second"] > 0
    train = result["train_step"]
    assert train["seconds_per_iteration"] > 0 and train["peak_memory_mb"] > 0 and train["trainable_parameters"] > 0
    assert train["encoders_frozen"] is True and train["encoder_parameters"] > 0
    assert result["predict"][0]["images_per_second"] > 0
    summary = result["summary"]
    assert summary["possam_h_best"]["images_per_second"] == max(r["images_per_second"] for r in result["model_only"] if r["model"] == "possam_h")
    assert summary["over_sam_clip"] == pytest.approx(summary["possam_h_predict_images_per_second"] / summary["sam_clip_images_per_second"])
    assert set(summary["targets_met"]) == {"possam_h_images_per_second", "over_sam_clip"}  # no bound without a peak


def test_exhausted_budget_skips_and_still_writes(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    assert benchmark_gpu.main(["--smoke", "--time-budget", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model_only"] == [] and result["train_step"] == {} and result["sam_clip"] == {}
    sections = {s["section"] for s in result["skipped"]}
    assert sections == {"model_only", "flops", "sam_clip", "train_step", "predict"}
    assert all("time budget" in s["reason"] or "smoke" in s["reason"] for s in result["skipped"])
