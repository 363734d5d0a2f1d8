"""Throughput benchmark: PosSAM alone, PosSAM through the Ray pipeline, and the two-stage
SAM+CLIP baseline, side by side on the same images, config and batch size.

- ``model_only``: images decoded up front (not timed), ``PosSAMPredictor.predict`` timed over
  all of them after one warm-up batch;
- ``model_only_presized``: the same on images already downscaled to the model's input side (what
  the pipeline's decode stage hands the model);
- ``pipeline``: ``run_autolabel`` (Ray Data: decode tasks -> model actor -> encode tasks ->
  Parquet/PNG commits) on a local Ray, reporting the rate after model loading (steady) and the
  end-to-end rate including it;
- ``sam_clip``: the two-stage baseline (``SamClipPredictor``: SAM's automatic mask generator, then
  CLIP on every mask) alone, timed like ``model_only`` on the presized images.

Every model-only path runs in a fresh child process, so its peak memory (resident set on CPU,
``torch.cuda.max_memory_allocated`` on GPU) is its own; the pipeline's is the peak of the summed
resident sets of all the job's processes. ``--flops`` counts FLOPs per image with
``torch.utils.flop_counter`` and reports the compute bound (peak FLOP/s / FLOPs per image) and the
fraction of it reached, given the device's peak (``--peak-tflops``, or known GPUs' bf16 dense peak).

Example::

    python -m pipelines.benchmark --dataset tests/data/autolabel/photos --num-images 48 \\
        --config configs/possam_small.yaml --batch-size 4 --json bench.json

Each measured path is one function (``measure_model_only``, ``measure_pipeline``) returning a
dict; add new paths (GPU, baselines) the same way and list them in ``PATHS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from pipelines._cli import add_set_argument
from possam_label.process_usage import PeakTreeRss, process_tree_cpu_seconds

logger = logging.getLogger("pipelines.benchmark")


def machine_description() -> dict[str, Any]:
    """CPU model, core count, memory, GPU (if any) and the versions that matter for speed."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    import ray

    return {
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb,
        "gpus": gpus,
        "load_average_1_5_15": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "ray": ray.__version__,
        "platform": platform.platform(),
    }


def prepare_inputs(dataset: str, num_images: int, workdir: Path) -> list[str]:
    """``num_images`` distinct paths: the decodable images of ``dataset``, repeated through
    symlinks in ``workdir`` when there are fewer (distinct paths, so the pipeline labels each)."""
    from possam_label.engine.autolabel import list_inputs
    from possam_label.io.images import ImageDecodeError, load_image_rgb

    sources = []
    for path in list_inputs(dataset):
        try:
            load_image_rgb(path)
        except ImageDecodeError:
            continue
        sources.append(path)
    if not sources:
        raise SystemExit(f"no decodable image in {dataset}")
    links = workdir / "inputs"
    links.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_images):
        source = sources[i % len(sources)]
        link = links / f"{i:05d}_{Path(source).name}"
        link.symlink_to(source)
        paths.append(str(link))
    return paths


