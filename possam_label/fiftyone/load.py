"""Load an autolabel output directory into a persistent FiftyOne dataset.

Samples are matched by ``filepath`` (images of the run missing from the dataset are added).
Loading the same directory again replaces the labels of its images (never duplicates them);
samples a reviewer has marked reviewed are left alone unless ``replace_reviewed=True``.

The output is written one committed Parquet part at a time by :func:`.bulk_load.write_part`
(documents built directly, one ``find`` + ``insert_many`` + ``bulk_write`` per chunk of images),
in ``workers`` processes in parallel, each with its own database connection; memory stays bounded
by one part per worker however large the run is. Masks live in the database (default) or, with
``mask_storage="files"``, in PNG files referenced by ``mask_path`` (smaller database, faster
load). ``review_below`` / ``audit_fraction`` load only the images that need review and/or a
random audit sample. See docs/review.md, "Loading large runs".
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import logging
import multiprocessing
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Union

import fiftyone as fo
from tqdm import tqdm

from ..vocab import Vocabulary
from .autolabel_output import AutolabelOutput
from .bulk_load import MASK_STORAGES, LoadSelection, PartJob, PartStats, write_part
from .dataset import (
    DEFAULT_LABEL_FIELD,
    ReviewFields,
    get_categories,
    has_possam_field,
    open_dataset,
    record_run,
    set_categories,
)
from .editor_sync import prepare_annotation
from .review_stats import review_snapshot

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]

# Below this many images a load runs in the calling process: starting worker processes costs
# seconds, more than writing a small run takes.
MIN_IMAGES_FOR_WORKERS = 2000


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
    num_not_selected: int = 0  # images left out by review_below / audit_fraction
    new_classes: list[str] = field(default_factory=list)
    part_errors: list[str] = field(default_factory=list)  # parts that could not be read (the others were loaded)
    workers: int = 1
    mask_storage: str = "database"
    masks_dir: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)

    def add(self, stats: PartStats) -> None:
        for name in ("num_samples_added", "num_labeled", "num_segments", "num_errors", "num_skipped_reviewed", "num_skipped_missing", "num_not_selected"):
            setattr(self, name, getattr(self, name) + getattr(stats, name))
        if stats.error:
            self.part_errors.append(stats.error)


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
        fields.original: lambda: fo.ListField(fo.DictField()),  # the labels as loaded (revert, editor sync)
        fields.synced: lambda: fo.ListField(fo.DictField()),  # labels as last seen (editor_sync)
        fields.reviewed: fo.BooleanField,
        fields.reviewed_at: fo.DateTimeField,
        fields.loaded_at: fo.DateTimeField,
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


def _merge_categories(dataset: fo.Dataset, label_field: str, run_categories: Vocabulary) -> tuple[Vocabulary, dict[int, int], list[str]]:
    """Union of the dataset's classes for the field and the run's; maps run ids to dataset ids.

    Classes are matched by name. A run class whose id is taken by another name gets the next free
    id, and its segments are renumbered, so several runs with different vocabularies can share a field.
    """
    if not has_possam_field(dataset, label_field):
        return run_categories, {c.id: c.id for c in run_categories}, []
    table = get_categories(dataset, label_field)
    remap: dict[int, int] = {}
    added: list[str] = []
    for category in run_categories:
        if category.name not in table:
            if category.id in table.category_ids:  # taken by another name: the next free id, a fresh colour
                table = table.with_class(category.name, category.isthing)
            else:  # keep the run's id and colour
                table = table.with_class(category.name, category.isthing, category.id, category.color)
            added.append(category.name)
        remap[category.id] = table.by_name(category.name).id
    return table, remap, added


def default_workers(num_images: int, num_parts: int) -> int:
    """Worker processes for a load: 1 (this process) for small runs, else one per CPU core,
    at most one per part."""
    if num_images < MIN_IMAGES_FOR_WORKERS or num_parts < 2:
        return 1
    return max(1, min(os.cpu_count() or 1, num_parts))


def _database_uri() -> str:
    """The MongoDB URI of FiftyOne's database, for worker processes' own connections."""
    if fo.config.database_uri:
        return fo.config.database_uri
    import fiftyone.core.odm as foo

    host, port = foo.get_db_client().address
    return f"mongodb://{host}:{port}"


def load_autolabel_output(
    output_dir: Union[str, os.PathLike],
    dataset: Union[str, fo.Dataset, None] = None,
    label_field: str = DEFAULT_LABEL_FIELD,
    create: bool = True,
    add_missing: bool = True,
    replace_reviewed: bool = False,
    chunk_size: int = 256,
    progress: Union[bool, ProgressCallback] = True,
    workers: Optional[int] = None,
    mask_storage: str = "database",
    masks_dir: Union[str, os.PathLike, None] = None,
    review_below: Optional[float] = None,
    audit_fraction: Optional[float] = None,
    audit_seed: int = 0,
) -> LoadResult:
    """Load an autolabel output directory into a persistent FiftyOne dataset.

    Args:
        output_dir: the ``--out`` directory of ``python -m pipelines.autolabel``.
        dataset: a dataset, or its name (``fiftyone://NAME`` accepted); None: ``possam-<dir name>``.
        label_field: the Detections field; the other fields derive from it (see :mod:`.dataset`).
        create: create the named dataset when it does not exist (else DatasetNotFoundError).
        add_missing: add samples for images of the run that the dataset does not have.
        replace_reviewed: also overwrite samples marked reviewed (default: keep the review).
        chunk_size: images per database round trip.
        progress: show a tqdm bar (bool), or a callback ``(fraction, message)``.
        workers: processes writing parts in parallel (None: :func:`default_workers`; 1: this process).
        mask_storage: "database" (masks inside the samples) or "files" (PNG files + ``mask_path``).
        masks_dir: with "files", where the PNGs go (default:
            ``<output_dir>/fiftyone_masks/<dataset>/<label_field>``); it must outlive the dataset.
        review_below: load only images with a segment scored below this confidence (plus the
            audit sample, if any); see :class:`.bulk_load.LoadSelection`.
        audit_fraction: load (also) this random fraction of the images; ``audit_seed`` seeds it.
    Returns:
        A :class:`LoadResult` with the counts; ``part_errors`` names the parts that could not be read.
    Raises:
        AutolabelOutputError: ``output_dir`` is not an autolabel output (message names file and reason).
        DatasetNotFoundError: ``create=False`` and no dataset has that name.
        ValueError: a bad option (mask_storage, thresholds out of [0, 1], workers < 1).
    """
    if mask_storage not in MASK_STORAGES:
        raise ValueError(f"mask_storage must be one of {MASK_STORAGES}, got {mask_storage!r}")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    selection = LoadSelection(review_below, audit_fraction, int(audit_seed))
    output = AutolabelOutput.open(output_dir)  # validate before touching any dataset
    ds = _resolve_dataset(dataset, output, create)
    if not ds.persistent:
        ds.persistent = True
    if ds.media_type is None:
        ds.media_type = "image"  # add_samples would set it; the bulk inserts do not
    fields = ensure_review_fields(ds, label_field)
    categories, remap, new_classes = _merge_categories(ds, label_field, output.categories)
    set_categories(ds, label_field, categories)
    if mask_storage == "files":
        masks_dir = _masks_directory(masks_dir, output, ds, label_field)

    parts = output.parts()
    num_images, num_segment_rows = output.count_rows()
    n_workers = int(workers) if workers is not None else default_workers(num_images, len(parts))
    n_workers = max(1, min(n_workers, len(parts)))
    result = LoadResult(ds.name, label_field, str(output.root), output.run_id, num_images=num_images,
                        workers=n_workers, mask_storage=mask_storage, masks_dir=str(masks_dir) if mask_storage == "files" else None)
    template = PartJob(
        images_path="", segments_path="", part="", label_field=fields.labels,
        db_uri=_database_uri() if n_workers > 1 else "", db_name=fo.config.database_name,
        collection=ds._sample_collection_name, dataset_id=str(ds._doc.id),
        remap=dict(remap), names={c.id: c.name for c in categories}, run_id=output.run_id,
        mask_storage=mask_storage, masks_dir=str(masks_dir) if mask_storage == "files" else None,
        selection=selection, add_missing=add_missing, replace_reviewed=replace_reviewed, chunk_size=int(chunk_size),
    )
    jobs = [replace(template, images_path=str(paths[0]), segments_path=str(paths[1]), part=part)
            for part, paths in ((part, output.part_paths(part)) for part in parts)]
    part_rows = {job.part: n for job, n in zip(jobs, _part_image_counts(output, parts))}

    _write_parts(ds, jobs, n_workers, part_rows, result, progress, f"load {output.root.name} -> {ds.name}.{label_field}")
    create_indexes(ds, label_field)
    prepare_annotation(ds, label_field)  # Annotate-tab label schema, review colours
    review_snapshot(ds, label_field)  # stored: the App's first panel refresh reads only what changed since
    record_run(
        ds,
        label_field,
        {
            "output_dir": str(output.root),
            "run_id": output.run_id,
            "loaded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "num_images": num_images,
            "num_segments": num_segment_rows,
            "mask_storage": mask_storage,
            "masks_dir": result.masks_dir,
            "selection": asdict(selection) if selection.active else None,
        },
    )
    result.new_classes = new_classes
    if result.part_errors:
        logger.error("%d part(s) of %s could not be loaded: %s", len(result.part_errors), output.root, "; ".join(result.part_errors[:5]))
    logger.info("loaded %s into %s.%s: %s", output.root, ds.name, label_field, result.to_dict())
    return result


def _masks_directory(
    masks_dir: Union[str, os.PathLike, None], output: AutolabelOutput, ds: fo.Dataset, label_field: str
) -> Path:
    """Where "files" mask storage writes the PNGs (created): ``masks_dir``, or by default
    ``<output_dir>/fiftyone_masks/<dataset>/<label_field>``; absolute."""
    masks_dir = Path(masks_dir) if masks_dir is not None else output.root / "fiftyone_masks" / ds.name / label_field
    masks_dir = Path(os.path.abspath(masks_dir))
    masks_dir.mkdir(parents=True, exist_ok=True)
    return masks_dir


def _write_parts(
    ds: fo.Dataset,
    jobs: list[PartJob],
    n_workers: int,
    part_rows: dict[str, int],
    result: LoadResult,
    progress: Union[bool, ProgressCallback],
    desc: str,
) -> None:
    """Write every part (in this process, or in ``n_workers`` processes), adding each part's counts
    to ``result`` and reporting progress in images; the dataset is reloaded afterwards."""
    num_images = result.num_images
    callback = progress if callable(progress) else None
    bar = tqdm(total=num_images, desc=desc, unit="img", disable=(progress is not True))
    done = 0

    def finished(stats: PartStats) -> None:
        nonlocal done
        result.add(stats)
        done += part_rows[stats.part]
        bar.update(part_rows[stats.part])
        if callback is not None:
            callback(done / max(num_images, 1), f"loaded {done}/{num_images} images")

    try:
        if n_workers == 1:
            collection = ds._sample_collection
            for job in jobs:
                finished(write_part(job, collection))
        else:
            _run_in_workers(jobs, n_workers, finished)
    finally:
        bar.close()
        ds.reload()  # samples in memory see what the workers wrote


def _part_image_counts(output: AutolabelOutput, parts: list[str]) -> list[int]:
    import pyarrow.parquet as pq

    return [pq.ParquetFile(output.part_paths(part)[0]).metadata.num_rows for part in parts]


def _run_in_workers(jobs: list[PartJob], n_workers: int, finished: Callable[[PartStats], None]) -> None:
    """Write the parts in ``n_workers`` fresh processes (spawned: no inherited database client),
    at most two parts per worker queued at a time."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
        pending: set[concurrent.futures.Future] = set()
        queue = iter(jobs)
        for job in queue:
            pending.add(pool.submit(write_part, job))
            if len(pending) >= 2 * n_workers:
                break
        while pending:
            completed, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in completed:
                finished(future.result())
                job = next(queue, None)
                if job is not None:
                    pending.add(pool.submit(write_part, job))
