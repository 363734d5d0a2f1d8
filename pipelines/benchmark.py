"""Throughput benchmark: the whole auto-labeling pipeline against the model alone.

Both paths label the same images with the same config and batch size:

- ``model_only``: images decoded up front (not timed), ``PosSAMPredictor.predict`` timed over
  all of them after one warm-up batch;
- ``pipeline``: ``run_autolabel`` (Ray Data: decode tasks -> model actor -> encode tasks ->
  Parquet/PNG commits) on a local Ray, reporting the rate after model loading (steady) and the
  end-to-end rate including it.

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


def benchmark_config(config: str, random_weights: bool, workdir: Path) -> str:
    """The config to benchmark; with ``random_weights`` a copy without weight files (same speed,
    usable before the weights exist)."""
    if not random_weights:
        return config
    with open(config, "r", encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    data.setdefault("sam", {})["checkpoint"] = None
    data.setdefault("clip", {})["pretrained"] = None
    data["checkpoint"] = None
    # The copy lives elsewhere: make file references relative to the original config absolute.
    base = Path(config).resolve().parent
    for key in ("vocabulary", "train_vocabulary"):
        value = data.get(key)
        if isinstance(value, str) and "," not in value and (base / value).exists():
            data[key] = str((base / value).resolve())
    path = workdir / f"{Path(config).stem}_random.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def measure_model_only(
    paths: list[str], config: str, batch_size: int, device: Optional[str], vocabulary: Optional[str], torch_threads: int, presize: bool = False
) -> dict[str, Any]:
    """Images/s of ``PosSAMPredictor.predict`` alone on pre-decoded images (one warm-up batch).

    With ``presize`` the images are first downscaled to the model's input side, as the pipeline's
    decode stage does: this times the network and its post-processing only, without the
    predictor's own resizing of full-size images and full-size id maps.
    """
    import torch

    from possam_label.config import load_config
    from possam_label.io.images import load_image_rgb, resize_longest_side
    from possam_label.predictor import PosSAMPredictor

    torch.set_num_threads(torch_threads)

    torch.manual_seed(0)  # the same random-init parts as the pipeline's actors
    images = [load_image_rgb(p) for p in paths]
    if presize:
        side = load_config(config).sam.img_size
        images = [resize_longest_side(image, side) for image in images]
    start = time.perf_counter()
    predictor = PosSAMPredictor.from_config(config, device=device)
    load_seconds = time.perf_counter() - start
    predictor.predict(images[:batch_size], vocabulary=vocabulary, batch_size=batch_size)  # warm-up (text embeddings, allocator)
    cpu_start, start = time.process_time(), time.perf_counter()
    for begin in range(0, len(images), batch_size):
        predictor.predict(images[begin : begin + batch_size], vocabulary=vocabulary, batch_size=batch_size)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    return {
        "images": len(images),
        "seconds": seconds,
        "images_per_second": len(images) / seconds,
        "cpu_seconds_per_image": cpu_seconds / len(images),
        "model_load_seconds": load_seconds,
        "device": str(predictor.device),
        "torch_threads": torch.get_num_threads(),
    }


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
        cpu_before = _process_tree_cpu_seconds()
        summary = run_autolabel(
            AutolabelOptions(
                dataset=str(listing), out_dir=str(out), config=config, vocabulary=vocabulary, batch_size=batch_size,
                num_cpus=num_cpus, rows_per_part=rows_per_part, show_progress=False, torch_threads=torch_threads, workers=1,
                gpus_per_worker=None if device in (None, "cuda") else 0.0,
            )
        )
        cpu_seconds = _process_tree_cpu_seconds() - cpu_before
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
        "wall_seconds_with_ray_start": wall,
        # Includes the model actor's start-up (imports, model build), which model_only excludes.
        "cpu_seconds_per_image": cpu_seconds / max(1, summary.processed),
        "execution": run.get("execution"),
    }


def measure_model_only_presized(
    paths: list[str], config: str, batch_size: int, device: Optional[str], vocabulary: Optional[str], torch_threads: int
) -> dict[str, Any]:
    """:func:`measure_model_only` on images already downscaled to the model input side."""
    return measure_model_only(paths, config, batch_size, device, vocabulary, torch_threads, presize=True)


def _process_tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its descendants, live or reaped."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me] + me.children(recursive=True):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


PATHS: dict[str, Callable[..., dict[str, Any]]] = {
    "model_only": measure_model_only,
    "model_only_presized": measure_model_only_presized,
    "pipeline": measure_pipeline,
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
    parser.add_argument("--paths", default="model_only,model_only_presized,pipeline", help=f"comma list of paths to measure, from {sorted(PATHS)}")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, deleted afterwards)")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the results as JSON to OUT")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    paths_to_run = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths_to_run if p not in PATHS]
    if unknown or args.num_images < 1 or args.batch_size < 1 or args.repeats < 1:
        print(f"error: unknown paths {unknown}" if unknown else "error: --num-images, --batch-size and --repeats must be >= 1", file=sys.stderr)
        return 2
    from possam_label.engine.autolabel import default_torch_threads

    if args.config is None:
        from possam_label.predictor import DEFAULT_CONFIG

        args.config = str(DEFAULT_CONFIG)
    with tempfile.TemporaryDirectory(prefix="possam_bench_", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        config = benchmark_config(args.config, args.random_weights, workdir)
        inputs = prepare_inputs(args.dataset, args.num_images, workdir)
        threads = args.torch_threads or default_torch_threads(args.num_cpus or os.cpu_count() or 1, 1)
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in paths_to_run}
        for _ in range(args.repeats):
            for name in paths_to_run:
                if name == "pipeline":
                    runs[name].append(
                        measure_pipeline(inputs, config, args.batch_size, args.device, args.vocab, threads, workdir, args.num_cpus, args.rows_per_part)
                    )
                else:
                    runs[name].append(PATHS[name](inputs, config, args.batch_size, args.device, args.vocab, threads))
                print(f"{name:<10} {runs[name][-1]['images_per_second']:.2f} images/s", flush=True)
    result: dict[str, Any] = {
        "machine": machine_description(),
        "config": args.config,
        "random_weights": args.random_weights,
        "batch_size": args.batch_size,
        "torch_threads": threads,
        "num_images": args.num_images,
        "dataset": args.dataset,
        "runs": runs,
        "images_per_second": {name: statistics.median(r["images_per_second"] for r in rs) for name, rs in runs.items()},
    }
    for reference in ("model_only", "model_only_presized"):
        if reference in runs and "pipeline" in runs:
            result[f"pipeline_over_{reference}"] = result["images_per_second"]["pipeline"] / result["images_per_second"][reference]
    machine = result["machine"]
    print(f"machine: {machine['cpu']} x{machine['cpu_count']}, {machine['memory_gb']} GB, GPUs: {machine['gpus'] or 'none'}, load {machine['load_average_1_5_15']}")
    print(f"config {args.config}{' (random weights)' if args.random_weights else ''}, batch size {args.batch_size}, "
          f"{threads} torch threads, {args.num_images} images")
    result["cpu_seconds_per_image"] = {name: statistics.median(r["cpu_seconds_per_image"] for r in rs) for name, rs in runs.items()}
    for name, rate in result["images_per_second"].items():
        print(f"  {name:<20} {rate:8.2f} images/s  {result['cpu_seconds_per_image'][name]:6.3f} CPU s/image  (median of {len(runs[name])})")
    for reference in ("model_only", "model_only_presized"):
        if f"pipeline_over_{reference}" in result:
            print(f"  pipeline / {reference} = {result[f'pipeline_over_{reference}']:.1%}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
