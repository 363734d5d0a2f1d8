"""The GPU suite: PosSAM-H and PosSAM-B speed, memory and FLOP-bound fraction, the SAM+CLIP
baseline at ViT-H, and one PosSAM-H heads training step, in one call, written as one JSON.

Runs on a machine with one NVIDIA GPU and no network: every model has random weights (the
architectures of ``configs/possam_vit_h.yaml`` and ``configs/possam_vit_b.yaml``: SAM ViT-H/B +
CLIP ConvNeXt-L, 1024 px), built with ``load_backbones=False`` so nothing is downloaded. Sections:

- ``model_only``: images/s of the network (``PosSAMPredictor.forward_raw``: both encoders, the
  heads and the frozen-CLIP logits, on a (B, 3, 1024, 1024) batch already on the GPU) for each
  model x precision (bf16 autocast, fp32) x mode (eager, ``torch.compile``) x batch (1, 8, 16),
  with the peak GPU memory and the fraction of the bf16 FLOP bound reached;
- ``predict``: images/s of ``predict`` (pre- and post-processing included) for PosSAM-H, bf16;
- ``flops``: FLOPs per image of each network, counted with ``torch.utils.flop_counter``
  (matmuls, convolutions, attention), and the peak they are compared with: the GPU's dense bf16
  peak from a table by device name (H100 SXM / H200: 989 TFLOP/s) or ``--peak-tflops``;
- ``sam_clip``: the two-stage baseline (SAM ViT-H automatic masks, then CLIP on each) images/s;
- ``train_step``: one PosSAM-H heads training step (frozen encoders, batch 8, 1024 px, bf16
  autocast, AdamW): seconds per iteration and peak memory;
- ``summary``: the issue's targets (PosSAM-H >= 30 images/s, >= 40 % of the bf16 bound, >= 20x
  the baseline) against the best measured figures.

Measurements run in priority order under ``--time-budget`` seconds; those that would start after
it are listed as skipped, so the suite always writes its JSON in time. ``--smoke`` runs every
section on the CPU with the tiny config and few iterations (the test of this script).

Example (see docs/gpu_suite.md)::

    python -m pipelines.benchmark_gpu --time-budget 480 --out docs/bench_gpu_h100.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

from pipelines.benchmark_gpu_timing import build_possam, count_flops, on_device, time_forward, time_predict, train_step_timing, variant

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("pipelines.benchmark_gpu")

# Dense bf16 tensor-core peaks (TFLOP/s, vendors' datasheets), longest matching name wins.
BF16_PEAK_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0}
TARGETS = {"possam_h_images_per_second": 30.0, "fraction_of_bf16_bound": 0.40, "over_sam_clip": 20.0}


def bf16_peak_tflops(device_name: str) -> Optional[float]:
    matches = [k for k in BF16_PEAK_TFLOPS if k in device_name]
    return BF16_PEAK_TFLOPS[max(matches, key=len)] if matches else None


class Budget:
    """Wall-clock budget: a measurement starts only while time is left."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": torch.cuda.get_device_name(0), "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                     "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.version()})
    return info


def random_config(config: str, workdir: Path, img_size: Optional[int] = None) -> str:
    """A copy of ``config`` without any weight file (random init, nothing downloaded)."""
    from pipelines.benchmark import benchmark_config

    overrides = {"sam": {"img_size": img_size}} if img_size else None
    return benchmark_config(config, True, workdir, overrides)


@dataclass
class SuiteGrid:
    """The networks measured (config paths, random weights) and the sizes of the measurement grid."""

    models: dict[str, str]
    batches: list[int]
    iterations: int
    warmup: int
    train_batch: int


