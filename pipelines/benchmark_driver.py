"""The autolabel driver's CPU per image with each ``--writes`` mode (issue 26, part 3).

Labels N inputs (the six real photos of ``tests/data/autolabel``, symlinked under N distinct
names, so every input is a real JPEG at its original size and each gets its own PNG) with the
tiny random-weight config on a local Ray, once with ``--writes driver`` (every PNG and segment
row travels to the driver, which writes them) and once with ``--writes workers`` (the encode
tasks stage the files; the driver renames them and writes the images part). Each run is its own
subprocess, so each driver's CPU clock starts clean.

Per mode it reports the driver's CPU seconds from its first result to its last commit
(``AutolabelSummary.driver_cpu_seconds``: the driver process, all its threads, Ray's own
included; Ray workers not counted; planning the pipeline and starting the actors left out), the
main thread's share (``driver_loop_cpu_seconds``: taking results and committing them), both per
image received in that window (``driver_measured_images``), and the implied ceiling
``1000 / ms`` images/s that one driver could commit, against 8 GPUs x 30 images/s (issue 26's
PosSAM-H target)::

    python -m pipelines.benchmark_driver --images 192 --json docs/bench_driver.json

The model here is tiny and on CPU, so runs last long in wall time, and part of the driver's CPU
(Ray's own threads) ticks with wall time rather than with images. ``--configs possam_tiny
possam_small`` runs each mode with two models whose throughputs differ many-fold (the tiny random
model, the shipped small PosSAM), ``--inputs photos demo`` on two input sets (the real photos, the
shipped 256 x 256 demo scenes), and the benchmark fits, per mode, driver CPU = a x images +
b x seconds over the runs' measured windows: ``a`` is what each image costs the driver, ``b`` the CPU it spends
per second whatever the rate. One driver process then keeps up until a x rate + b reaches one
core: the fitted ceiling is (1 - b) / a images/s, what carries over to a GPU cluster::

    python -m pipelines.benchmark_driver --images 288 --rows-per-part 16 --configs possam_tiny possam_small \
        --inputs photos demo --modes workers --json docs/bench_driver_fit.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.benchmark import machine_description

REPO = Path(__file__).resolve().parents[1]
INPUTS = {
    # the six real photos of tests/data/autolabel (JPEGs at their original sizes)
    "photos": [REPO / "tests" / "data" / "autolabel" / name for name in (
        "photos/dog.jpg", "photos/dogs.jpg", "photos/groceries.jpg", "photos/truck.jpg", "coco/000000142238.jpg", "coco/000000439180.jpg",
    )],
    # the shipped 256 x 256 synthetic demo scenes: a several-fold higher rate on the same model
    "demo": sorted((REPO / "possam_label" / "assets" / "demo").glob("*.png")),
}
TARGET_IMAGES_PER_SECOND = 8 * 30  # 8 GPUs running PosSAM-H at issue 26's 30 images/s each
MODES = ("driver", "workers")


def make_listing(directory: Path, count: int, inputs: str = "photos") -> Path:
    """``count`` symlinks to the images of ``INPUTS[inputs]`` under distinct names, and a listing file of them."""
    sources = INPUTS[inputs]
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        source = sources[i % len(sources)]
        link = images / f"img_{i:06d}{source.suffix}"
        if not link.exists():
            link.symlink_to(source)
        paths.append(str(link))
    listing = directory / "listing.txt"
    listing.write_text("\n".join(paths) + "\n")
    return listing


def run_one(listing: str, out: str, writes: str, batch_size: int, rows_per_part: int, num_cpus: int, config: str = "possam_tiny") -> dict[str, Any]:
    """One run in this process; its summary and this process's CPU use."""
    from possam_label.config import find_config
    from possam_label.engine.autolabel import AutolabelOptions, run_autolabel

    start = time.perf_counter()
    summary = run_autolabel(
        AutolabelOptions(
            dataset=listing, out_dir=out, config=str(find_config(config)), batch_size=batch_size,
            rows_per_part=rows_per_part, num_cpus=num_cpus, show_progress=False, durable=True, writes=writes,
        )
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    processed = max(1, summary.driver_measured_images)
    ms_per_image = 1000.0 * summary.driver_cpu_seconds / processed
    return {
        "config": config,
        "writes": writes,
        "images": summary.processed,
        "ok": summary.ok,
        "errors": summary.errors,
        "segments": summary.segments,
        "wall_seconds": round(time.perf_counter() - start, 2),
        "images_per_second": round(summary.images_per_second, 3),
        "measured_images": summary.driver_measured_images,
        "driver_cpu_seconds": round(summary.driver_cpu_seconds, 3),
        "driver_loop_cpu_seconds": round(summary.driver_loop_cpu_seconds, 3),
        "driver_cpu_ms_per_image": round(ms_per_image, 3),
        "driver_loop_cpu_ms_per_image": round(1000.0 * summary.driver_loop_cpu_seconds / processed, 3),
        "measured_seconds": round(summary.driver_measured_seconds, 3),
        "implied_ceiling_images_per_second": round(1000.0 / ms_per_image, 1) if ms_per_image > 0 else None,
        "process_cpu_seconds_whole_run": round(usage.ru_utime + usage.ru_stime, 3),
    }


def fit_driver_cost(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Least squares driver CPU = a x images + b x seconds over runs of one mode (None with fewer
    than two runs or rates that do not differ): a in ms per image, b in CPU seconds per second,
    and the rate at which one core is used up, (1 - b) / a."""
    import numpy as np

    rates = [r["measured_images"] / r["measured_seconds"] for r in runs if r["measured_seconds"] > 0]
    if len(rates) < 2 or max(rates) < 1.5 * min(rates):
        return None
    design = np.array([[r["measured_images"], r["measured_seconds"]] for r in runs], dtype=float)
    cpu = np.array([r["driver_cpu_seconds"] for r in runs], dtype=float)
    (per_image, per_second), *_ = np.linalg.lstsq(design, cpu, rcond=None)
    fit = {
        "runs": len(runs),
        "rates_images_per_second": [round(x, 2) for x in rates],
        "cpu_ms_per_image": round(1000.0 * float(per_image), 3),
        "cpu_seconds_per_second": round(float(per_second), 4),
        "fitted_ceiling_images_per_second": None,
    }
    if per_image > 0 and per_second < 1:
        fit["fitted_ceiling_images_per_second"] = round((1.0 - float(per_second)) / float(per_image), 1)
    return fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=192, help="inputs per run")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--configs", nargs="+", default=["possam_tiny"], help="model configs (shipped names or paths); two or more: a fit")
    parser.add_argument("--inputs", nargs="+", choices=sorted(INPUTS), default=["photos"], help="input sets (two: also fit per-image and per-second costs)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows-per-part", type=int, default=64)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--workdir", default=None, help="inputs and outputs go here (default: a temporary directory)")
    parser.add_argument("--one", choices=MODES, default=None, help=argparse.SUPPRESS)  # internal: one run, JSON on stdout
    parser.add_argument("--listing", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="possam_tiny", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        result = run_one(args.listing, args.out, args.one, args.batch_size, args.rows_per_part, args.num_cpus, args.config)
        sys.stdout.write("BENCH " + json.dumps(result) + "\n")
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_driver_", dir=args.workdir) as tmp:
        runs = []
        listings = {inputs: make_listing(Path(tmp) / inputs, args.images, inputs) for inputs in args.inputs}
        for config, inputs, mode in [(c, i, m) for c in args.configs for i in args.inputs for m in args.modes]:
            listing = listings[inputs]
            command = [
                sys.executable, "-m", "pipelines.benchmark_driver", "--one", mode, "--listing", str(listing),
                "--out", str(Path(tmp) / f"out_{len(runs)}_{inputs}_{mode}"), "--config", config,
                "--batch-size", str(args.batch_size), "--rows-per-part", str(args.rows_per_part), "--num-cpus", str(args.num_cpus),
            ]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
            if done.returncode != 0 or not lines:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"the {mode} run failed (exit code {done.returncode})")
            runs.append({"inputs": inputs, **json.loads(lines[-1][len("BENCH "):])})
            print(json.dumps(runs[-1]))
    result = {
        "command": "python -m pipelines.benchmark_driver " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_description(),
        "configs": args.configs,
        "batch_size": args.batch_size,
        "rows_per_part": args.rows_per_part,
        "target_images_per_second": TARGET_IMAGES_PER_SECOND,
        "runs": runs,
        "fits": {mode: fit_driver_cost([r for r in runs if r["writes"] == mode]) for mode in args.modes},
    }
    for run in runs:
        ceiling = run["implied_ceiling_images_per_second"]
        print(f"{run['config']:13s} {run['inputs']:7s} {run['writes']:8s} driver CPU {run['driver_cpu_ms_per_image']:.3f} ms/image (main-thread loop {run['driver_loop_cpu_ms_per_image']:.3f}) "
              f"-> ceiling {ceiling} images/s vs {TARGET_IMAGES_PER_SECOND} needed for 8 GPUs")
    for mode, fit in result["fits"].items():
        if fit is not None:
            print(f"{mode:8s} fitted: {fit['cpu_ms_per_image']:.3f} ms per image + {fit['cpu_seconds_per_second']:.4f} CPU s per second "
                  f"-> one driver keeps up to {fit['fitted_ceiling_images_per_second']} images/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
