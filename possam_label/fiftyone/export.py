"""Export reviewed, filtered labels as training sets: COCO panoptic, COCO instances, semantic PNGs.

Two sources feed the same writer:

* :func:`export_from_output_dir`: an autolabel output directory (pyarrow only, no FiftyOne);
* :func:`export_from_dataset`: a FiftyOne dataset or view after review (FiftyOne imported lazily).

Output directory (every path written is checked to stay inside it)::

    OUT/panoptic.json + OUT/panoptic/<image_id>.png   COCO panoptic (panopticapi format)
    OUT/instances.json                               COCO instances, compressed-RLE masks
    OUT/semantic/<image_id>.png + semantic.json      category-id PNGs (0 = void), class table
    OUT/export.json                                  options, source and counts of the export

Rules (the same for both sources): rejected labels are dropped; ``include_classes`` /
``exclude_classes`` filter by class name; ``min_score`` drops *unreviewed* labels scored below
it (labels a reviewer accepted or relabeled are kept whatever their score); with ``reviewed_only``
only samples marked reviewed are exported. Dropped segments leave void pixels. Stuff segments of
the same class in one image are merged into one segment, as COCO panoptic requires. Images the
autolabel run could not read, and samples without labels, are skipped.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..io.coco_panoptic_validate import validate_coco_panoptic
from ..io.coco_panoptic_writer import JsonArrayBuffer, write_coco_json
from ..io.panoptic_png import id2rgb
from ..io.rle import encode_panoptic_map
from ..io.tables import image_id_for_path
from ..panoptic import areas_and_boxes, filter_by_score, restrict
from ..types import PanopticPrediction, SegmentInfo
from ..vocab import Vocabulary, VocabularyClass
from .autolabel_output import AutolabelOutput

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("panoptic", "instances", "semantic")
_OUTPUT_ENTRIES = ("panoptic", "panoptic.json", "instances.json", "semantic", "semantic.json", "export.json")
ProgressCallback = Callable[[float, str], None]


@dataclass
class ExportOptions:
    """What to export and which labels to keep.

    Attributes:
        formats: any of "panoptic", "instances", "semantic".
        min_score: drop unreviewed labels with confidence below this (None: keep all).
        reviewed_only: only samples marked reviewed (dataset source only).
        include_classes: keep only these classes (names; None: all).
        exclude_classes: drop these classes.
        instances_include_stuff: also write stuff segments to instances.json (default: things only).
        overwrite: replace a previous export in the output directory.
    """

    formats: Sequence[str] = EXPORT_FORMATS
    min_score: Optional[float] = None
    reviewed_only: bool = False
    include_classes: Optional[Sequence[str]] = None
    exclude_classes: Optional[Sequence[str]] = None
    instances_include_stuff: bool = False
    overwrite: bool = False

    def validate(self) -> None:
        formats = list(self.formats)
        bad = [f for f in formats if f not in EXPORT_FORMATS]
        if bad or not formats:
            raise ValueError(f"export formats must be a non-empty subset of {list(EXPORT_FORMATS)}, got {formats}")
        if self.min_score is not None and not 0.0 <= float(self.min_score) <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")

    def selected_categories(self, categories: Vocabulary) -> list[VocabularyClass]:
        """The classes kept by include/exclude; unknown names are an error that lists the classes."""
        for names in (self.include_classes, self.exclude_classes):
            for name in names or ():
                if name not in categories:
                    known = ", ".join(categories.names[:30])
                    raise ValueError(f"unknown class {name!r} in the class filter; classes: {known}{' ...' if len(categories) > 30 else ''}")
        include = {categories.by_name(n).id for n in self.include_classes} if self.include_classes else None
        exclude = {categories.by_name(n).id for n in self.exclude_classes or ()}
        return [c for c in categories if (include is None or c.id in include) and c.id not in exclude]


@dataclass
class ExportSummary:
    """What an export wrote."""

    out_dir: str
    formats: list[str]
    num_images: int = 0
    num_segments: int = 0
    num_instances: int = 0
    num_skipped_images: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------- helpers
def safe_output_path(root: Path, *parts: str) -> Path:
    """``root/parts`` after checking that it resolves inside ``root`` (no ``..``, no absolute parts)."""
    root_resolved = root.resolve()
    path = root_resolved.joinpath(*parts).resolve()
    if path != root_resolved and root_resolved not in path.parents:
        raise ValueError(f"refusing to write {path}: outside the output directory {root_resolved}")
    return path


def merge_stuff_segments(prediction: PanopticPrediction) -> PanopticPrediction:
    """One segment per stuff class (COCO panoptic): same-class stuff segments join the lowest id.

    The merged segment's score, mask quality and probabilities are those of its highest-scored part.
    """
    by_category: dict[int, list[SegmentInfo]] = {}
    for seg in prediction.segments:
        if not seg.isthing:
            by_category.setdefault(seg.category_id, []).append(seg)
    groups = [sorted(g, key=lambda s: s.id) for g in by_category.values() if len(g) > 1]
    if not groups:
        return prediction
    lut = np.arange(int(prediction.panoptic_map.max(initial=0)) + 1, dtype=np.int32)
    absorbed: dict[int, SegmentInfo] = {}
    for group in groups:
        keeper = group[0]
        best = max(group, key=lambda s: s.score)
        for seg in group[1:]:
            lut[seg.id] = keeper.id
            absorbed[seg.id] = keeper
        absorbed[keeper.id] = SegmentInfo(**{**best.to_dict(), "id": keeper.id, "area": 0, "bbox": []})
    panoptic_map = lut[prediction.panoptic_map]
    kept = [s for s in prediction.segments if not (s.id in absorbed and absorbed[s.id].id != s.id)]
    areas, boxes = areas_and_boxes(panoptic_map, [s.id for s in kept])
    segments = [
        SegmentInfo(**{**absorbed.get(seg.id, seg).to_dict(), "area": area, "bbox": box}) for seg, area, box in zip(kept, areas, boxes)
    ]
    return PanopticPrediction(panoptic_map=panoptic_map.astype(np.int32), segments=segments)


class TrainingSetWriter:
    """Writes the export files one image at a time; :meth:`close` assembles the JSON files.

    Args:
        out_dir: output directory (created; must be empty unless ``options.overwrite``).
        categories: the classes of the source (those not selected by the options are dropped).
        options: see :class:`ExportOptions`.
    """

    def __init__(self, out_dir: Union[str, os.PathLike], categories: Vocabulary, options: ExportOptions) -> None:
        options.validate()
        self.options = options
        self.root = Path(os.path.abspath(os.fspath(out_dir)))
        self._prepare_dir()
        self.formats = [f for f in EXPORT_FORMATS if f in options.formats]
        self.categories = options.selected_categories(categories)
        self.category_ids = {c.id for c in self.categories}
        self.semantic_dtype = np.uint16 if max((c.id for c in self.categories), default=0) >= 256 else np.uint8
        self.summary = ExportSummary(out_dir=str(self.root), formats=self.formats)
        self._images = JsonArrayBuffer(self.root, "images")
        self._panoptic = JsonArrayBuffer(self.root, "panoptic") if "panoptic" in self.formats else None
        self._instances = JsonArrayBuffer(self.root, "instances") if "instances" in self.formats else None
        self._next_annotation_id = 1
        for sub in ("panoptic", "semantic"):
            if sub in self.formats:
                safe_output_path(self.root, sub).mkdir(exist_ok=True)

    def _prepare_dir(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"export output {self.root} exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        entries = sorted(os.listdir(self.root))
        if not entries:
            return
        if not self.options.overwrite:
            raise ValueError(f"export output directory {self.root} is not empty ({', '.join(entries[:5])}); choose another or pass overwrite")
        for entry in entries:
            if entry in _OUTPUT_ENTRIES or entry.startswith(".tmp-"):
                target = safe_output_path(self.root, entry)
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()

    def keep_segment(self, category_id: int) -> bool:
        return category_id in self.category_ids

    def add(self, image_id: int, file_path: str, prediction: PanopticPrediction) -> None:
        """Write one image's labels (already filtered by confidence and review status)."""
        image_id = int(image_id)
        prediction = restrict(prediction, {s.id for s in prediction.segments if self.keep_segment(s.category_id)})
        prediction = merge_stuff_segments(prediction)
        height, width = prediction.height, prediction.width
        self._images.append({"id": image_id, "file_name": file_path, "width": width, "height": height})
        self.summary.num_images += 1
        self.summary.num_segments += len(prediction.segments)
        for seg in prediction.segments:
            self.summary.per_class[seg.category] = self.summary.per_class.get(seg.category, 0) + 1
        if self._panoptic is not None:
            name = f"{image_id}.png"
            Image.fromarray(id2rgb(prediction.panoptic_map), mode="RGB").save(safe_output_path(self.root, "panoptic", name), format="PNG")
            self._panoptic.append(
                {
                    "image_id": image_id,
                    "file_name": name,
                    "segments_info": [
                        {"id": int(s.id), "category_id": int(s.category_id), "area": int(s.area), "bbox": [int(v) for v in s.bbox], "iscrowd": 0}
                        for s in prediction.segments
                    ],
                }
            )
        if self._instances is not None:
            chosen = [s for s in prediction.segments if s.isthing or self.options.instances_include_stuff]
            rles = encode_panoptic_map(prediction.panoptic_map, [s.id for s in chosen]) if chosen else {}
            for seg in chosen:
                self._instances.append(
                    {
                        "id": self._next_annotation_id,
                        "image_id": image_id,
                        "category_id": int(seg.category_id),
                        "segmentation": rles[seg.id],
                        "area": int(seg.area),
                        "bbox": [float(v) for v in seg.bbox],
                        "iscrowd": 0,
                        "score": float(seg.score),
                    }
                )
                self._next_annotation_id += 1
                self.summary.num_instances += 1
        if "semantic" in self.formats:
            lut = np.zeros(int(prediction.panoptic_map.max(initial=0)) + 1, dtype=np.int64)
            for seg in prediction.segments:
                lut[seg.id] = seg.category_id
            semantic = lut[prediction.panoptic_map].astype(self.semantic_dtype)
            Image.fromarray(semantic).save(safe_output_path(self.root, "semantic", f"{image_id}.png"), format="PNG")

    def _write_coco(self, name: str, annotations: JsonArrayBuffer, categories: list[dict[str, Any]], info: dict[str, Any]) -> None:
        final = safe_output_path(self.root, name)
        write_coco_json(final, self._images, annotations, categories, info=info, durable=False)
        self.summary.files[name.split(".")[0]] = str(final)

    def close(self, source: dict[str, Any]) -> ExportSummary:
        """Assemble the JSON files and the manifest; returns the summary."""
        info = {
            "description": "possam-label training set export",
            "date_created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": source,
        }
        try:
            if self._panoptic is not None:
                self._write_coco("panoptic.json", self._panoptic, [c.to_coco() for c in self.categories], info)
                self.summary.files["panoptic_pngs"] = str(safe_output_path(self.root, "panoptic"))
            if self._instances is not None:
                cats = [c.to_coco() for c in self.categories if c.isthing or self.options.instances_include_stuff]
                self._write_coco("instances.json", self._instances, cats, info)
            if "semantic" in self.formats:
                path = safe_output_path(self.root, "semantic.json")
                path.write_text(json.dumps({"void": 0, "categories": [c.to_coco() for c in self.categories]}, indent=1) + "\n")
                self.summary.files["semantic"] = str(safe_output_path(self.root, "semantic"))
                self.summary.files["semantic_categories"] = str(path)
        finally:
            for array in (self._images, self._panoptic, self._instances):
                if array is not None:
                    array.discard()
        manifest = {"source": source, "options": asdict(self.options), "summary": self.summary.to_dict(), "created_at": info["date_created"]}
        safe_output_path(self.root, "export.json").write_text(json.dumps(manifest, indent=1, default=list) + "\n")
        self.summary.files["manifest"] = str(safe_output_path(self.root, "export.json"))
        logger.info("exported %d images, %d segments to %s", self.summary.num_images, self.summary.num_segments, self.root)
        return self.summary

    def abort(self) -> None:
        for array in (self._images, self._panoptic, self._instances):
            if array is not None:
                array.discard()


