"""possam_label.fiftyone: PosSAM auto-labels in FiftyOne (load, review, correct, export, Model).

Importing this package does not import FiftyOne; the names below load their module on first use,
so the FiftyOne-free parts (:mod:`.autolabel_output`, :mod:`.export` from a directory) work
without it.

=============================  ===================================================================
``load_autolabel_output``      autolabel output directory -> persistent dataset (:mod:`.load`)
``review_summary`` ...         counts, histogram, saved views, tags by confidence (:mod:`.review`)
``relabel_segments`` ...       corrections and their recovery (:mod:`.corrections`)
``export_from_dataset``        reviewed dataset -> COCO panoptic / instances / semantic (:mod:`.export`)
``export_from_output_dir``     the same export straight from an output directory, no FiftyOne
``autolabel_samples``          run the Ray autolabel job on a dataset or view, then load (:mod:`.run`)
``PosSAMModel``                ``dataset.apply_model(load_possam_model(...))`` (:mod:`.model`)
=============================  ===================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AutolabelOutput": "autolabel_output",
    "AutolabelOutputError": "autolabel_output",
    "load_autolabel_output": "load",
    "LoadResult": "load",
    "DatasetNotFoundError": "dataset",
    "ReviewFields": "dataset",
    "open_dataset": "dataset",
    "review_summary": "review",
    "save_review_views": "review",
    "tag_by_confidence": "review",
    "needs_review_view": "review",
    "confident_view": "review",
    "relabel_segments": "corrections",
    "delete_segments": "corrections",
    "accept_labels": "corrections",
    "reject_labels": "corrections",
    "mark_reviewed": "corrections",
    "revert_corrections": "corrections",
    "original_predictions": "review_baseline",
    "ExportOptions": "export",
    "export_from_dataset": "export",
    "export_from_output_dir": "export",
    "check_coco_panoptic": "export",
    "prediction_to_labels": "convert",
    "autolabel_samples": "run",
    "PosSAMModel": "model",
    "PosSAMModelConfig": "model",
    "load_possam_model": "model",
    "prepare_review_field": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
