"""Panoptic quality (PQ = SQ x RQ) with the rules of the COCO panoptic evaluator (panopticapi):
the per-image matching and the averaging over classes. :mod:`.pq_files` evaluates COCO-panoptic
files with them, :mod:`.pq_report` writes and prints the results.

Re-implemented from the published description of the metric, not from panopticapi's code.

Rules, per image:

* Id maps use ``VOID = 0`` for unlabelled pixels. Pixel pairs (gt id, pred id) are counted with
  one ``np.unique`` over ``gt_id * OFFSET + pred_id`` (``OFFSET = 256**3``, the number of
  possible 24-bit RGB ids), which gives every pairwise intersection and, by summing, every area.
* A ground-truth (GT) segment and a predicted segment match when they have the same category, the
  GT segment is not a crowd region, and IoU > 0.5 (strictly). The union leaves out the predicted
  pixels that fall on GT void: ``IoU = inter / (pred_area + gt_area - inter - pred_on_void)``.
  IoU > 0.5 makes the matching unique, so no assignment solver is needed.
* Unmatched non-crowd GT segments are false negatives (FN). GT crowd segments (``iscrowd=1``) are
  never matched; each image keeps one crowd region per category: the last crowd segment of that
  category in ``segments_info`` order.
* An unmatched prediction is a false positive (FP) unless more than half of its area lies on GT
  void plus the crowd region of its own category.

Per class (summed over all images before dividing): ``PQ = sum_IoU / (TP + FP/2 + FN/2)``,
``SQ = sum_IoU / TP`` (0 when TP = 0), ``RQ = TP / (TP + FP/2 + FN/2)``. "All", "Things" and
"Stuff" average these over the classes (of the GT categories, split by ``isthing``) that have
``TP + FP + FN > 0``; ``n`` is the number of such classes. ``isthing == 1`` marks a thing class,
any other value a stuff class. ``per_class`` lists every GT category (zeros where a class occurs
on neither side).

Deliberate differences from panopticapi, none of which changes a result on well-formed input:

* Bad input raises ``ValueError`` (``FileNotFoundError`` for a missing PNG) naming the file or image
  and the reason, where panopticapi raises bare ``KeyError``/``Exception`` or crashes: prediction
  ids missing from the JSON or the PNG, unknown categories, an image without a prediction,
  PNG sizes that differ, duplicate segment ids, segment id 0, duplicate annotations per image,
  and GT segments whose category is not among the GT categories (panopticapi skips them).
* GT segment areas are counted from the GT PNG rather than read from the JSON ``area`` field
  (they agree for valid COCO files). GT PNG ids that are not in the GT ``segments_info`` are, as in
  panopticapi, neither void nor a segment: they can only enlarge a prediction's union.
* A group (Things or Stuff) with no counted class reports zeros with ``n = 0`` instead of failing
  on a division by zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

VOID = 0
OFFSET = 256**3
MATCH_IOU = 0.5  # matching needs IoU strictly above this
FP_IGNORE_FRACTION = 0.5  # an unmatched prediction with more than this on void + crowd is no FP
GROUPS = ("All", "Things", "Stuff")

# Categories: a COCO ``categories`` list, or a mapping category_id -> category dict.
CategoriesLike = Union[Sequence[Mapping[str, Any]], Mapping[int, Mapping[str, Any]]]


@dataclass
class ClassCounts:
    """Matching counts of one category, summed over images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def scores(self) -> dict[str, float]:
        """``{"pq", "sq", "rq"}`` of this class (zeros when it has no TP/FP/FN)."""
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        if denominator == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        return {
            "pq": self.iou_sum / denominator,
            "sq": self.iou_sum / self.tp if self.tp else 0.0,
            "rq": self.tp / denominator,
        }


