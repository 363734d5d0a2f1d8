"""possam_label.eval: panoptic quality (PQ / SQ / RQ) with panopticapi's rules."""

from possam_label.eval.pq import (
    OFFSET,
    VOID,
    ClassCounts,
    PanopticQualityEvaluator,
    PQStats,
    normalize_categories,
    pq_image_stats,
    summarize_pq,
)
from possam_label.eval.pq_files import pq_compute
from possam_label.eval.pq_report import format_pq_table, results_to_json, save_pq_results

__all__ = [
    "OFFSET",
    "VOID",
    "ClassCounts",
    "PanopticQualityEvaluator",
    "PQStats",
    "format_pq_table",
    "normalize_categories",
    "pq_compute",
    "pq_image_stats",
    "results_to_json",
    "save_pq_results",
    "summarize_pq",
]