def suite_grid(args: argparse.Namespace) -> SuiteGrid:
    """PosSAM-H/B at full size with the command line's batches, or the tiny config at 64 px (``--smoke``)."""
    workdir = Path(tempfile.mkdtemp(prefix="possam_gpu_suite_"))
    if args.smoke:
        tiny = str(REPO / "configs" / "possam_tiny.yaml")
        models = {"possam_h": random_config(tiny, workdir, img_size=64), "possam_b": random_config(tiny, workdir, img_size=64)}
        return SuiteGrid(models, [1], 1, 1, 1)
    models = {"possam_h": random_config(str(REPO / "configs" / "possam_vit_h.yaml"), workdir),
              "possam_b": random_config(str(REPO / "configs" / "possam_vit_b.yaml"), workdir)}
    return SuiteGrid(models, [int(b) for b in args.batches.split(",")], args.iterations, 2, 8)


def new_result(args: argparse.Namespace, device: str, grid: SuiteGrid) -> dict[str, Any]:
    """The suite's JSON before any measurement: machine, settings, empty sections and the bf16 peak."""
    result: dict[str, Any] = {
        "suite": "possam-label GPU suite", "smoke": bool(args.smoke), "machine": machine(device),
        "settings": {"time_budget_s": args.time_budget, "batches": grid.batches, "iterations": grid.iterations,
                     "configs": {k: v for k, v in grid.models.items()},
                     "weights": "random (load_backbones=False)", "compile": not (args.no_compile or args.smoke)},
        "model_only": [], "predict": [], "flops": {}, "sam_clip": {}, "train_step": {}, "skipped": [], "errors": [],
    }
    gpu_name = result["machine"].get("gpu", "")
    peak = args.peak_tflops or (bf16_peak_tflops(gpu_name) if gpu_name else None)
    result["flops"]["peak_bf16_tflops"] = peak
    result["flops"]["peak_source"] = "--peak-tflops" if args.peak_tflops else (f"table: {gpu_name}" if peak else "unknown device: pass --peak-tflops")
    return result


