"""Driver-side cost of an auto-labeling run at 10k / 100k / 1M listed paths (issue 26, part 3).

Measures only what the autolabel driver does itself, without Ray or the model:

- ``listing``: :func:`list_inputs` of a listing file (one path per line);
- ``dedup``: :func:`unique_inputs` (stable ids, duplicates dropped; the listing repeats 1 % of its lines);
- ``resume``: a resume's lookup of what is done (``OutputStore.committed_image_ids`` over the
  committed parts of a run stopped halfway, then the pending filter of ``run_autolabel``);
- ``panoptic_json``: :func:`write_panoptic_json` over a finished run (every input committed).

The listed files need not exist: none of these stages opens an image. The committed parts are
synthetic but real ``OutputStore`` parts (``rows_per_part`` images each, ``--segments`` segment rows
per image copied from one encoded template image), written before the timed stages. Each size runs
in a fresh subprocess; per stage it reports seconds and the peak resident memory above the stage's
start (sampled every 5 ms from /proc/self/statm, so Arrow's buffers count too)::

    python -m pipelines.benchmark_listing --sizes 10000 100000 1000000 --json /tmp/listing.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from pipelines.benchmark import machine_description
from possam_label.process_usage import Stopwatch

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def measure(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``fn``; its wall and CPU seconds (:class:`~possam_label.process_usage.Stopwatch`: on a
    machine shared with other jobs the CPU seconds are the comparable figure) and its peak resident
    memory above the start (MB; sampled here every 5 ms, finer than ``PeakTreeRss``, since a stage
    at 10k paths lasts milliseconds)."""
    start_rss, peak = rss_bytes(), [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with Stopwatch() as watch:
        result = fn()
    done.set()
    thread.join()
    peak[0] = max(peak[0], rss_bytes())
    return result, {"seconds": round(watch.seconds, 3), "cpu_seconds": round(watch.cpu_seconds, 3), "peak_rss_above_start_mb": round((peak[0] - start_rss) / 2**20, 1), "rss_mb": round(rss_bytes() / 2**20, 1)}


def template_segments(num_segments: int) -> pa.Table:
    """The segments rows of one real encoded image (``num_segments`` square segments on a 64x96 map)."""
    from possam_label.engine.autolabel.stages import segment_rows, to_original_size
    from possam_label.io.tables import predicted_segments_table
    from possam_label.types import SegmentInfo

    id_map = np.zeros((64, 96), dtype=np.int32)
    infos = []
    for k in range(num_segments):
        y, x = divmod(k, 8)
        id_map[y * 8 : y * 8 + 8, x * 12 : x * 12 + 12] = k + 1
        infos.append(SegmentInfo(k + 1, 1 + k % 80, f"class{k % 80}", k % 2 == 0, 0.9, 0.8, 0.7, 0.1, 96, [0.0, 0.0, 12.0, 8.0]))
    full, kept = to_original_size(id_map, predicted_segments_table(infos), 64, 96, 0.0)
    return segment_rows(full, kept, 0, "template.jpg", "run-bench")


def commit_parts(store: Any, rows: list[dict[str, Any]], rows_per_part: int, template: pa.Table) -> None:
    """Commit ``rows`` as ok images in parts of ``rows_per_part`` (vectorised; not timed)."""
    from possam_label.io.output_store import new_part_prefix
    from possam_label.io.tables import IMAGES_SCHEMA, SEGMENTS_SCHEMA

    prefix = new_part_prefix()
    k = template.num_rows
    for index, start in enumerate(range(0, len(rows), rows_per_part)):
        part = rows[start : start + rows_per_part]
        ids = [r["image_id"] for r in part]
        paths = [r["file_path"] for r in part]
        n = len(part)
        images = pa.Table.from_pydict(
            {
                "image_id": ids, "file_path": paths, "width": [96] * n, "height": [64] * n, "status": ["ok"] * n,
                "error": [None] * n, "num_segments": [k] * n, "seconds": [0.1] * n,
                "panoptic_file": [f"panoptic/{i}.png" for i in ids], "run_id": ["run-bench"] * n,
            },
            schema=IMAGES_SCHEMA,
        )
        segments = template.take(pa.array(np.tile(np.arange(k), n)))
        segments = segments.set_column(0, "image_id", pa.array(np.repeat(np.asarray(ids, dtype=np.int64), k)))
        segments = segments.set_column(1, "file_path", pa.array(np.repeat(np.asarray(paths, dtype=object), k), type=pa.string()))
        store.commit_part(f"{prefix}-{index:06d}", images, segments.cast(SEGMENTS_SCHEMA))


def run_size(size: int, rows_per_part: int, segments_per_image: int, work: Path) -> dict[str, Any]:
    """All stages at one size, in this process."""
    from possam_label.engine.autolabel import list_inputs, unique_inputs, write_panoptic_json
    from possam_label.io.output_store import OutputStore
    from possam_label.vocab import load_vocabulary

    images_dir = work / "images"
    listing = work / "inputs.txt"
    unique = size - size // 100
    names = [str(images_dir / f"img_{i:07d}.jpg") for i in range(unique)]
    names += names[: size - unique]  # 1 % repeated lines: dropped by the deduplication
    listing.write_text("\n".join(names) + "\n")
    del names
    result: dict[str, Any] = {"listed_paths": size, "rows_per_part": rows_per_part, "segments_per_image": segments_per_image, "stages": {}}
    stages = result["stages"]

    paths, stages["listing"] = measure(lambda: list_inputs(str(listing)))
    (inputs, duplicates), stages["dedup"] = measure(lambda: unique_inputs(paths))
    del paths
    result["unique_inputs"], result["duplicates"] = len(inputs), duplicates

    template = template_segments(segments_per_image)
    store = OutputStore(work / "out", durable=False)
    store.prepare("new")
    t0 = time.perf_counter()
    commit_parts(store, inputs[: len(inputs) // 2], rows_per_part, template)

    def resume_lookup() -> int:
        done = store.committed_image_ids()
        return len([row for row in inputs if row["image_id"] not in done])

    pending, stages["resume"] = measure(resume_lookup)
    result["resume_pending"] = pending
    commit_parts(store, inputs[len(inputs) // 2 :], rows_per_part, template)
    result["setup_commit_seconds"] = round(time.perf_counter() - t0, 1)
    result["committed_parts"] = len(store.committed_parts())
    vocabulary = load_vocabulary("coco")
    record = {"run_id": "run-bench", "source": str(listing), "model": {"config": {"name": "bench"}, "vocabulary_identity": vocabulary.identity()}}
    counts, stages["panoptic_json"] = measure(lambda: write_panoptic_json(store, vocabulary, record, durable=False))
    result["panoptic_json_counts"] = counts
    result["panoptic_json_mb"] = round(store.panoptic_json.stat().st_size / 2**20, 1)
    store.release()
    for stage in stages.values():
        stage["us_per_path"] = round(stage["seconds"] / size * 1e6, 2)
        stage["cpu_us_per_path"] = round(stage["cpu_seconds"] / size * 1e6, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmark_listing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="listed paths per measurement")
    parser.add_argument("--rows-per-part", type=int, default=64, help="images per committed part (the autolabel default)")
    parser.add_argument("--segments", type=int, default=8, help="segment rows per committed image")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--one-size", type=int, default=None, help=argparse.SUPPRESS)  # the per-size subprocess
    args = parser.parse_args(argv)
    if args.one_size is not None:
        with tempfile.TemporaryDirectory(prefix="bench_listing_") as work:
            print(json.dumps(run_size(args.one_size, args.rows_per_part, args.segments, Path(work))))
        return 0
    results = []
    machine = machine_description()
    for size in args.sizes:
        load_before = os.getloadavg()
        cmd = [sys.executable, "-m", "pipelines.benchmark_listing", "--one-size", str(size), "--rows-per-part", str(args.rows_per_part), "--segments", str(args.segments)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        r["load_average_1_5_15_before_after"] = [list(load_before), list(os.getloadavg())]
        print(f"{size:>9} paths: " + ", ".join(f"{name} {s['seconds']:.2f}s / {s['cpu_seconds']:.2f} CPU s (+{s['peak_rss_above_start_mb']:.0f} MB)" for name, s in r["stages"].items())
              + f"  [load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}]", flush=True)
    report = {"machine": machine, "command": "python -m pipelines.benchmark_listing " + " ".join(argv if argv is not None else sys.argv[1:]), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
