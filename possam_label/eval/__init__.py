"""possam_label.eval: panoptic quality (PQ / SQ / RQ) with panopticapi's rules."""

from possam_label.eval.pq import (
    OFFSET,
    VOID,
    ClassCounts,
    PanopticQualityEvaluator,
    PQStats,
    format_pq_table,
    normalize_categories,
    pq_compute,
    pq_image_stats,
    results_to_json,
    save_pq_results,
    summarize_pq,
)

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
