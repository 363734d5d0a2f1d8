"""Review at scale: the library calls behind the review panel on a large dataset.

Builds a dataset of ``--samples`` samples (default 100,000) with synthetic possam labels
(``--labels-per-sample`` Detections each, random classes and confidences, small in-database
masks, a semantic map), written with bulk inserts of the documents the loader writes
(:mod:`possam_label.fiftyone.bulk_load`) and indexed as the loader indexes them. Then times:

- ``panel_open``: :func:`~possam_label.fiftyone.review_panel.panel_state` at the default
  threshold, everything the panel computes when it opens (editor sync, summary, queue line,
  auto-accept estimate) in a process that has not read the dataset yet (cache cleared);
- ``threshold_change``: ``panel_state`` at another threshold;
- ``needs_review_view``: :func:`~possam_label.fiftyone.review.needs_review_view`, its sample
  count and its first page of 20 samples (what the App's grid asks for first);
- ``correction``: :func:`~possam_label.fiftyone.corrections.accept_labels` of one label (the
  sample is loaded, changed, its semantic map repainted and saved);
- ``refresh_after_correction``: ``panel_state`` after that correction (what the panel shows next);
- ``queue_step``: :func:`~possam_label.fiftyone.review_queue.next_in_queue` from a sample.

Each is run ``--repeats`` times; the first run and the median are reported.

Example::

    python -m pipelines.benchmark_review --samples 100000 --json review.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from pipelines._cli import add_shared_db_argument

logger = logging.getLogger("pipelines.benchmark_review")

CLASSES = [f"class_{i:02d}" for i in range(1, 41)]


def build_dataset(name: str, num_samples: int, labels_per_sample: int, seed: int, batch: int = 2000) -> Any:
    """A persistent dataset of synthetic possam labels, inserted in bulk; returns it."""
    import datetime as _dt

    import fiftyone as fo
    from bson import ObjectId

    from possam_label.fiftyone.bulk_load import serialize_mask
    from possam_label.fiftyone.dataset import set_categories
    from possam_label.fiftyone.load import create_indexes, ensure_review_fields
    from possam_label.fiftyone.review_stats import review_snapshot
    from possam_label.vocab import Vocabulary

    ds = fo.Dataset(name, persistent=True)
    ds.media_type = "image"
    ensure_review_fields(ds, "possam")
    classes = [{"id": i + 1, "name": n, "isthing": i % 2 == 0, "color": [40 + 5 * i, 200 - 4 * i, 90]} for i, n in enumerate(CLASSES)]
    set_categories(ds, "possam", Vocabulary.from_coco_categories(classes))
    rng = np.random.default_rng(seed)
    size = 64
    crop = np.ones((8, 8), dtype=bool)
    crop_bytes = serialize_mask(crop)
    dataset_id = ObjectId(ds._doc.id)
    collection = ds._sample_collection
    now = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
    for start in range(0, num_samples, batch):
        n = min(batch, num_samples - start)
        classes = rng.integers(0, len(CLASSES), size=(n, labels_per_sample))
        scores = rng.random((n, labels_per_sample))
        docs = []
        for i in range(n):
            semantic = np.zeros((size, size), dtype=np.uint8)
            detections = []
            for j in range(labels_per_sample):
                x, y = (j % 8) * 8, (j // 8) * 8 % size
                semantic[y : y + 8, x : x + 8] = classes[i, j] + 1
                detections.append({
                    "_id": ObjectId(), "_cls": "Detection", "attributes": {}, "tags": [], "label": CLASSES[classes[i, j]],
                    "bounding_box": [x / size, y / size, 8 / size, 8 / size], "mask": crop_bytes, "confidence": float(scores[i, j]),
                    "segment_id": j + 1, "category_id": int(classes[i, j]) + 1, "isthing": bool(classes[i, j] % 2 == 0),
                    "mask_quality": 0.9, "in_vocab_prob": 0.5, "out_vocab_prob": 0.5, "area": 64, "run_id": "bench",
                })
            docs.append({
                "_id": ObjectId(), "filepath": f"/bench/review/{start + i:07d}.png", "tags": [],
                "metadata": {"_cls": "ImageMetadata", "width": size, "height": size},
                "created_at": now, "last_modified_at": now, "_media_type": "image", "_rand": 0.999 + 0.001 * float(rng.random()),
                "_dataset_id": dataset_id,
                "possam": {"_cls": "Detections", "detections": detections},
                "possam_semantic": {"_id": ObjectId(), "_cls": "Segmentation", "tags": [], "mask": serialize_mask(semantic)},
                "possam_reviewed": False, "possam_run_id": "bench", "possam_image_id": start + i, "possam_loaded_at": now,
            })
        collection.insert_many(docs, ordered=False)
    create_indexes(ds, "possam")
    ds.reload()
    review_snapshot(ds, "possam")  # as the loader leaves it: the review snapshot stored
    return ds


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Wall seconds and CPU seconds (this process and its descendants, the private ``mongod``
    included: comparable on a machine shared with other jobs) of each run."""
    from possam_label.process_usage import Stopwatch

    seconds, cpu = [], []
    value = None
    for _ in range(repeats):
        with Stopwatch() as watch:
            value = fn()
        seconds.append(watch.seconds)
        cpu.append(watch.cpu_seconds)
    return {"first_s": seconds[0], "median_s": statistics.median(seconds), "all_s": seconds,
            "first_cpu_s": cpu[0], "median_cpu_s": statistics.median(cpu), "value": value}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmark_review", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000, help="samples in the dataset")
    parser.add_argument("--labels-per-sample", type=int, default=10, help="Detections per sample")
    parser.add_argument("--threshold", type=float, default=0.5, help="the panel's threshold at open")
    parser.add_argument("--new-threshold", type=float, default=0.3, help="the threshold it is moved to")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, metavar="NAME", help="reuse (or keep) the dataset NAME instead of a fresh temporary one")
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
    from possam_label.fiftyone.corrections import accept_labels
    from possam_label.fiftyone.review import needs_review_view
    from possam_label.fiftyone.review_panel import panel_state
    from possam_label.fiftyone.review_queue import next_in_queue
    from possam_label.fiftyone.review_stats import clear_cache

    name = args.keep or f"bench-review-{uuid.uuid4().hex[:8]}"
    build_seconds = None
    if args.keep and fo.dataset_exists(name):
        ds = fo.load_dataset(name)
    else:
        start = time.perf_counter()
        ds = build_dataset(name, args.samples, args.labels_per_sample, args.seed)
        build_seconds = time.perf_counter() - start
        print(f"built {name}: {len(ds)} samples, {args.labels_per_sample} labels each, in {build_seconds:.1f} s", flush=True)
    try:
        results: dict[str, Any] = {}
        def open_panel() -> int:
            clear_cache()
            return panel_state(ds, ds.view(), args.threshold, "possam").summary.num_below

        results["panel_open"] = timed(open_panel, args.repeats)
        thresholds = iter([args.new_threshold, args.threshold] * args.repeats)
        results["threshold_change"] = timed(lambda: panel_state(ds, ds.view(), next(thresholds), "possam").summary.num_below, args.repeats)

        def open_needs_review() -> int:
            view = needs_review_view(ds, args.threshold, "possam")
            count = view.count()
            first_page = list(view.limit(20))
            return count + 0 * len(first_page)

        results["needs_review_view"] = timed(open_needs_review, args.repeats)
        ids = ds.limit(args.repeats * 7).values("id")
        label_ids = ds.limit(args.repeats * 7).values("possam.detections.id")
        picks = iter([{"sample_id": s, "label_id": labels[0], "field": "possam"} for s, labels in zip(ids, label_ids)])
        results["correction"] = timed(lambda: accept_labels(ds, [next(picks)], "possam").num_labels, args.repeats)

        def refresh_after_correction() -> int:
            accept_labels(ds, [next(picks)], "possam")
            return panel_state(ds, ds.view(), args.threshold, "possam").summary.status_counts.get("accepted", 0)

        results["refresh_after_correction"] = timed(refresh_after_correction, args.repeats)
        results["queue_step"] = timed(lambda: int(next_in_queue(ds.view(), args.threshold, ids[0], "possam") is not None), args.repeats)
    finally:
        if not args.keep:
            fo.delete_dataset(name)
    for key, row in results.items():
        print(f"  {key:<20} first {row['first_s']:7.3f} s   median {row['median_s']:7.3f} s   "
              f"CPU first {row['first_cpu_s']:7.3f} s   median {row['median_cpu_s']:7.3f} s   (value {row['value']})")
    out = {
        "machine": machine_description(),
        "samples": args.samples,
        "labels_per_sample": args.labels_per_sample,
        "build_seconds": build_seconds,
        "results": results,
    }
    machine = out["machine"]
    print(f"machine: {machine['cpu']} x{machine['cpu_count']}, load {machine['load_average_1_5_15']}")
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
