"""Loading speed into FiftyOne: possam-label's loader against FiftyOne's own ``add_samples``.

On one autolabel output, each method loads every image into a fresh dataset, and the segments
(Detections) written per second are reported. The output is an existing ``--output DIR``; or
``--coco-repeat N``: N images whose masks are the COCO-panoptic ground truth of
``tests/data/coco_panoptic_sample`` (its two photos under N distinct names, 25 segments per image
on average, 640 px; written by ``possam_label.fiftyone.testing.write_coco_autolabel_output``); or
``--make N``: N synthetic scenes labeled by the model of ``--config`` through the autolabel job.
Methods:

- ``loader_<storage>_w<N>``: :func:`possam_label.fiftyone.load.load_autolabel_output` with
  ``mask_storage`` "database" or "files" and N worker processes;
- ``add_samples``: FiftyOne's ``Dataset.add_samples`` of ``fo.Sample`` objects built with
  :func:`possam_label.fiftyone.convert.prediction_to_labels` (instance and semantic masks in the
  database), a chunk of images at a time: what a FiftyOne user would write.

Every method reads and decodes the same Parquet parts, so the ratio compares the writing. The
peak resident memory of the method's processes (workers included) is reported too.

Example::

    python -m pipelines.benchmark_fiftyone_load --coco-repeat 400 --workers 1,2 --json load.json
    python -m pipelines.benchmark_fiftyone_load --make 400 --config configs/possam_small.yaml
    python -m pipelines.benchmark_fiftyone_load --output /path/to/autolabel/out
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from pipelines._cli import add_shared_db_argument

logger = logging.getLogger("pipelines.benchmark_fiftyone_load")


def make_output(workdir: Path, num_images: int, config: str, seed: int, size: int) -> Path:
    """Render ``num_images`` synthetic scenes and auto-label them (local Ray) into ``workdir/out``."""
    from pipelines.make_synthetic import main as make_synthetic
    from possam_label.engine.autolabel import AutolabelOptions, run_autolabel

    scenes = workdir / "scenes"
    if make_synthetic(["--out", str(scenes), "--num-images", str(num_images), "--seed", str(seed), "--size", str(size), "--log-level", "WARNING"]) != 0:
        raise SystemExit("could not render the synthetic scenes")
    out = workdir / "out"
    run_autolabel(AutolabelOptions(dataset=str(scenes / "images"), out_dir=str(out), config=config, batch_size=4, rows_per_part=64, show_progress=False, durable=False))
    return out


def make_coco_output(workdir: Path, num_images: int) -> Path:
    """``num_images`` images (the COCO sample's photos repeated under distinct names, through
    symlinks) with their ground-truth panoptic masks, written as an autolabel output."""
    from possam_label.fiftyone.testing import write_coco_autolabel_output

    source = Path(__file__).resolve().parents[1] / "tests" / "data" / "coco_panoptic_sample"
    examples = json.loads((source / "panoptic_examples.json").read_text())
    coco = workdir / "coco_repeat"
    (coco / "images").mkdir(parents=True)
    (coco / "panoptic").mkdir()
    (coco / "panoptic_coco_categories.json").symlink_to(source / "panoptic_coco_categories.json")
    images, annotations = [], []
    for i in range(num_images):
        image = examples["images"][i % len(examples["images"])]
        ann = next(a for a in examples["annotations"] if a["image_id"] == image["id"])
        name = f"{i:07d}_{image['file_name']}"
        (coco / "images" / name).symlink_to(source / "images" / image["file_name"])
        (coco / "panoptic" / f"{i:07d}.png").symlink_to(source / "panoptic" / ann["file_name"])
        images.append({**image, "id": i + 1, "file_name": name})
        annotations.append({**ann, "image_id": i + 1, "file_name": f"{i:07d}.png"})
    (coco / "panoptic_examples.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": examples["categories"]}))
    out = workdir / "out"
    write_coco_autolabel_output(out, coco, seed=0, run_id="coco-repeat", images_per_part=64)
    return out


def load_with_add_samples(output_dir: Path, dataset_name: str, chunk_size: int) -> dict[str, Any]:
    """FiftyOne's own path: ``fo.Sample`` objects with in-database masks, ``add_samples`` per chunk."""
    import fiftyone as fo

    from possam_label.fiftyone.autolabel_output import AutolabelOutput
    from possam_label.fiftyone.convert import prediction_to_labels

    output = AutolabelOutput.open(output_dir)
    ds = fo.Dataset(dataset_name)
    segments = 0
    samples: list[Any] = []
    for item in output.iter_images():
        sample = fo.Sample(filepath=item.record.file_path)
        if item.prediction is not None:
            detections, semantic = prediction_to_labels(item.prediction, attributes={"run_id": item.run_id or output.run_id})
            sample["possam"] = detections
            sample["possam_semantic"] = semantic
            segments += len(detections.detections)
        samples.append(sample)
        if len(samples) >= chunk_size:
            ds.add_samples(samples, progress=False)
            samples = []
    if samples:
        ds.add_samples(samples, progress=False)
    return {"num_segments": segments, "num_samples": len(ds)}


def load_with_loader(output_dir: Path, dataset_name: str, mask_storage: str, workers: int, masks_dir: Path) -> dict[str, Any]:
    from possam_label.fiftyone.load import load_autolabel_output

    result = load_autolabel_output(output_dir, dataset_name, mask_storage=mask_storage, workers=workers, masks_dir=masks_dir, progress=False)
    if result.part_errors:
        raise SystemExit(f"the loader could not read parts: {result.part_errors}")
    return {"num_segments": result.num_segments, "num_samples": result.num_samples_added}