def benchmark_config(config: str, random_weights: bool, workdir: Path, overrides: Optional[dict[str, Any]] = None) -> str:
    """The config to benchmark; with ``random_weights`` a copy without weight files (same speed,
    usable before the weights exist); ``overrides`` (``--set``) are merged into the copy."""
    if not random_weights and not overrides:
        return config
    from possam_label.config_mapping import merge

    with open(config, "r", encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    data = merge(data, overrides or {})
    if random_weights:
        data.setdefault("sam", {})["checkpoint"] = None
        data.setdefault("clip", {})["pretrained"] = None
        data["checkpoint"] = None
    # The copy lives elsewhere: make file references relative to the original config absolute.
    base = Path(config).resolve().parent
    for section, key in ((None, "vocabulary"), (None, "train_vocabulary"), (None, "checkpoint"), ("sam", "checkpoint"), ("clip", "pretrained")):
        holder = data if section is None else data.get(section) or {}
        value = holder.get(key)
        if isinstance(value, str) and "," not in value and (base / value).exists():
            holder[key] = str((base / value).resolve())
    path = workdir / f"{Path(config).stem}_random.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


# bf16 dense tensor-core peaks (TFLOP/s) from the vendors' datasheets, for the FLOP bound.
KNOWN_PEAK_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def known_peak_tflops(device_name: str) -> Optional[float]:
    """Peak bf16 dense TFLOP/s of a known GPU name (longest matching key), else None."""
    matches = [k for k in KNOWN_PEAK_TFLOPS if k in device_name]
    return KNOWN_PEAK_TFLOPS[max(matches, key=len)] if matches else None


def _build_predictor(model: str, config: str, device: Optional[str], precision: str, compile_model: bool) -> Any:
    from possam_label.predictors import build_predictor

    if model == "possam":
        return build_predictor(model, config, device=device, precision=precision, compile=compile_model)
    return build_predictor(model, config, device=device)


def _load_images(paths: list[str], config: str, presize: bool) -> list[Any]:
    from possam_label.config import load_config
    from possam_label.io.images import load_image_rgb, resize_longest_side

    images = [load_image_rgb(p) for p in paths]
    if presize:
        side = load_config(config).sam.img_size
        images = [resize_longest_side(image, side) for image in images]
    return images


def measure_model_only(
    paths: list[str], config: str, batch_size: int, device: Optional[str], vocabulary: Optional[str], torch_threads: int,
    presize: bool = False, model: str = "possam", precision: str = "auto", compile_model: bool = False,
) -> dict[str, Any]:
    """Images/s of ``predict`` alone on pre-decoded images (one warm-up batch), in this process.

    With ``presize`` the images are first downscaled to the model's input side, as the pipeline's
    decode stage does: this times the network and its post-processing only, without the
    predictor's own resizing of full-size images and full-size id maps. ``model`` is "possam" or
    "sam-clip" (the two-stage baseline).
    """
    import resource

    import torch

    torch.set_num_threads(torch_threads)
    torch.manual_seed(0)  # the same random-init parts as the pipeline's actors
    images = _load_images(paths, config, presize)
    start = time.perf_counter()
    predictor = _build_predictor(model, config, device, precision, compile_model)
    load_seconds = time.perf_counter() - start
    cuda = predictor.device.type == "cuda"
    predictor.predict(images[:batch_size], vocabulary=vocabulary, batch_size=batch_size)  # warm-up (text embeddings, allocator, compile)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    cpu_start, start = time.process_time(), time.perf_counter()
    segments = 0
    for begin in range(0, len(images), batch_size):
        for prediction in predictor.predict(images[begin : begin + batch_size], vocabulary=vocabulary, batch_size=batch_size):
            segments += len(prediction.segments)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    return {
        "model": model,
        "images": len(images),
        "segments": segments,
        "seconds": seconds,
        "images_per_second": len(images) / seconds,
        "cpu_seconds_per_image": cpu_seconds / len(images),
        "model_load_seconds": load_seconds,
        "device": str(predictor.device),
        "device_name": torch.cuda.get_device_name(predictor.device) if cuda else None,
        "precision": getattr(predictor, "precision", "auto"),
        "compiled": compile_model if model == "possam" else False,
        "torch_threads": torch.get_num_threads(),
        # ru_maxrss is in KiB on Linux; this process only ran this measurement.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(predictor.device) / 2**20 if cuda else None,
    }


def _child_entry(fn_name: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    return globals()[fn_name](*args, **kwargs)


def in_child_process(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a measurement in a fresh (spawned) Python process and return its result, so that the
    peak memory it reports belongs to that measurement alone."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_child_entry, (fn.__name__, args, kwargs))


def count_flops_per_image(
    config: str, batch_size: int, device: Optional[str], vocabulary: Optional[str], model: str = "possam", paths: Optional[list[str]] = None
) -> dict[str, Any]:
    """FLOPs per image of one ``predict`` batch, counted by ``torch.utils.flop_counter`` (matmuls,
    convolutions, attention; element-wise work is not counted, so the bound is a compute bound).
    The text embeddings are computed before counting (they are cached per vocabulary)."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    predictor = _build_predictor(model, config, device, "fp32", False)
    # FlopCounterMode's module tracker hooks tensors that require grad, which inference mode refuses.
    for module in (getattr(predictor, "model", None), getattr(predictor, "sam", None), getattr(predictor, "clip", None)):
        if module is not None:
            module.requires_grad_(False)
    side = predictor.config.sam.img_size
    if paths:
        images = _load_images(paths[:batch_size], config, presize=True)
    else:
        images = [np.random.default_rng(i).integers(0, 255, (side, side, 3), dtype=np.uint8) for i in range(batch_size)]
    predictor.predict(images[:1], vocabulary=vocabulary, batch_size=1)  # text embeddings cached
    counter = FlopCounterMode(display=False)
    with counter:
        predictor.predict(images, vocabulary=vocabulary, batch_size=batch_size)
    total = counter.get_total_flops()
    by_module = {name: int(sum(v.values())) for name, v in counter.get_flop_counts().items() if name.count(".") <= 1}
    return {"model": model, "images": len(images), "gflops_per_image": total / len(images) / 1e9, "gflops_by_module": {k: v / len(images) / 1e9 for k, v in by_module.items()}}


def measure_pipeline(
    paths: list[str], config: str, batch_size: int, device: Optional[str], vocabulary: Optional[str], torch_threads: int,
    workdir: Path, num_cpus: Optional[int], rows_per_part: int,
) -> dict[str, Any]:
    """Images/s of the full Ray Data auto-labeling job on a fresh local Ray.

    Also counts the CPU seconds of every process of the job (driver, Ray daemons, decode/encode
    workers, model actor) per image: unlike wall-clock rates this does not depend on what else
    runs on the machine.
    """
    import ray

    from possam_label.engine.autolabel import AutolabelOptions, run_autolabel

    listing = workdir / f"inputs_{time.time_ns()}.txt"
    listing.write_text("\n".join(paths) + "\n")
    out = workdir / f"out_{time.time_ns()}"
    start = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False, _node_ip_address="127.0.0.1")
    try:
        cpu_before = process_tree_cpu_seconds()
        with PeakTreeRss() as memory:
            summary = run_autolabel(
                AutolabelOptions(
                    dataset=str(listing), out_dir=str(out), config=config, vocabulary=vocabulary, batch_size=batch_size,
                    num_cpus=num_cpus, rows_per_part=rows_per_part, show_progress=False, torch_threads=torch_threads, workers=1,
                    gpus_per_worker=None if device in (None, "cuda") else 0.0,
                )
            )
        cpu_seconds = process_tree_cpu_seconds() - cpu_before
    finally:
        ray.shutdown()
    wall = time.perf_counter() - start
    run = json.loads((out / "run.json").read_text())
    return {
        "images": summary.processed,
        "ok": summary.ok,
        "errors": summary.errors,
        "images_per_second": summary.steady_images_per_second,
        "images_per_second_with_model_load": summary.images_per_second,
        "startup_seconds": summary.startup_seconds,
        "max_result_lag_seconds": summary.max_result_lag_seconds,
        # Model time inside the pipeline: per image (compare with 1 / model_only's rate: higher
        # means the model was slowed by the other stages) and as a share of the steady wall time
        # (below 1 means the model waited for input or for the consumer).
        "model_seconds_per_image": summary.model_seconds / max(1, summary.ok),
        "model_busy_fraction": summary.model_seconds / max(1, run["execution"]["workers"]) * summary.steady_images_per_second / max(1, summary.processed),
        "wall_seconds_with_ray_start": wall,
        # Includes the model actor's start-up (imports, model build), which model_only excludes.
        "cpu_seconds_per_image": cpu_seconds / max(1, summary.processed),
        "peak_rss_mb_all_processes": memory.peak_bytes / 2**20,
        "execution": run.get("execution"),
    }


def measure_model_only_presized(
    paths: list[str], config: str, batch_size: int, device: Optional[str], vocabulary: Optional[str], torch_threads: int,
    precision: str = "auto", compile_model: bool = False,
) -> dict[str, Any]:
    """:func:`measure_model_only` on images already downscaled to the model input side."""
    return measure_model_only(paths, config, batch_size, device, vocabulary, torch_threads, presize=True, precision=precision, compile_model=compile_model)


def measure_sam_clip(
    paths: list[str], config: str, batch_size: int, device: Optional[str], vocabulary: Optional[str], torch_threads: int,
    precision: str = "auto", compile_model: bool = False,
) -> dict[str, Any]:
    """The two-stage SAM+CLIP baseline alone, on the presized images (settings: the config's
    ``baseline`` section)."""
    return measure_model_only(paths, config, batch_size, device, vocabulary, torch_threads, presize=True, model="sam-clip")


PATHS: dict[str, Callable[..., dict[str, Any]]] = {
    "model_only": measure_model_only,
    "model_only_presized": measure_model_only_presized,
    "pipeline": measure_pipeline,
    "sam_clip": measure_sam_clip,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.benchmark",
        description="Compare the images/s of the whole auto-labeling pipeline with the model alone on the same images "
        "(same config, same batch size), and describe the machine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "autolabel" / "photos"),
                        help="image source (any --dataset form of pipelines.autolabel); undecodable files are skipped")
    parser.add_argument("--num-images", type=int, default=48, help="images per measurement (the source is repeated via symlinks)")
    parser.add_argument("--config", default=None, help="PosSAM config (default: the shipped default config)")
    parser.add_argument("--random-weights", action="store_true", help="benchmark the config's architecture with random weights (no weight files needed)")
    parser.add_argument("--vocab", default=None, help="vocabulary (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call, for both paths")
    parser.add_argument("--device", default=None, help="model-only device (default: CUDA if available); the pipeline uses GPUs when Ray sees them")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the pipeline's local Ray (default: all)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="CPU inference threads, the same for every path (default: the pipeline's rule, CPUs - 1)")
    parser.add_argument("--rows-per-part", type=int, default=64, help="pipeline commit size")
    parser.add_argument("--repeats", type=int, default=1, help="measure each path this many times, alternating; medians are reported")
    parser.add_argument("--paths", default="model_only,model_only_presized,pipeline,sam_clip", help=f"comma list of paths to measure, from {sorted(PATHS)}")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="PosSAM model-only precision: auto = bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--compile", dest="compile_model", action="store_true", help="torch.compile PosSAM's encoders and heads in the model-only paths")
    add_set_argument(parser, "--set baseline.pred_iou_thresh=0.5 (applies to every path)")
    parser.add_argument("--flops", action="store_true", help="count FLOPs per image (PosSAM, and the baseline if measured) and report the compute bound")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for the bound (default: known GPUs' bf16 dense peak; none on CPU)")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, deleted afterwards)")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the results as JSON to OUT")
    return parser


def measure_paths(args: argparse.Namespace, paths_to_run: list[str], workdir: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], int]:
    """``--repeats`` runs of each path (printing each run's rate), then the ``--flops`` counts:
    ``(runs by path, FLOPs by model, torch threads)``."""
    from possam_label.config_mapping import parse_assignments
    from possam_label.engine.autolabel import default_torch_threads

    config = benchmark_config(args.config, args.random_weights, workdir, parse_assignments(args.assignments))
    inputs = prepare_inputs(args.dataset, args.num_images, workdir)
    threads = args.torch_threads or default_torch_threads(args.num_cpus or os.cpu_count() or 1, 1)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in paths_to_run}
    for _ in range(args.repeats):
        for name in paths_to_run:
            if name == "pipeline":
                run = measure_pipeline(inputs, config, args.batch_size, args.device, args.vocab, threads, workdir, args.num_cpus, args.rows_per_part)
            else:
                run = in_child_process(PATHS[name], inputs, config, args.batch_size, args.device, args.vocab, threads,
                                       precision=args.precision, compile_model=args.compile_model)
            runs[name].append(run)
            print(f"{name:<20} {runs[name][-1]['images_per_second']:.3f} images/s", flush=True)
    flops: dict[str, Any] = {}
    if args.flops:
        for name, model in (("possam", "possam"), ("sam_clip", "sam-clip")):
            if model == "sam-clip" and "sam_clip" not in runs:
                continue
            flops[name] = in_child_process(count_flops_per_image, config, args.batch_size, args.device, args.vocab, model, inputs)
    return runs, flops, threads


def build_result(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], flops: dict[str, Any], threads: int) -> dict[str, Any]:
    """The benchmark's JSON: the runs, their medians, the ratios between paths and the FLOP bounds."""
    result: dict[str, Any] = {
        "machine": machine_description(), "config": args.config, "random_weights": args.random_weights, "overrides": args.assignments,
        "batch_size": args.batch_size, "torch_threads": threads, "num_images": args.num_images, "dataset": args.dataset, "runs": runs,
        "images_per_second": {name: statistics.median(r["images_per_second"] for r in rs) for name, rs in runs.items()},
    }
    rates = result["images_per_second"]
    for reference in ("model_only", "model_only_presized"):
        if reference in runs and "pipeline" in runs:
            result[f"pipeline_over_{reference}"] = rates["pipeline"] / rates[reference]
        if reference in runs and "sam_clip" in runs:
            result[f"{reference}_over_sam_clip"] = rates[reference] / rates["sam_clip"]
    if "pipeline" in runs and "sam_clip" in runs:
        result["pipeline_over_sam_clip"] = rates["pipeline"] / rates["sam_clip"]
    result["peak_memory_mb"] = {
        name: statistics.median(r.get("peak_gpu_memory_mb") or r.get("peak_rss_mb") or r.get("peak_rss_mb_all_processes") for r in rs)
        for name, rs in runs.items()
    }
    if flops:
        device_name = next((r["device_name"] for rs in runs.values() for r in rs if r.get("device_name")), None)
        peak = args.peak_tflops or (known_peak_tflops(device_name) if device_name else None)
        result["flops"] = flops
        result["peak_tflops"] = peak
        for name, counted in flops.items():
            measured = rates.get("model_only_presized" if name == "possam" else "sam_clip")
            if peak and measured:
                bound = peak * 1e12 / (counted["gflops_per_image"] * 1e9)
                counted["bound_images_per_second"] = bound
                counted["fraction_of_bound"] = measured / bound
            if measured:
                counted["achieved_tflops"] = measured * counted["gflops_per_image"] / 1e3
    result["cpu_seconds_per_image"] = {name: statistics.median(r["cpu_seconds_per_image"] for r in rs) for name, rs in runs.items()}
    return result


def print_report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The human-readable summary of ``result``: machine, settings, one line per path, ratios, FLOPs."""
    runs, threads, machine = result["runs"], result["torch_threads"], result["machine"]
    print(f"machine: {machine['cpu']} x{machine['cpu_count']}, {machine['memory_gb']} GB, GPUs: {machine['gpus'] or 'none'}, load {machine['load_average_1_5_15']}")
    print(f"config {args.config}{' (random weights)' if args.random_weights else ''}, batch size {args.batch_size}, "
          f"{threads} torch threads, {args.num_images} images")
    for name, rate in result["images_per_second"].items():
        print(f"  {name:<20} {rate:8.2f} images/s  {result['cpu_seconds_per_image'][name]:6.3f} CPU s/image  (median of {len(runs[name])})")
        if name == "pipeline":
            busy = statistics.median(r["model_busy_fraction"] for r in runs[name])
            inside = statistics.median(r["model_seconds_per_image"] for r in runs[name])
            print(f"  {'':<20} model busy {busy:.1%} of the steady time, {inside:.3f} s/image inside the pipeline")
    for name, mb in result["peak_memory_mb"].items():
        print(f"  peak memory {name:<20} {mb:9.0f} MB")
    for key in ("pipeline_over_model_only", "pipeline_over_model_only_presized"):
        if key in result:
            print(f"  pipeline / {key.split('_over_')[1]} = {result[key]:.1%}")
    for key in ("model_only_over_sam_clip", "model_only_presized_over_sam_clip", "pipeline_over_sam_clip"):
        if key in result:
            print(f"  {key.split('_over_')[0]} / sam_clip = {result[key]:.1f}x")
    for name, counted in result.get("flops", {}).items():
        line = f"  FLOPs {name}: {counted['gflops_per_image']:.2f} GFLOP/image"
        if "achieved_tflops" in counted:
            line += f", achieved {counted['achieved_tflops'] * 1e3:.1f} GFLOP/s"
        if "fraction_of_bound" in counted:
            line += f", bound {counted['bound_images_per_second']:.1f} images/s at {result['peak_tflops']} TFLOP/s, reached {counted['fraction_of_bound']:.1%}"
        print(line)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    paths_to_run = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths_to_run if p not in PATHS]
    if unknown or args.num_images < 1 or args.batch_size < 1 or args.repeats < 1:
        print(f"error: unknown paths {unknown}" if unknown else "error: --num-images, --batch-size and --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.config is None:
        from possam_label.predictor import DEFAULT_CONFIG

        args.config = str(DEFAULT_CONFIG)
    with tempfile.TemporaryDirectory(prefix="possam_bench_", dir=args.workdir) as tmp:
        runs, flops, threads = measure_paths(args, paths_to_run, Path(tmp))
    result = build_result(args, runs, flops, threads)
    print_report(args, result)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
