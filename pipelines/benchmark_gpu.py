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
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

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


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: Any) -> Optional[float]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # CPU: the process's peak RSS


def random_config(config: str, workdir: Path, img_size: Optional[int] = None) -> str:
    """A copy of ``config`` without any weight file (random init, nothing downloaded)."""
    from pipelines.benchmark import benchmark_config

    overrides = {"sam": {"img_size": img_size}} if img_size else None
    return benchmark_config(config, True, workdir, overrides)


def on_device(device: str, build: Callable[[], Any]) -> Any:
    """``build()`` with ``device`` as torch's default device, so random weights are initialised on
    the GPU (seconds) rather than on the CPU (a minute for ViT-H + ConvNeXt-L); on failure the
    plain build is used."""
    import torch

    if not device.startswith("cuda"):
        return build()
    try:
        with torch.device(device):
            return build()
    except Exception as err:  # code that assumes CPU tensors while building: build the slow way
        logger.warning("building on %s failed (%s: %s); building on the CPU", device, type(err).__name__, err)
        return build()


def build_possam(config: str, device: str) -> Any:
    import torch

    from possam_label.predictors import build_predictor

    torch.manual_seed(0)
    return on_device(device, lambda: build_predictor("possam", config, device=device, load_backbones=False, precision="fp32"))


def variant(base: Any, precision: str, compiled: bool) -> Any:
    """The same network (shared weights) under another precision / compile setting."""
    from possam_label.predictor import PosSAMPredictor

    return PosSAMPredictor(base.model, base.config, base.vocabulary, base.train_vocabulary, base.device, base.weight_files,
                           precision=precision, compile=compiled)


def time_forward(predictor: Any, batch_size: int, iterations: int, warmup: int) -> dict[str, Any]:
    """Images/s of ``forward_raw`` on a random (B, 3, S, S) batch already on the device."""
    import torch

    device = predictor.device
    size = predictor.model.sam.img_size
    text = predictor.text_classifier(predictor.vocabulary)
    pixels = torch.rand(batch_size, 3, size, size, device=device) * 255
    _reset_peak(device)
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(warmup):
            predictor.forward_raw(pixels, text)
        _sync(device)
        warmup_s = time.perf_counter() - start
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            predictor.forward_raw(pixels, text)
            _sync(device)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"images_per_second": batch_size / seconds, "seconds_per_batch": seconds, "iterations": iterations,
            "warmup_seconds": warmup_s, "peak_memory_mb": _peak_mb(device)}


def count_flops(predictor: Any) -> dict[str, Any]:
    """FLOPs per image of ``forward_raw`` at batch 1 (``torch.utils.flop_counter``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = predictor.model.sam.img_size
    text = predictor.text_classifier(predictor.vocabulary)
    pixels = torch.rand(1, 3, size, size, device=predictor.device) * 255
    predictor.model.requires_grad_(False)  # the counter's module tracker hooks grad-requiring tensors
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        predictor.forward_raw(pixels, text)
    by_module = {name: sum(v.values()) / 1e9 for name, v in counter.get_flop_counts().items() if name.count(".") == 1}
    return {"gflops_per_image": counter.get_total_flops() / 1e9, "gflops_by_module": by_module}


def time_predict(predictor: Any, batch_size: int, iterations: int) -> dict[str, Any]:
    """Images/s of ``predict`` on random uint8 images of the model's input size."""
    import numpy as np

    size = predictor.model.sam.img_size if hasattr(predictor, "model") else predictor.config.sam.img_size
    images = [np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8) for i in range(batch_size)]
    predictor.predict(images, batch_size=batch_size)  # warm-up: text embeddings, allocator, kernels
    _reset_peak(predictor.device)
    times, segments = [], 0
    for _ in range(iterations):
        start = time.perf_counter()
        predictions = predictor.predict(images, batch_size=batch_size)
        _sync(predictor.device)
        times.append(time.perf_counter() - start)
        segments += sum(len(p.segments) for p in predictions)
    seconds = statistics.median(times)
    return {"images_per_second": batch_size / seconds, "seconds_per_batch": seconds, "iterations": iterations,
            "segments_per_image": segments / (iterations * batch_size), "peak_memory_mb": _peak_mb(predictor.device)}