def measure(name: str, fn: Any, *args: Any) -> dict[str, Any]:
    """Wall seconds, and CPU seconds of this process and its descendants (workers, and the private
    ``mongod``): on a machine shared with other jobs the CPU rate is the comparable one."""
    from possam_label.process_usage import PeakTreeRss, Stopwatch

    with PeakTreeRss(interval_s=0.1) as memory:
        with Stopwatch() as watch:
            counts = fn(*args)
    seconds, cpu_seconds = watch.seconds, watch.cpu_seconds
    row = {"method": name, **counts, "seconds": seconds, "segments_per_second": counts["num_segments"] / seconds,
           "cpu_seconds": cpu_seconds, "segments_per_cpu_second": counts["num_segments"] / max(cpu_seconds, 1e-9),
           "peak_rss_mb_all_processes": memory.peak_bytes / 2**20}
    print(f"{name:<24} {counts['num_segments']:7d} segments {seconds:7.2f} s  {row['segments_per_second']:8.0f} segments/s  "
          f"{cpu_seconds:7.2f} CPU s  {row['segments_per_cpu_second']:8.0f} segments/CPU s  peak {row['peak_rss_mb_all_processes']:.0f} MB", flush=True)
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmark_fiftyone_load", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--output", type=Path, help="an existing autolabel output directory (only read)")
    source.add_argument("--coco-repeat", type=int, metavar="N", help="N images with COCO ground-truth masks (tests/data)")
    source.add_argument("--make", type=int, metavar="N", help="render N synthetic scenes and label them first")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "possam_tiny.yaml"), help="with --make: the PosSAM config")
    parser.add_argument("--size", type=int, default=256, help="with --make: scene side in pixels")
    parser.add_argument("--seed", type=int, default=26, help="with --make: scene seed")
    parser.add_argument("--storages", default="database,files", help="loader mask storages to measure")
    parser.add_argument("--workers", default="1,2", help="comma list of loader worker counts")
    parser.add_argument("--skip-add-samples", action="store_true", help="do not measure FiftyOne's add_samples")
    parser.add_argument("--chunk-size", type=int, default=64, help="add_samples: images per call")
    parser.add_argument("--repeats", type=int, default=1, help="measure each method this many times (best rate reported)")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, deleted afterwards)")
    add_shared_db_argument(parser)
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the results as JSON")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from possam_label.fiftyone.testing import use_benchmark_database

    use_benchmark_database(shared=args.shared_db)
    import fiftyone as fo

    from pipelines.benchmark import machine_description

    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    tag = uuid.uuid4().hex[:8]
    created: list[str] = []
    with tempfile.TemporaryDirectory(prefix="possam_load_bench_", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if args.output:
            output_dir = args.output.resolve()
        elif args.coco_repeat:
            output_dir = make_coco_output(workdir, args.coco_repeat)
        else:
            output_dir = make_output(workdir, args.make, args.config, args.seed, args.size)
        from possam_label.fiftyone.autolabel_output import AutolabelOutput

        num_images, num_segments = AutolabelOutput.open(output_dir).count_rows()
        print(f"output {output_dir}: {num_images} images, {num_segments} segments", flush=True)
        rows: list[dict[str, Any]] = []
        try:
            for repeat in range(args.repeats):
                methods: list[tuple[str, Any, tuple]] = []
                if not args.skip_add_samples:
                    methods.append(("add_samples", load_with_add_samples, (output_dir, f"bench-load-{tag}-add-{repeat}", args.chunk_size)))
                for storage in storages:
                    for workers in worker_counts:
                        name = f"bench-load-{tag}-{storage}-{workers}-{repeat}"
                        methods.append((f"loader_{storage}_w{workers}", load_with_loader, (output_dir, name, storage, workers, workdir / "masks" / name)))
                for method, fn, fn_args in methods:
                    created.append(fn_args[1])
                    rows.append({**measure(method, fn, *fn_args), "repeat": repeat})
                    fo.delete_dataset(fn_args[1])
                    created.pop()
                    shutil.rmtree(workdir / "masks", ignore_errors=True)
        finally:
            for name in created:
                if fo.dataset_exists(name):
                    fo.delete_dataset(name)
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    for row in rows:
        best[row["method"]] = max(best.get(row["method"], 0.0), row["segments_per_second"])
        best_cpu[row["method"]] = max(best_cpu.get(row["method"], 0.0), row["segments_per_cpu_second"])
    result: dict[str, Any] = {
        "machine": machine_description(),
        "output": str(args.output) if args.output else (f"--coco-repeat {args.coco_repeat}" if args.coco_repeat else f"--make {args.make} --config {args.config} --size {args.size}"),
        "num_images": num_images,
        "num_segments": num_segments,
        "runs": rows,
        "segments_per_second": best,
        "segments_per_cpu_second": best_cpu,
    }
    if "add_samples" in best:
        result["over_add_samples"] = {m: rate / best["add_samples"] for m, rate in best.items() if m != "add_samples"}
        result["over_add_samples_cpu"] = {m: rate / best_cpu["add_samples"] for m, rate in best_cpu.items() if m != "add_samples"}
        for method, ratio in result["over_add_samples"].items():
            print(f"  {method:<24} {ratio:5.2f}x add_samples (wall)  {result['over_add_samples_cpu'][method]:5.2f}x (CPU)")
    machine = result["machine"]
    print(f"machine: {machine['cpu']} x{machine['cpu_count']}, load {machine['load_average_1_5_15']}")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