@dataclass
class PQStats:
    """Per-category counts; add the stats of several images with ``+=``."""

    per_class: dict[int, ClassCounts] = field(default_factory=dict)

    def counts(self, category_id: int) -> ClassCounts:
        """The (created on first use) counts of ``category_id``."""
        if category_id not in self.per_class:
            self.per_class[category_id] = ClassCounts()
        return self.per_class[category_id]

    def __iadd__(self, other: "PQStats") -> "PQStats":
        for category_id, theirs in other.per_class.items():
            mine = self.counts(category_id)
            mine.tp += theirs.tp
            mine.fp += theirs.fp
            mine.fn += theirs.fn
            mine.iou_sum += theirs.iou_sum
        return self


def normalize_categories(categories: CategoriesLike) -> dict[int, dict[str, Any]]:
    """Return ``{category_id: category_dict}``; every category needs ``isthing`` (0/1 or bool)."""
    if isinstance(categories, Mapping):
        items = [(int(cid), dict(cat)) for cid, cat in categories.items()]
    else:
        items = []
        for cat in categories:
            if "id" not in cat:
                raise ValueError(f"category {dict(cat)!r} has no 'id'")
            items.append((int(cat["id"]), dict(cat)))
    normalized: dict[int, dict[str, Any]] = {}
    for cid, cat in items:
        if "isthing" not in cat:
            raise ValueError(f"category {cid} has no 'isthing' field (needed to split Things/Stuff)")
        if cid in normalized:
            raise ValueError(f"category id {cid} is listed twice")
        normalized[cid] = cat
    if not normalized:
        raise ValueError("the category list is empty")
    return normalized


class CheckedCategories(dict):
    """A category dict that :func:`normalize_categories` already checked: :func:`pq_image_stats`
    takes it as it is (no check per image)."""


def _segment_field(segment: Any, name: str, default: Any = None) -> Any:
    """Read a field of a segments_info entry given as a dict or as an object (e.g. SegmentInfo)."""
    if isinstance(segment, Mapping):
        value = segment.get(name, default)
    else:
        value = getattr(segment, name, default)
    if value is None:
        raise ValueError(f"segment {segment!r} has no '{name}'")
    return value


def _parse_segments(
    segments: Iterable[Any], categories: Mapping[int, Any], where: str, read_crowd: bool
) -> dict[int, tuple[int, bool]]:
    """``{segment_id: (category_id, iscrowd)}`` in segments_info order, validated.

    ``iscrowd`` is read only for ground truth (``read_crowd``); a prediction's is ignored.
    """
    parsed: dict[int, tuple[int, bool]] = {}
    for segment in segments:
        segment_id = int(_segment_field(segment, "id"))
        category_id = int(_segment_field(segment, "category_id"))
        iscrowd = bool(int(_segment_field(segment, "iscrowd", 0))) if read_crowd else False
        if segment_id == VOID:
            raise ValueError(f"{where}: segment id 0 is reserved for void pixels")
        if not 0 < segment_id < OFFSET:
            raise ValueError(f"{where}: segment id {segment_id} is outside 1..{OFFSET - 1}")
        if segment_id in parsed:
            raise ValueError(f"{where}: segment id {segment_id} appears twice in segments_info")
        if category_id not in categories:
            raise ValueError(
                f"{where}: segment {segment_id} has category_id {category_id}, "
                "which is not a ground-truth category"
            )
        parsed[segment_id] = (category_id, iscrowd)
    return parsed


def _check_id_map(id_map: np.ndarray, where: str) -> np.ndarray:
    array = np.asarray(id_map)
    if array.ndim != 2:
        raise ValueError(f"{where}: id map must be 2-D (H, W), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{where}: id map must hold integers, got dtype {array.dtype}")
    if array.size and (int(array.min()) < 0 or int(array.max()) >= OFFSET):
        raise ValueError(f"{where}: id map values must lie in 0..{OFFSET - 1}")
    return array


def _areas_by_id(pair_ids: np.ndarray, pair_counts: np.ndarray) -> dict[int, int]:
    """Sum the pixel counts of (gt, pred) pairs over one side: ``{segment_id: area}``."""
    ids, inverse = np.unique(pair_ids, return_inverse=True)
    areas = np.zeros(len(ids), dtype=np.int64)
    np.add.at(areas, inverse, pair_counts)
    return dict(zip(ids.tolist(), areas.tolist()))