def train_step_timing(config: str, device: str, batch_size: int, iterations: int, segments_per_image: int = 10) -> dict[str, Any]:
    """Seconds per PosSAM heads training step (frozen encoders run in the step, bf16 autocast)."""
    import torch

    from possam_label.config import load_config
    from possam_label.model.possam import FROZEN_PREFIXES, PosSAM
    from possam_label.train.trainer import HeadsForward, build_criterion, build_optimizer, freeze_modules, train_step
    from possam_label.vocab import load_vocabulary, resolve_vocabulary_spec

    cfg = load_config(config)
    cfg.train.amp = True  # bf16 autocast (on CUDA; the step runs fp32 on the CPU)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = on_device(device, lambda: PosSAM.from_config(cfg, load_backbones=False)).to(dev)
    model.train()
    freeze_modules(model, cfg.train.frozen_modules)  # head modules the config freezes; the encoders are frozen by construction
    vocabulary = load_vocabulary(resolve_vocabulary_spec(cfg.train_vocabulary or cfg.vocabulary, cfg.resolve_path))
    text = model.clip.text_classifier(vocabulary)
    criterion = build_criterion(cfg.train, len(vocabulary))
    optimizer = build_optimizer(model, cfg.train)
    heads = HeadsForward(model, cfg.train.deep_supervision)
    size = cfg.sam.img_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator)
    targets = []
    for _ in range(batch_size):
        masks = torch.zeros(segments_per_image, size, size, dtype=torch.bool)
        for k in range(segments_per_image):
            y, x = torch.randint(0, size // 2, (2,), generator=generator).tolist()
            h, w = torch.randint(size // 16, size // 2, (2,), generator=generator).tolist()
            masks[k, y : y + h, x : x + w] = True
        targets.append({"labels": torch.randint(0, len(vocabulary), (segments_per_image,), generator=generator), "masks": masks})
    batch = {"images": images, "valid": None, "targets": targets}
    train_step(model, heads, criterion, optimizer, batch, text, cfg, dev)  # warm-up
    _reset_peak(dev)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        losses = train_step(model, heads, criterion, optimizer, batch, text, cfg, dev)
        _sync(dev)
        times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    encoders = [p for name, p in model.named_parameters() if name.startswith(FROZEN_PREFIXES)]
    return {"seconds_per_iteration": statistics.median(times), "iterations": iterations, "batch_size": batch_size, "img_size": size,
            "precision": "bf16" if dev.type == "cuda" else "fp32", "peak_memory_mb": _peak_mb(dev), "loss": losses["loss"],
            "trainable_parameters": trainable, "encoder_parameters": sum(p.numel() for p in encoders),
            "encoders_frozen": not any(p.requires_grad for p in encoders),
            "images_per_second": batch_size / statistics.median(times)}


def run_suite(args: argparse.Namespace, save: Callable[[dict[str, Any]], None] = lambda result: None) -> dict[str, Any]:
    """Every measurement in priority order; ``save`` is called with the result after each one, so
    a run cut short still leaves what it measured."""
    import torch

    budget = Budget(args.time_budget)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        device = "cpu"
    workdir = Path(tempfile.mkdtemp(prefix="possam_gpu_suite_"))
    if args.smoke:
        tiny = str(REPO / "configs" / "possam_tiny.yaml")
        models = {"possam_h": random_config(tiny, workdir, img_size=64), "possam_b": random_config(tiny, workdir, img_size=64)}
        batches, iterations, warmup, train_batch = [1], 1, 1, 1
    else:
        models = {"possam_h": random_config(str(REPO / "configs" / "possam_vit_h.yaml"), workdir),
                  "possam_b": random_config(str(REPO / "configs" / "possam_vit_b.yaml"), workdir)}
        batches, iterations, warmup, train_batch = [int(b) for b in args.batches.split(",")], args.iterations, 2, 8
    result: dict[str, Any] = {
        "suite": "possam-label GPU suite", "smoke": bool(args.smoke), "machine": machine(device),
        "settings": {"time_budget_s": args.time_budget, "batches": batches, "iterations": iterations, "configs": {k: v for k, v in models.items()},
                     "weights": "random (load_backbones=False)", "compile": not (args.no_compile or args.smoke)},
        "model_only": [], "predict": [], "flops": {}, "sam_clip": {}, "train_step": {}, "skipped": [], "errors": [],
    }
    gpu_name = result["machine"].get("gpu", "")
    peak = args.peak_tflops or (bf16_peak_tflops(gpu_name) if gpu_name else None)
    result["flops"]["peak_bf16_tflops"] = peak
    result["flops"]["peak_source"] = "--peak-tflops" if args.peak_tflops else (f"table: {gpu_name}" if peak else "unknown device: pass --peak-tflops")
    predictors: dict[str, Any] = {}

    def attempt(section: str, label: dict[str, Any], fn: Callable[[], dict[str, Any]], min_left: float) -> Optional[dict[str, Any]]:
        if budget.left() < min_left:
            result["skipped"].append({"section": section, **label, "reason": f"time budget ({budget.elapsed():.0f} s used of {args.time_budget:.0f})"})
            return None
        start = time.perf_counter()
        try:
            row = {**label, **fn(), "wall_seconds": time.perf_counter() - start}
        except Exception as err:  # one failed measurement (e.g. out of memory) must not lose the others
            result["errors"].append({"section": section, **label, "error": f"{type(err).__name__}: {err}"[:500],
                                     "traceback": traceback.format_exc()[-1500:]})
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            return None
        logger.warning("%s %s: %s", section, label, {k: v for k, v in row.items() if isinstance(v, (int, float))})
        return row

    def base(model: str) -> Any:
        if model not in predictors:
            predictors.clear()  # one model's weights on the device at a time
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            predictors[model] = build_possam(models[model], device)
        return predictors[model]

    def model_only(model: str, precision: str, compiled: bool, batch: int) -> None:
        label = {"model": model, "precision": precision, "compiled": compiled, "batch_size": batch}
        if compiled and (args.no_compile or args.smoke):
            result["skipped"].append({"section": "model_only", **label, "reason": "--smoke (no torch.compile on the CPU)" if args.smoke else "--no-compile"})
            return
        min_left = 60.0 if compiled and not args.smoke else 5.0
        row = attempt("model_only", label, lambda: time_forward(variant(base(model), precision, compiled), batch, iterations, warmup), min_left)
        if row is not None:
            result["model_only"].append(row)

    # Priority order: what the targets need first, then the rest of the grid.
    plan: list[Callable[[], None]] = []
    for batch in sorted(batches, key=lambda b: (b != 8, b)):
        plan.append(lambda b=batch: model_only("possam_h", "bf16", False, b))
    plan.append(lambda: _flops("possam_h"))
    plan.append(lambda: _sam_clip())
    plan.append(lambda: _train())
    plan.append(lambda: _predict())
    for batch in sorted(batches, key=lambda b: (b != 8, b)):
        plan.append(lambda b=batch: model_only("possam_h", "bf16", True, b))
    for batch in batches:
        plan.append(lambda b=batch: model_only("possam_h", "fp32", False, b))
    plan.append(lambda: _flops("possam_b"))
    for precision in ("bf16", "fp32"):
        for batch in batches:
            plan.append(lambda p=precision, b=batch: model_only("possam_b", p, False, b))
    for batch in batches:
        plan.append(lambda b=batch: model_only("possam_b", "bf16", True, b))
    for model in ("possam_h", "possam_b"):
        for batch in batches:
            plan.append(lambda m=model, b=batch: model_only(m, "fp32", True, b))

    def _flops(model: str) -> None:
        row = attempt("flops", {"model": model}, lambda: count_flops(variant(base(model), "fp32", False)), 10.0)
        if row is not None:
            result["flops"][model] = row

    def _predict() -> None:
        batch = 8 if 8 in batches else batches[-1]
        row = attempt("predict", {"model": "possam_h", "precision": "bf16", "batch_size": batch},
                      lambda: time_predict(variant(base("possam_h"), "bf16", False), batch, iterations), 20.0)
        if row is not None:
            result["predict"].append(row)

    def _sam_clip() -> None:
        from possam_label.predictors import build_predictor

        def run() -> dict[str, Any]:
            predictors.clear()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            torch.manual_seed(0)
            baseline = on_device(device, lambda: build_predictor("sam-clip", models["possam_h"], device=device, load_backbones=False))
            row = time_predict(baseline, 1, max(1, iterations // 2))
            del baseline
            return row

        row = attempt("sam_clip", {"model": "sam_clip_vit_h", "batch_size": 1}, run, 30.0)
        if row is not None:
            result["sam_clip"] = row

    def _train() -> None:
        def run() -> dict[str, Any]:
            predictors.clear()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            return train_step_timing(models["possam_h"], device, train_batch, max(2, iterations // 2))

        row = attempt("train_step", {"model": "possam_h", "frozen_encoders": True}, run, 45.0 if not args.smoke else 1.0)
        if row is not None:
            result["train_step"] = row

    for step in plan:
        step()
        summarize(result, peak)
        result["elapsed_s"] = budget.elapsed()
        save(result)
    predictors.clear()
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
