"""Load an autolabel output directory into a persistent FiftyOne dataset.

Samples are matched by ``filepath`` (images of the run missing from the dataset are added). The
output is read one committed part at a time and written with ``set_values`` a chunk of images at a
time, so memory stays bounded by one part plus one chunk however large the run is. Loading the same
directory again replaces the labels of its images (never duplicates them); samples a reviewer has
marked reviewed are left alone unless ``replace_reviewed=True``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Union

import fiftyone as fo
from fiftyone import ViewField as F
from tqdm import tqdm

from ..types import PanopticPrediction
from .autolabel_output import AutolabelOutput, AutolabelOutputError, CategoryTable, ImageLabels
from .convert import prediction_to_labels
from .dataset import (
    DEFAULT_LABEL_FIELD,
    ReviewFields,
    get_categories,
    has_possam_field,
    open_dataset,
    record_run,
    set_categories,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]


@dataclass
class LoadResult:
    """What :func:`load_autolabel_output` did."""

    dataset_name: str
    label_field: str
    output_dir: str
    run_id: Optional[str]
    num_images: int = 0  # image rows in the output
    num_samples_added: int = 0  # samples created because the dataset lacked their filepath
    num_labeled: int = 0  # samples whose labels were (re)written
    num_segments: int = 0  # Detections written
    num_errors: int = 0  # images the run could not label
    num_skipped_reviewed: int = 0  # reviewed samples left untouched
    num_skipped_missing: int = 0  # images not in the dataset, with add_missing=False
    new_classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# Detection attributes written by the loader and by the review tools.
LABEL_ATTRIBUTES = {
    "segment_id": fo.IntField,
    "category_id": fo.IntField,
    "isthing": fo.BooleanField,
    "mask_quality": fo.FloatField,
    "in_vocab_prob": fo.FloatField,
    "out_vocab_prob": fo.FloatField,
    "area": fo.IntField,
    "run_id": fo.StringField,
    "review_status": fo.StringField,
    "corrected_at": fo.DateTimeField,
    "deleted_at": fo.DateTimeField,
    "original_label": fo.StringField,
    "original_category_id": fo.IntField,
    "original_isthing": fo.BooleanField,
}


def ensure_review_fields(dataset: fo.Dataset, label_field: str) -> ReviewFields:
    """Declare the sample fields of ``label_field`` (see :mod:`.dataset`) and the label attributes
    when missing; declared attributes get sidebar filters in the App and are seen by aggregations."""
    fields = ReviewFields(label_field)
    wanted = {
        fields.labels: lambda: fo.EmbeddedDocumentField(fo.Detections),
        fields.semantic: lambda: fo.EmbeddedDocumentField(fo.Segmentation),
        fields.deleted: lambda: fo.EmbeddedDocumentField(fo.Detections),
        fields.corrections: lambda: fo.ListField(fo.DictField()),
        fields.reviewed: fo.BooleanField,
        fields.reviewed_at: fo.DateTimeField,
        fields.run_id: fo.StringField,
        fields.image_id: fo.IntField,
        fields.error: fo.StringField,
    }
    for list_field in (fields.labels, fields.deleted):
        for attr, ftype in LABEL_ATTRIBUTES.items():
            wanted[f"{list_field}.detections.{attr}"] = ftype
    schema = dataset.get_field_schema(flat=True)
    missing = {path: make() for path, make in wanted.items() if path not in schema}
    if missing:
        # One schema merge instead of a database round trip per field.
        dataset.add_dynamic_sample_fields(fields=missing)
    return fields


def create_indexes(dataset: fo.Dataset, label_field: str) -> None:
    """Indexes that keep the App sidebar and confidence filters fast on large datasets."""
    fields = ReviewFields(label_field)
    for path in (f"{label_field}.detections.confidence", f"{label_field}.detections.label", fields.reviewed):
        dataset.create_index(path)


def _resolve_dataset(dataset: Union[str, fo.Dataset, None], output: AutolabelOutput, create: bool) -> fo.Dataset:
    if isinstance(dataset, fo.Dataset):
        return dataset
    if dataset is None:
        dataset = "possam-" + output.root.name
    name = dataset.strip()
    if name.startswith("fiftyone://"):
        name = name[len("fiftyone://") :]
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    if not create:
        return open_dataset(name)  # raises DatasetNotFoundError naming the existing datasets
    logger.info("creating FiftyOne dataset %r", name)
    return fo.Dataset(name, persistent=True)


def _merge_categories(dataset: fo.Dataset, label_field: str, run_categories: CategoryTable) -> tuple[CategoryTable, dict[int, int], list[str]]:
    """Union of the dataset's classes for the field and the run's; maps run ids to dataset ids.

    Classes are matched by name. A run class whose id is taken by another name gets the next free
    id, and its segments are renumbered, so several runs with different vocabularies can share a field.
    """
    had_classes = has_possam_field(dataset, label_field)
    table = get_categories(dataset, label_field) if had_classes else CategoryTable()
    remap: dict[int, int] = {}
    added: list[str] = []
    for category in run_categories:
        if category.name in table:
            remap[category.id] = table.by_name(category.name).id
            continue
        taken = {c.id for c in table}
        if category.id not in taken:
            table._insert(category)  # keep the run's id (and color) when it is free
            remap[category.id] = category.id
        else:
            new, _ = table.get_or_add(category.name, category.isthing)
            remap[category.id] = new.id
        if had_classes:
            added.append(category.name)
    return table, remap, added


def _remap(prediction: PanopticPrediction, remap: dict[int, int], categories: CategoryTable, where: str) -> PanopticPrediction:
    for seg in prediction.segments:
        if seg.category_id not in remap:
            raise AutolabelOutputError(f"{where}: segment {seg.id} has category id {seg.category_id} ({seg.category!r}) that is not in the run's vocabulary")
        seg.category_id = remap[seg.category_id]
        seg.category = categories.by_id(seg.category_id).name
    return prediction


def load_autolabel_output(
    output_dir: Union[str, os.PathLike],
    dataset: Union[str, fo.Dataset, None] = None,
    label_field: str = DEFAULT_LABEL_FIELD,
    create: bool = True,
    add_missing: bool = True,
    replace_reviewed: bool = False,
    chunk_size: int = 64,
    progress: Union[bool, ProgressCallback] = True,
) -> LoadResult:
    """Load an autolabel output directory into a persistent FiftyOne dataset.

    Args:
        output_dir: the ``--out`` directory of ``python -m pipelines.autolabel``.
        dataset: a dataset, or its name (``fiftyone://NAME`` accepted); None: ``possam-<dir name>``.
        label_field: the Detections field; the other fields derive from it (see :mod:`.dataset`).
        create: create the named dataset when it does not exist (else DatasetNotFoundError).
        add_missing: add samples for images of the run that the dataset does not have.
        replace_reviewed: also overwrite samples marked reviewed (default: keep the review).
        chunk_size: images written per ``set_values`` call.
        progress: show a tqdm bar (bool), or a callback ``(fraction, message)``.
    Returns:
        A :class:`LoadResult` with the counts.
    Raises:
        AutolabelOutputError: ``output_dir`` is not an autolabel output (message names file and reason).
        DatasetNotFoundError: ``create=False`` and no dataset has that name.
    """
    output = AutolabelOutput.open(output_dir)  # validate before touching any dataset
    ds = _resolve_dataset(dataset, output, create)
    if not ds.persistent:
        ds.persistent = True
    fields = ensure_review_fields(ds, label_field)
    categories, remap, new_classes = _merge_categories(ds, label_field, output.categories)
    set_categories(ds, label_field, categories)

    reviewed_paths: set[str] = set()
    if not replace_reviewed:
        reviewed_paths = set(ds.match(F(fields.reviewed) == True).values("filepath"))  # noqa: E712

    num_images, num_segment_rows = output.count_rows()
    result = LoadResult(ds.name, label_field, str(output.root), output.run_id, num_images=num_images)
    callback = progress if callable(progress) else None
    bar = tqdm(total=num_images, desc=f"load {output.root.name} -> {ds.name}.{label_field}", unit="img", disable=(progress is not True))
    chunk: list[ImageLabels] = []
    done = 0

    def flush() -> None:
        nonlocal done
        _write_chunk(ds, fields, chunk, remap, categories, reviewed_paths, add_missing, result)
        done += len(chunk)
        bar.update(len(chunk))
        if callback is not None:
            callback(done / max(num_images, 1), f"loaded {done}/{num_images} images")
        chunk.clear()

    try:
        for item in output.iter_images():
            chunk.append(item)
            if len(chunk) >= chunk_size:
                flush()
        if chunk:
            flush()
    finally:
        bar.close()

    create_indexes(ds, label_field)
    record_run(
        ds,
        label_field,
        {
            "output_dir": str(output.root),
            "run_id": output.run_id,
            "loaded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "num_images": num_images,
            "num_segments": num_segment_rows,
        },
    )
    result.new_classes = new_classes
    logger.info("loaded %s into %s.%s: %s", output.root, ds.name, label_field, result.to_dict())
    return result


def _add_samples(ds: fo.Dataset, items: list[ImageLabels]) -> int:
    """Add one sample per image. The Sample objects die on return: FiftyOne reloads every live
    in-memory sample after each ``set_values``, which would cost a query per sample per field."""
    samples = []
    for item in items:
        metadata = None
        if item.record.width and item.record.height:
            metadata = fo.ImageMetadata(width=item.record.width, height=item.record.height)
        samples.append(fo.Sample(filepath=item.record.file_path, metadata=metadata))
    ds.add_samples(samples, progress=False)
    return len(samples)


def _write_chunk(
    ds: fo.Dataset,
    fields: ReviewFields,
    chunk: list[ImageLabels],
    remap: dict[int, int],
    categories: CategoryTable,
    reviewed_paths: set[str],
    add_missing: bool,
    result: LoadResult,
) -> None:
    for item in chunk:
        if not os.path.isabs(item.record.file_path):
            raise AutolabelOutputError(f"image {item.record.image_id}: file_path {item.record.file_path!r} is not absolute")
    paths = [item.record.file_path for item in chunk]
    existing = set(ds.match(F("filepath").is_in(paths)).values("filepath"))
    missing = [item for item in chunk if item.record.file_path not in existing]
    if missing and add_missing:
        result.num_samples_added += _add_samples(ds, missing)
        existing.update(item.record.file_path for item in missing)
    elif missing:
        result.num_skipped_missing += len(missing)

    values: dict[str, dict[str, object]] = {name: {} for name in (
        fields.labels, fields.semantic, fields.deleted, fields.corrections, fields.reviewed,
        fields.reviewed_at, fields.run_id, fields.image_id, fields.error,
    )}
    for item in chunk:
        path = item.record.file_path
        if path not in existing:
            continue
        if path in reviewed_paths:
            result.num_skipped_reviewed += 1
            continue
        run_id = item.run_id or result.run_id
        if item.prediction is None:
            detections, semantic = None, None
            result.num_errors += 1
        else:
            prediction = _remap(item.prediction, remap, categories, f"{result.output_dir} image {item.record.image_id}")
            detections, semantic = prediction_to_labels(prediction, attributes={"run_id": run_id})
            result.num_segments += len(detections.detections)
        values[fields.labels][path] = detections
        values[fields.semantic][path] = semantic
        values[fields.deleted][path] = None
        values[fields.corrections][path] = None
        values[fields.reviewed][path] = False
        values[fields.reviewed_at][path] = None
        values[fields.run_id][path] = run_id
        values[fields.image_id][path] = item.record.image_id
        values[fields.error][path] = item.record.error if item.record.status != "ok" else None
        result.num_labeled += 1
    if not values[fields.labels]:
        return
    for name, mapping in values.items():
        ds.set_values(name, mapping, key_field="filepath")