def format_ids(ids: Iterable[int], limit: int = 10) -> str:
    """Sorted ids as text for error messages, the first ``limit`` of them."""
    ids = sorted(ids)
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def pq_image_stats(
    gt_id_map: np.ndarray,
    gt_segments: Iterable[Any],
    pred_id_map: np.ndarray,
    pred_segments: Iterable[Any],
    categories: CategoriesLike,
    *,
    image_label: str = "image",
) -> PQStats:
    """Match the segments of one image and count TP / FP / FN and the summed IoU per category.

    Args:
        gt_id_map: (H, W) integer GT segment ids, 0 = void.
        gt_segments: GT segments_info: dicts (or objects) with ``id``, ``category_id`` and optional
            ``iscrowd`` (default 0). Other keys are ignored.
        pred_id_map: (H, W) integer predicted segment ids, 0 = void (unlabelled).
        pred_segments: predicted segments_info (``id``, ``category_id``; ``iscrowd`` and extra keys
            such as ``score`` are ignored). Must list exactly the non-zero ids of ``pred_id_map``.
        categories: the GT categories (COCO list or ``{id: category}``), each with ``isthing``.
        image_label: names the image in error messages (e.g. file name and image_id).

    Returns:
        The image's :class:`PQStats`; add several with ``+=`` and pass to :func:`summarize_pq`.

    Raises:
        ValueError: on shape mismatch, a PNG id missing from ``pred_segments`` (or the reverse),
            an unknown category, duplicate or zero segment ids.
    """
    category_map = categories if isinstance(categories, CheckedCategories) else normalize_categories(categories)
    gt = _check_id_map(gt_id_map, f"{image_label} (ground truth)")
    pred = _check_id_map(pred_id_map, f"{image_label} (prediction)")
    if gt.shape != pred.shape:
        raise ValueError(
            f"{image_label}: prediction size {pred.shape[1]}x{pred.shape[0]} (WxH) differs from "
            f"ground-truth size {gt.shape[1]}x{gt.shape[0]}"
        )
    gt_info = _parse_segments(gt_segments, category_map, f"{image_label} (ground truth)", True)
    pred_info = _parse_segments(pred_segments, category_map, f"{image_label} (prediction)", False)

    # One sort of the combined ids gives every (gt, pred) intersection; areas follow by summing.
    combined = gt.astype(np.int64).ravel() * OFFSET + pred.astype(np.int64).ravel()
    pair_keys, pair_counts = np.unique(combined, return_counts=True)
    pair_gt = pair_keys // OFFSET
    pair_pred = pair_keys % OFFSET
    pred_area = _areas_by_id(pair_pred, pair_counts)
    gt_area = _areas_by_id(pair_gt, pair_counts)

    png_pred_ids = set(pred_area) - {VOID}
    missing_in_json = png_pred_ids - set(pred_info)
    if missing_in_json:
        raise ValueError(
            f"{image_label}: prediction PNG has segment ids {format_ids(missing_in_json)} "
            "that are not in its segments_info"
        )
    missing_in_png = set(pred_info) - png_pred_ids
    if missing_in_png:
        raise ValueError(
            f"{image_label}: prediction segments_info lists ids {format_ids(missing_in_png)} "
            "that do not occur in its PNG"
        )

    intersections: dict[tuple[int, int], int] = dict(
        zip(zip(pair_gt.tolist(), pair_pred.tolist()), pair_counts.tolist())
    )
    stats = PQStats()
    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (gt_id, pred_id), intersection in intersections.items():
        if gt_id not in gt_info or pred_id not in pred_info:
            continue
        gt_category, gt_crowd = gt_info[gt_id]
        if gt_crowd or gt_category != pred_info[pred_id][0]:
            continue
        union = pred_area[pred_id] + gt_area[gt_id] - intersection - intersections.get((VOID, pred_id), 0)
        if 2 * intersection > union:  # IoU > 0.5, exactly, without float rounding
            counts = stats.counts(gt_category)
            counts.tp += 1
            counts.iou_sum += intersection / union
            gt_matched.add(gt_id)
            pred_matched.add(pred_id)

    crowd_region_by_category: dict[int, int] = {}
    for gt_id, (gt_category, gt_crowd) in gt_info.items():
        if gt_id in gt_matched:
            continue
        if gt_crowd:
            crowd_region_by_category[gt_category] = gt_id  # the last crowd segment wins
        else:
            stats.counts(gt_category).fn += 1

    for pred_id, (pred_category, _) in pred_info.items():
        if pred_id in pred_matched:
            continue
        ignored = intersections.get((VOID, pred_id), 0)
        crowd_id = crowd_region_by_category.get(pred_category)
        if crowd_id is not None:
            ignored += intersections.get((crowd_id, pred_id), 0)
        if 2 * ignored > pred_area[pred_id]:  # more than half on void + same-category crowd
            continue
        stats.counts(pred_category).fp += 1
    return stats


