"""Evaluate a predictor on a COCO-panoptic folder in memory (PQ overall and per class group)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..io.panoptic_png import read_panoptic_png
from .pq import PanopticQualityEvaluator

logger = logging.getLogger(__name__)


def group_pq(results: dict[str, Any], category_ids: Iterable[int], counted: Optional[set[int]] = None) -> dict[str, float]:
    """Mean PQ/SQ/RQ over a group of classes (e.g. base or novel), only classes that occurred."""
    per_class = results["per_class"]
    ids = [c for c in category_ids if c in per_class and (counted is None or c in counted)]
    if not ids:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    return {k: float(np.mean([per_class[c][k] for c in ids])) for k in ("pq", "sq", "rq")} | {"n": len(ids)}


def evaluate_predictor(
    predictor: Any,
    data_dir: str | Path,
    vocabulary: Any = None,
    batch_size: int = 8,
    limit: Optional[int] = None,
    groups: Optional[dict[str, list[str]]] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``predictor`` over ``data_dir`` (panoptic.json, images/, panoptic/) and compute PQ.

    Args:
        predictor: a PosSAMPredictor (or anything with ``predict(images, vocabulary)``).
        vocabulary: vocabulary to predict with; its category ids must be the dataset's.
        groups: {"base": [class names], "novel": [...]} for per-group PQ.
    Returns:
        The PQ result dict, plus "groups" {name: {"pq","sq","rq","n"}}.
    """
    data_dir = Path(data_dir)
    gt = json.loads((data_dir / "panoptic.json").read_text())
    annotations = {a["image_id"]: a for a in gt["annotations"]}
    images = gt["images"][:limit] if limit else gt["images"]
    evaluator = PanopticQualityEvaluator(gt["categories"])
    counted: set[int] = set()
    for start in tqdm(range(0, len(images), batch_size), desc="evaluate", disable=not progress):
        chunk = images[start : start + batch_size]
        arrays = [np.asarray(Image.open(data_dir / "images" / Path(im["file_name"]).name).convert("RGB")) for im in chunk]
        predictions = predictor.predict(arrays, vocabulary)
        for im, pred in zip(chunk, predictions):
            ann = annotations[im["id"]]
            gt_map = read_panoptic_png(data_dir / "panoptic" / ann["file_name"])
            pred_segments = [{"id": s.id, "category_id": s.category_id} for s in pred.segments]
            evaluator.add_image(gt_map, ann["segments_info"], pred.panoptic_map, pred_segments, image_label=im["file_name"])
            counted.update(s["category_id"] for s in ann["segments_info"])
            counted.update(s["category_id"] for s in pred_segments)
    results = evaluator.compute()
    if groups:
        name_to_id = {c["name"]: c["id"] for c in gt["categories"]}
        results["groups"] = {g: group_pq(results, [name_to_id[n] for n in names if n in name_to_id], counted) for g, names in groups.items()}
    return results


def evaluate_on_source(
    predictor: Any,
    source: Any,
    vocabulary: Any = None,
    batch_size: int = 8,
    limit: Optional[int] = None,
    progress: bool = False,
) -> dict[str, Any]:
    """PQ of ``predictor`` on a training source's images against its targets (e.g. a validation set).

    Args:
        predictor: a PosSAMPredictor (anything with ``predict(images, vocabulary)``).
        source: a :class:`~possam_label.data.sources.TrainingSource`; its void and crowd pixels
            are void for PQ too.
        vocabulary: the classes to predict (default the predictor's); matched to the source's
            categories by name, a predicted class the source lacks counting as false positives.
        limit: the first N images only.
    Returns:
        The PQ result dict (``per_class`` keyed by the source's category ids, plus prediction-only
        classes), with ``"num_images"`` and ``"class_names"`` ``{category id: name}``.
    """
    from PIL import Image

    from .matching import match_categories, remap_segments

    vocab = vocabulary if vocabulary is not None else predictor.vocabulary
    gt_categories = [{**c, "isthing": int(bool(int(c.get("isthing", 1))))} for c in source.categories()]
    category_match = match_categories(gt_categories, vocab.to_coco_categories(), "predictions")
    evaluator = PanopticQualityEvaluator(category_match.categories)
    count = len(source) if limit is None else min(limit, len(source))
    for start in tqdm(range(0, count, batch_size), desc="validate", disable=not progress):
        targets = [source.target(i) for i in range(start, min(start + batch_size, count))]
        arrays = []
        for target in targets:
            with Image.open(target.image_path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        predictions = predictor.predict(arrays, vocab)
        for target, prediction in zip(targets, predictions):
            gt_segments = [{"id": s.id, "category_id": s.category_id, "iscrowd": int(s.iscrowd)} for s in target.segments]
            pred_segments = remap_segments([{"id": s.id, "category_id": s.category_id} for s in prediction.segments], category_match, str(target.image_path))
            evaluator.add_image(target.id_map, gt_segments, prediction.panoptic_map, pred_segments, image_label=str(target.image_path))
    results = evaluator.compute()
    results["num_images"] = count
    results["class_names"] = {int(c["id"]): str(c.get("name", c["id"])) for c in category_match.categories}
    return results