def _progress_bar(total: int, desc: str, progress: Union[bool, ProgressCallback]) -> tuple[tqdm, Optional[ProgressCallback]]:
    return tqdm(total=total, desc=desc, unit="img", disable=progress is not True), (progress if callable(progress) else None)


# ------------------------------------------------------------------------- source: output dir
def export_from_output_dir(
    output_dir: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    options: Optional[ExportOptions] = None,
    progress: Union[bool, ProgressCallback] = True,
) -> ExportSummary:
    """Export an autolabel output directory (no FiftyOne needed). ``reviewed_only`` is an error
    here: an output directory has no reviews (load it into FiftyOne to review)."""
    options = options or ExportOptions()
    if options.reviewed_only:
        raise ValueError("reviewed_only needs a FiftyOne dataset: an autolabel output directory holds no reviews")
    source = AutolabelOutput.open(output_dir)
    writer = TrainingSetWriter(out_dir, source.categories, options)
    num_images, _ = source.count_rows()
    bar, callback = _progress_bar(num_images, f"export {source.root.name}", progress)
    done = 0
    try:
        for item in source.iter_images():
            done += 1
            bar.update(1)
            if callback is not None:
                callback(done / max(num_images, 1), f"exported {done}/{num_images} images")
            if item.prediction is None:
                writer.summary.num_skipped_images += 1
                continue
            prediction = item.prediction
            prediction = filter_by_score(prediction, options.min_score)
            writer.add(item.record.image_id, item.record.file_path, prediction)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return writer.close({"type": "autolabel_output", "path": str(source.root), "run_id": source.run_id})


