"""Timings of one network on one device, for the GPU suite (:mod:`pipelines.benchmark_gpu`):
``forward_raw`` and ``predict`` images/s, counted FLOPs and one heads training step, each with
its peak memory."""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Callable, Optional

# The suite's one logger (run as ``python -m pipelines.benchmark_gpu``, where __name__ is __main__).
logger = logging.getLogger("pipelines.benchmark_gpu")


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