class Suite:
    """One run of the suite: its measurements, each filling ``result`` under the time budget, with
    at most one network's weights on the device at a time."""

    def __init__(self, args: argparse.Namespace, device: str, grid: SuiteGrid, budget: Budget, result: dict[str, Any]) -> None:
        self.args, self.device, self.grid, self.budget, self.result = args, device, grid, budget, result
        self.predictors: dict[str, Any] = {}

    def steps(self) -> list[Callable[[], None]]:
        """Every measurement in priority order: what the targets need first, then the rest of the grid."""
        batches, model_only = self.grid.batches, self.model_only
        first = sorted(batches, key=lambda b: (b != 8, b))
        plan: list[Callable[[], None]] = [partial(model_only, "possam_h", "bf16", False, b) for b in first]
        plan += [partial(self.flops, "possam_h"), self.sam_clip, self.train_step, self.predict]
        plan += [partial(model_only, "possam_h", "bf16", True, b) for b in first]
        plan += [partial(model_only, "possam_h", "fp32", False, b) for b in batches]
        plan.append(partial(self.flops, "possam_b"))
        plan += [partial(model_only, "possam_b", p, False, b) for p in ("bf16", "fp32") for b in batches]
        plan += [partial(model_only, "possam_b", "bf16", True, b) for b in batches]
        plan += [partial(model_only, m, "fp32", True, b) for m in ("possam_h", "possam_b") for b in batches]
        return plan

    def attempt(self, section: str, label: dict[str, Any], fn: Callable[[], dict[str, Any]], min_left: float) -> Optional[dict[str, Any]]:
        """``label`` plus what ``fn`` measured, or None when skipped (under ``min_left`` s left) or failed."""
        import torch

        if self.budget.left() < min_left:
            self.result["skipped"].append({"section": section, **label,
                                           "reason": f"time budget ({self.budget.elapsed():.0f} s used of {self.args.time_budget:.0f})"})
            return None
        start = time.perf_counter()
        try:
            row = {**label, **fn(), "wall_seconds": time.perf_counter() - start}
        except Exception as err:  # one failed measurement (e.g. out of memory) must not lose the others
            self.result["errors"].append({"section": section, **label, "error": f"{type(err).__name__}: {err}"[:500],
                                          "traceback": traceback.format_exc()[-1500:]})
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            return None
        logger.warning("%s %s: %s", section, label, {k: v for k, v in row.items() if isinstance(v, (int, float))})
        return row

    def free_device(self) -> None:
        """Drop the cached predictor and give its GPU memory back."""
        import torch

        self.predictors.clear()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def base(self, model: str) -> Any:
        """The fp32 predictor of ``model``, built once while it is the one on the device."""
        if model not in self.predictors:
            self.free_device()  # one model's weights on the device at a time
            self.predictors[model] = build_possam(self.grid.models[model], self.device)
        return self.predictors[model]

    def model_only(self, model: str, precision: str, compiled: bool, batch: int) -> None:
        """One ``model_only`` entry: ``forward_raw`` images/s at this precision, mode and batch."""
        args, grid = self.args, self.grid
        label = {"model": model, "precision": precision, "compiled": compiled, "batch_size": batch}
        if compiled and (args.no_compile or args.smoke):
            self.result["skipped"].append({"section": "model_only", **label, "reason": "--smoke (no torch.compile on the CPU)" if args.smoke else "--no-compile"})
            return
        min_left = 60.0 if compiled and not args.smoke else 5.0
        row = self.attempt("model_only", label, lambda: time_forward(variant(self.base(model), precision, compiled), batch, grid.iterations, grid.warmup), min_left)
        if row is not None:
            self.result["model_only"].append(row)

    def flops(self, model: str) -> None:
        """The ``flops`` entry of ``model``: counted FLOPs per image."""
        row = self.attempt("flops", {"model": model}, lambda: count_flops(variant(self.base(model), "fp32", False)), 10.0)
        if row is not None:
            self.result["flops"][model] = row

    def predict(self) -> None:
        """The ``predict`` entry: PosSAM-H ``predict`` images/s in bf16 at batch 8 (or the largest batch)."""
        batches = self.grid.batches
        batch = 8 if 8 in batches else batches[-1]
        row = self.attempt("predict", {"model": "possam_h", "precision": "bf16", "batch_size": batch},
                           lambda: time_predict(variant(self.base("possam_h"), "bf16", False), batch, self.grid.iterations), 20.0)
        if row is not None:
            self.result["predict"].append(row)

    def sam_clip(self) -> None:
        """The ``sam_clip`` entry: the two-stage baseline at ViT-H, batch 1."""
        import torch

        from possam_label.predictors import build_predictor

        def run() -> dict[str, Any]:
            self.free_device()
            torch.manual_seed(0)
            baseline = on_device(self.device, lambda: build_predictor("sam-clip", self.grid.models["possam_h"], device=self.device, load_backbones=False))
            row = time_predict(baseline, 1, max(1, self.grid.iterations // 2))
            del baseline
            return row

        row = self.attempt("sam_clip", {"model": "sam_clip_vit_h", "batch_size": 1}, run, 30.0)
        if row is not None:
            self.result["sam_clip"] = row

    def train_step(self) -> None:
        """The ``train_step`` entry: one PosSAM-H heads training step."""
        def run() -> dict[str, Any]:
            self.free_device()
            return train_step_timing(self.grid.models["possam_h"], self.device, self.grid.train_batch, max(2, self.grid.iterations // 2))

        row = self.attempt("train_step", {"model": "possam_h", "frozen_encoders": True}, run, 45.0 if not self.args.smoke else 1.0)
        if row is not None:
            self.result["train_step"] = row


def run_suite(args: argparse.Namespace, save: Callable[[dict[str, Any]], None] = lambda result: None) -> dict[str, Any]:
    """Every measurement in priority order; ``save`` is called with the result after each one, so
    a run cut short still leaves what it measured."""
    import torch

    budget = Budget(args.time_budget)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        device = "cpu"
    grid = suite_grid(args)
    result = new_result(args, device, grid)
    peak = result["flops"]["peak_bf16_tflops"]
    suite = Suite(args, device, grid, budget, result)
    for step in suite.steps():
        step()
        summarize(result, peak)
        result["elapsed_s"] = budget.elapsed()
        save(result)
    suite.predictors.clear()
    return result


def summarize(result: dict[str, Any], peak: Optional[float]) -> None:
    """FLOP-bound fractions per model-only entry and the targets."""
    for row in result["model_only"]:
        counted = result["flops"].get(row["model"])
        if counted:
            row["achieved_tflops"] = row["images_per_second"] * counted["gflops_per_image"] / 1e3
            row["fraction_of_bf16_bound"] = row["achieved_tflops"] / peak if peak else None
    h_rows = [r for r in result["model_only"] if r["model"] == "possam_h"]
    best = max(h_rows, key=lambda r: r["images_per_second"], default=None)
    summary: dict[str, Any] = {"possam_h_best": {k: best[k] for k in ("precision", "compiled", "batch_size", "images_per_second")} if best else None}
    if best is not None and best.get("fraction_of_bf16_bound") is not None:
        summary["possam_h_best"]["fraction_of_bf16_bound"] = best["fraction_of_bf16_bound"]
    predict = result["predict"][0]["images_per_second"] if result["predict"] else None
    baseline = result["sam_clip"].get("images_per_second") if result["sam_clip"] else None
    summary["possam_h_predict_images_per_second"] = predict
    summary["sam_clip_images_per_second"] = baseline
    summary["over_sam_clip"] = (predict / baseline) if predict and baseline else None
    checks = {}
    if best is not None:
        checks["possam_h_images_per_second"] = best["images_per_second"] >= TARGETS["possam_h_images_per_second"]
        if best.get("fraction_of_bf16_bound") is not None:
            checks["fraction_of_bf16_bound"] = best["fraction_of_bf16_bound"] >= TARGETS["fraction_of_bf16_bound"]
    if summary["over_sam_clip"] is not None:
        checks["over_sam_clip"] = summary["over_sam_clip"] >= TARGETS["over_sam_clip"]
    summary["targets"] = TARGETS
    summary["targets_met"] = checks
    result["summary"] = summary


def check_imports() -> list[str]:
    """Modules the suite needs that this Python lacks (the wheels of tools/gpu_wheels.sh)."""
    import importlib

    missing = []
    for name in ("torch", "torchvision", "numpy", "scipy", "PIL", "yaml", "segment_anything", "open_clip", "timm", "ftfy", "regex", "pycocotools", "safetensors", "tqdm"):
        try:
            importlib.import_module(name)
        except Exception as err:  # an import can fail with more than ImportError (binary mismatch)
            missing.append(f"{name} ({type(err).__name__}: {err})")
    return missing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmark_gpu", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: docs/bench_gpu_<device>.json)")
    parser.add_argument("--time-budget", type=float, default=480.0, help="seconds; measurements that would start later are skipped")
    parser.add_argument("--batches", default="1,8,16", help="model-only batch sizes")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per measurement (median reported)")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak when it is not in the table")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny config, few iterations: checks the suite end to end")
    return parser


def _device_slug(result: dict[str, Any]) -> str:
    name = result["machine"].get("gpu") or result["machine"]["device"]
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    missing = check_imports()
    if missing:
        print("error: missing packages (install the wheels of tools/gpu_wheels.sh, see docs/gpu_suite.md): " + "; ".join(missing), file=sys.stderr)
        return 2
    out_path: list[Path] = []

    def save(result: dict[str, Any]) -> None:
        if not out_path:
            out_path.append(args.out or (REPO / "docs" / f"bench_gpu_{_device_slug(result)}.json"))
        out_path[0].write_text(json.dumps(result, indent=2, default=str) + "\n")

    result = run_suite(args, save)
    out = out_path[0]
    summary = result["summary"]
    print(f"device: {result['machine'].get('gpu') or result['machine']['device']}; {len(result['model_only'])} model-only entries, "
          f"{len(result['skipped'])} skipped, {len(result['errors'])} errors, {result['elapsed_s']:.0f} s")
    print(f"PosSAM-H best: {summary['possam_h_best']}; predict {summary['possam_h_predict_images_per_second']} images/s; "
          f"sam-clip {summary['sam_clip_images_per_second']} images/s; targets met: {summary['targets_met']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