# ----------------------------------------------------------------------- source: FiftyOne
def export_from_dataset(
    samples: Any,
    out_dir: Union[str, os.PathLike],
    label_field: str = "possam",
    options: Optional[ExportOptions] = None,
    progress: Union[bool, ProgressCallback] = True,
    sync_edits: bool = True,
) -> ExportSummary:
    """Export a reviewed FiftyOne dataset or view (or a dataset name) with the corrections applied.

    With ``sync_edits`` the edits made in the App's Annotate tab are first recorded as corrections
    (:func:`.editor_sync.sync_editor_edits`), so the export counts them as reviewer-verified.
    """
    from fiftyone import ViewField as F

    from .convert import detections_to_prediction, label_attr
    from .review_record import REJECTED, VERIFIED_STATUSES
    from .dataset import ReviewFields, get_categories, open_dataset
    from .editor_sync import sync_editor_edits

    options = options or ExportOptions()
    if isinstance(samples, str):
        samples = open_dataset(samples)
    dataset = samples._dataset
    fields = ReviewFields(label_field)
    if not samples.has_field(fields.labels):
        raise ValueError(f"dataset {dataset.name!r} has no label field {label_field!r}")
    if sync_edits:
        # Edits made in the App's Annotate tab become logged, reviewer-verified corrections first.
        sync_editor_edits(dataset, label_field)
    categories = get_categories(dataset, label_field)
    writer = TrainingSetWriter(out_dir, categories, options)
    view = samples
    if options.reviewed_only:
        view = view.match(F(fields.reviewed) == True)  # noqa: E712
    labeled = view.exists(fields.labels)
    writer.summary.num_skipped_images += len(view) - len(labeled)  # the run could not label them
    view = labeled
    missing_metadata = view.exists("metadata", False)
    if len(missing_metadata):
        missing_metadata.compute_metadata(progress=False)
    select = [fields.labels, "metadata"] + ([fields.image_id] if samples.has_field(fields.image_id) else [])
    view = view.select_fields(select)
    total = len(view)
    bar, callback = _progress_bar(total, f"export {dataset.name}.{label_field}", progress)
    human = VERIFIED_STATUSES
    done = 0
    try:
        for sample in view.iter_samples():
            done += 1
            bar.update(1)
            if callback is not None:
                callback(done / max(total, 1), f"exported {done}/{total} images")
            detections = sample[fields.labels]
            if detections is None:
                writer.summary.num_skipped_images += 1
                continue
            kept = []
            for det in detections.detections:
                status = label_attr(det, "review_status")
                if status == REJECTED:
                    continue
                if det.label not in categories:
                    raise ValueError(f"sample {sample.id}: label {det.label!r} is not a class of {label_field!r}; relabel it with the review tools")
                if not writer.keep_segment(categories.by_name(det.label).id):
                    continue
                if options.min_score is not None and status not in human and (det.confidence is None or det.confidence < options.min_score):
                    continue
                kept.append((status in human, det.confidence or 0.0, det))
            # Reviewer-verified labels first, then by confidence: they win pixels contested after edits.
            kept.sort(key=lambda t: (not t[0], -t[1]))
            prediction, _ = detections_to_prediction([t[2] for t in kept], sample.metadata.height, sample.metadata.width, categories)
            image_id = sample.get_field(fields.image_id) if sample.has_field(fields.image_id) else None
            if image_id is None:
                image_id = image_id_for_path(sample.filepath)
            writer.add(image_id, sample.filepath, prediction)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    source = {"type": "fiftyone", "dataset": dataset.name, "label_field": label_field, "num_samples_in_view": len(samples)}
    return writer.close(source)


# ------------------------------------------------------------------------------------- checks
def check_coco_panoptic(panoptic_json: Union[str, os.PathLike], png_dir: Union[str, os.PathLike, None] = None) -> dict[str, int]:
    """Check a COCO-panoptic export with the project's validator
    (:func:`~possam_label.io.coco_panoptic_validate.validate_coco_panoptic`), including the
    training-set rule that a stuff class has at most one segment per image.

    Returns:
        ``{"images": n, "segments": m}``.
    Raises:
        ValueError: listing the problems found, each naming the file or image.
    """
    counts = validate_coco_panoptic(panoptic_json, png_dir, one_segment_per_stuff_class=True)
    return {"images": counts["images"], "segments": counts["segments"]}
