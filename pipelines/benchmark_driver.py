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

The model here is tiny and on CPU, so runs last long in wall time; the per-image CPU figures
are what carries over to a GPU cluster, except the part of the driver's Ray threads that ticks
with wall time rather than with images (it makes the figures upper bounds).
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
SOURCES = [
    "photos/dog.jpg", "photos/dogs.jpg", "photos/groceries.jpg", "photos/truck.jpg", "coco/000000142238.jpg", "coco/000000439180.jpg",
]
TARGET_IMAGES_PER_SECOND = 8 * 30  # 8 GPUs running PosSAM-H at issue 26's 30 images/s each
MODES = ("driver", "workers")


def make_listing(directory: Path, count: int) -> Path:
    """``count`` symlinks to the real test photos under distinct names, and a listing file of them."""
    data = REPO / "tests" / "data" / "autolabel"
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        source = data / SOURCES[i % len(SOURCES)]
        link = images / f"img_{i:06d}{source.suffix}"
        if not link.exists():
            link.symlink_to(source)
        paths.append(str(link))
    listing = directory / "listing.txt"
    listing.write_text("\n".join(paths) + "\n")
    return listing


def run_one(listing: str, out: str, writes: str, batch_size: int, rows_per_part: int, num_cpus: int) -> dict[str, Any]:
    """One run in this process; its summary and this process's CPU use."""
    from possam_label.engine.autolabel import AutolabelOptions, run_autolabel

    start = time.perf_counter()
    summary = run_autolabel(
        AutolabelOptions(
            dataset=listing, out_dir=out, config=str(REPO / "configs" / "possam_tiny.yaml"), batch_size=batch_size,
            rows_per_part=rows_per_part, num_cpus=num_cpus, show_progress=False, durable=True, writes=writes,
        )
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    processed = max(1, summary.driver_measured_images)
    ms_per_image = 1000.0 * summary.driver_cpu_seconds / processed
    return {
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
        "implied_ceiling_images_per_second": round(1000.0 / ms_per_image, 1) if ms_per_image > 0 else None,
        "process_cpu_seconds_whole_run": round(usage.ru_utime + usage.ru_stime, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=192, help="inputs per run")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows-per-part", type=int, default=64)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--workdir", default=None, help="inputs and outputs go here (default: a temporary directory)")
    parser.add_argument("--one", choices=MODES, default=None, help=argparse.SUPPRESS)  # internal: one run, JSON on stdout
    parser.add_argument("--listing", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        result = run_one(args.listing, args.out, args.one, args.batch_size, args.rows_per_part, args.num_cpus)
        sys.stdout.write("BENCH " + json.dumps(result) + "\n")
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_driver_", dir=args.workdir) as tmp:
        listing = make_listing(Path(tmp), args.images)
        runs = []
        for mode in args.modes:
            command = [
                sys.executable, "-m", "pipelines.benchmark_driver", "--one", mode, "--listing", str(listing), "--out", str(Path(tmp) / f"out_{mode}"),
                "--batch-size", str(args.batch_size), "--rows-per-part", str(args.rows_per_part), "--num-cpus", str(args.num_cpus),
            ]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
            if done.returncode != 0 or not lines:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"the {mode} run failed (exit code {done.returncode})")
            runs.append(json.loads(lines[-1][len("BENCH "):]))
            print(json.dumps(runs[-1]))
    result = {
        "command": "python -m pipelines.benchmark_driver " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_description(),
        "config": "configs/possam_tiny.yaml",
        "batch_size": args.batch_size,
        "rows_per_part": args.rows_per_part,
        "target_images_per_second": TARGET_IMAGES_PER_SECOND,
        "runs": runs,
    }
    for run in runs:
        ceiling = run["implied_ceiling_images_per_second"]
        print(f"{run['writes']:8s} driver CPU {run['driver_cpu_ms_per_image']:.3f} ms/image (main-thread loop {run['driver_loop_cpu_ms_per_image']:.3f}) "
              f"-> ceiling {ceiling} images/s vs {TARGET_IMAGES_PER_SECOND} needed for 8 GPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
