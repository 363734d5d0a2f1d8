"""Where possam-label keeps its labels in a FiftyOne dataset: field names, classes, dataset lookup.

For a label field ``F`` (default ``"possam"``) a dataset holds, per sample:

==========================  ==========================================================================
``F``                        ``fo.Detections``: one Detection per panoptic segment (see convert.py)
``F_semantic``               ``fo.Segmentation``: the category-id map (0 = void)
``F_deleted``                ``fo.Detections``: segments deleted in review (kept for recovery)
``F_corrections``            list of dicts: the corrections log (action, label id, before/after, time)
``F_reviewed``               bool: a reviewer marked the sample done
``F_original``               list of dicts: the labels as loaded (masks as RLE), what revert restores
``F_synced``                 list of dicts: each label's fingerprint as last seen (finds App-editor edits)
``F_reviewed_at``            datetime of that mark
``F_loaded_at``              when the loader wrote the sample (equal to ``last_modified_at`` until
                             anything else changes it: the editor sync skips such samples)
``F_run_id``                 the autolabel run the labels came from
``F_image_id``               the image id in that run's Parquet files
``F_error``                  why the run could not label the image (None when it could)
==========================  ==========================================================================

and, per dataset, ``dataset.info["possam_label"][F]`` with the class table (COCO-panoptic
``categories``, new classes added by relabels included) and the runs loaded into ``F``;
``dataset.mask_targets["F_semantic"]`` maps category ids to names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

import fiftyone as fo

from ..vocab import Vocabulary
from .autolabel_output import label_field_classes

INFO_KEY = "possam_label"
DEFAULT_LABEL_FIELD = "possam"
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DatasetNotFoundError(ValueError):
    """A FiftyOne dataset name that does not exist."""


@dataclass(frozen=True)
class ReviewFields:
    """The sample fields that belong to one label field."""

    labels: str

    def __post_init__(self) -> None:
        if not _FIELD_RE.match(self.labels):
            raise ValueError(f"label field must be an identifier (letters, digits, _), got {self.labels!r}")

    @property
    def semantic(self) -> str:
        return f"{self.labels}_semantic"

    @property
    def deleted(self) -> str:
        return f"{self.labels}_deleted"

    @property
    def corrections(self) -> str:
        return f"{self.labels}_corrections"

    @property
    def reviewed(self) -> str:
        return f"{self.labels}_reviewed"

    @property
    def original(self) -> str:
        return f"{self.labels}_original"

    @property
    def synced(self) -> str:
        return f"{self.labels}_synced"

    @property
    def reviewed_at(self) -> str:
        return f"{self.labels}_reviewed_at"

    @property
    def loaded_at(self) -> str:
        return f"{self.labels}_loaded_at"

    @property
    def run_id(self) -> str:
        return f"{self.labels}_run_id"

    @property
    def image_id(self) -> str:
        return f"{self.labels}_image_id"

    @property
    def error(self) -> str:
        return f"{self.labels}_error"


def open_dataset(dataset: Union[str, fo.Dataset]) -> fo.Dataset:
    """The dataset object for a name (or the object itself); DatasetNotFoundError names the choices."""
    if isinstance(dataset, fo.Dataset):
        return dataset
    if not isinstance(dataset, str) or not dataset.strip():
        raise DatasetNotFoundError(f"expected a FiftyOne dataset name, got {dataset!r}")
    name = dataset.strip()
    if name.startswith("fiftyone://"):
        name = name[len("fiftyone://") :]
    if not fo.dataset_exists(name):
        existing = fo.list_datasets()
        shown = ", ".join(existing[:10]) + (" ..." if len(existing) > 10 else "")
        raise DatasetNotFoundError(f"FiftyOne dataset {name!r} does not exist (existing datasets: {shown or 'none'})")
    return fo.load_dataset(name)


def _field_info(dataset: fo.Dataset, label_field: str) -> dict[str, Any]:
    info = dataset.info.get(INFO_KEY) or {}
    return dict(info.get(label_field) or {})


def get_categories(dataset: fo.Dataset, label_field: str) -> Vocabulary:
    """The class table of ``label_field`` (raises ValueError if nothing was loaded into it)."""
    entries = _field_info(dataset, label_field).get("categories")
    if not entries:
        raise ValueError(
            f"dataset {dataset.name!r} has no possam-label classes for field {label_field!r}; "
            "load an autolabel output into it first (load_autolabel_output)"
        )
    return label_field_classes(entries, f"dataset {dataset.name!r} info[{INFO_KEY!r}][{label_field!r}]")


def has_possam_field(dataset: fo.Dataset, label_field: str) -> bool:
    return bool(_field_info(dataset, label_field).get("categories"))


def possam_label_fields(dataset: fo.Dataset) -> list[str]:
    """Label fields of ``dataset`` that hold possam-label results."""
    info = dataset.info.get(INFO_KEY) or {}
    return [name for name, value in info.items() if isinstance(value, dict) and value.get("categories") and dataset.has_field(name)]


def set_categories(dataset: fo.Dataset, label_field: str, categories: Vocabulary) -> None:
    """Store the class table: dataset info, semantic ``mask_targets`` and the field's ``classes``."""
    fields = ReviewFields(label_field)
    info = dict(dataset.info)
    per_dataset = dict(info.get(INFO_KEY) or {})
    per_field = dict(per_dataset.get(label_field) or {})
    per_field["categories"] = categories.to_coco_categories(with_synonyms=False)
    per_dataset[label_field] = per_field
    info[INFO_KEY] = per_dataset
    dataset.info = info
    mask_targets = dict(dataset.mask_targets)
    mask_targets[fields.semantic] = {int(c.id): c.name for c in categories}
    dataset.mask_targets = mask_targets
    classes = dict(dataset.classes)
    classes[label_field] = list(categories.names)
    dataset.classes = classes
    _set_class_colors(dataset, fields, categories)
    dataset.save()


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*[int(c) for c in color])