def summarize_pq(stats: PQStats, categories: CategoriesLike) -> dict[str, Any]:
    """Average per-class scores into the result dict.

    Returns:
        ``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id:
        {"pq", "sq", "rq"}}}``; scores in [0, 1]. As in panopticapi, ``per_class`` lists every
        category in the order of ``categories`` (zeros for a class that occurs on neither side);
        ``n`` counts the classes with TP + FP + FN > 0, the only ones averaged.
    """
    category_map = normalize_categories(categories)
    unknown = set(stats.per_class) - set(category_map)
    if unknown:
        raise ValueError(f"stats hold categories {format_ids(unknown)} that are not in the categories")
    per_class: dict[int, dict[str, float]] = {}
    counted: list[int] = []  # classes with TP + FP + FN > 0: the ones that are averaged
    for category_id in category_map:
        counts = stats.per_class.get(category_id, ClassCounts())
        per_class[category_id] = counts.scores()
        if counts.tp + counts.fp + counts.fn > 0:
            counted.append(category_id)
    results: dict[str, Any] = {}
    for group in GROUPS:
        members = [
            cid
            for cid in counted
            if group == "All" or (int(category_map[cid]["isthing"]) == 1) == (group == "Things")
        ]
        n = len(members)
        results[group] = {
            key: (sum(per_class[cid][key] for cid in members) / n if n else 0.0) for key in ("pq", "sq", "rq")
        }
        results[group]["n"] = n
    results["per_class"] = per_class
    return results


class PanopticQualityEvaluator:
    """Accumulates PQ over in-memory images (e.g. during training), no files involved.

    Example::

        evaluator = PanopticQualityEvaluator(categories)
        for gt_map, gt_segs, pred_map, pred_segs in batches:
            evaluator.add_image(gt_map, gt_segs, pred_map, pred_segs)
        results = evaluator.compute()
    """

    def __init__(self, categories: CategoriesLike) -> None:
        self.categories = CheckedCategories(normalize_categories(categories))
        self.stats = PQStats()
        self.num_images = 0

    def add_image(
        self,
        gt_id_map: np.ndarray,
        gt_segments: Iterable[Any],
        pred_id_map: np.ndarray,
        pred_segments: Iterable[Any],
        image_label: str | None = None,
    ) -> PQStats:
        """Add one image (arguments as :func:`pq_image_stats`); returns that image's stats."""
        label = image_label if image_label is not None else f"image #{self.num_images}"
        image_stats = pq_image_stats(
            gt_id_map, gt_segments, pred_id_map, pred_segments, self.categories, image_label=label
        )
        self.stats += image_stats
        self.num_images += 1
        return image_stats

    def compute(self) -> dict[str, Any]:
        """The :func:`summarize_pq` result over all images added so far."""
        return summarize_pq(self.stats, self.categories)