def _set_class_colors(dataset: fo.Dataset, fields: ReviewFields, categories: Vocabulary) -> None:
    """App colors: each class in its vocabulary color, in the Detections and the semantic masks.

    Entries the user set for other fields are kept; those of these two fields are replaced.
    """
    scheme = dataset.app_config.color_scheme
    if scheme is None:
        scheme = fo.ColorScheme()
    ours = {fields.labels, fields.semantic, fields.deleted}
    kept = [f for f in (scheme.fields or []) if f.get("path") not in ours]
    value_colors = [{"value": c.name, "color": _hex(c.color)} for c in categories]
    by_review = [f for f in (scheme.fields or []) if f.get("path") == fields.labels and f.get("colorByAttribute") == "review_status"]
    kept.extend(by_review or [{"path": fields.labels, "colorByAttribute": "label", "valueColors": value_colors}])  # editor_sync.set_review_colors
    kept.append({"path": fields.deleted, "colorByAttribute": "label", "valueColors": value_colors})
    kept.append({"path": fields.semantic, "maskTargetsColors": [{"intTarget": int(c.id), "color": _hex(c.color)} for c in categories]})
    scheme.fields = kept
    if scheme.color_by is None:
        scheme.color_by = "value"
    dataset.app_config.color_scheme = scheme


def record_run(dataset: fo.Dataset, label_field: str, run: dict[str, Any]) -> None:
    """Append (or replace, same ``output_dir``) a loaded-run record in the dataset info."""
    info = dict(dataset.info)
    per_dataset = dict(info.get(INFO_KEY) or {})
    per_field = dict(per_dataset.get(label_field) or {})
    runs = [r for r in per_field.get("runs", []) if r.get("output_dir") != run.get("output_dir")]
    runs.append(run)
    per_field["runs"] = runs
    per_dataset[label_field] = per_field
    info[INFO_KEY] = per_dataset
    dataset.info = info
    dataset.save()


def loaded_runs(dataset: fo.Dataset, label_field: str) -> list[dict[str, Any]]:
    return list(_field_info(dataset, label_field).get("runs", []))
