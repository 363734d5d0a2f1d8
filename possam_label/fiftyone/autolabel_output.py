"""Read an autolabel output directory (``python -m pipelines.autolabel --out DIR``) with pyarrow only.

This module does not import FiftyOne: the command-line export from a DIR uses it directly, and the
FiftyOne loader builds on it. The layout is the one written by :mod:`possam_label.io.output_store`::

    DIR/run.json                 provenance, vocabulary, counts
    DIR/images/part-P.parquet    one row per input image; a part is committed iff this file exists
    DIR/segments/part-P.parquet  one row per segment of the images of part P (COCO RLE masks)
    DIR/panoptic/<image_id>.png  COCO-panoptic id PNGs, DIR/panoptic.json

Reading goes one committed part at a time, so memory is bounded by the largest part (the unit the
producer itself held in memory), never by the size of the run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow.parquet as pq

from ..io.output_store import OutputStore
from ..io.rle import decode_rle_crop, first_overlap
from ..io.tables import SEGMENT_COLUMNS
from ..types import PanopticPrediction, SegmentInfo
from ..vocab import Vocabulary

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image_id", "file_path", "width", "height", "status", "error", "num_segments")


class AutolabelOutputError(ValueError):
    """A directory that is not a (readable) autolabel output; the message names the file and reason."""


# ------------------------------------------------------------------------------------ categories
def label_field_classes(entries: Sequence[Mapping[str, Any]], where: str) -> Vocabulary:
    """The class table of a label field from COCO-panoptic ``categories`` (id, name, isthing,
    optional color; missing colours from :func:`~possam_label.vocab.generated_colors`).

    Raises AutolabelOutputError naming ``where`` for a bad entry, and for category id 0 (void in
    semantic masks and panoptic PNGs).
    """
    try:
        classes = Vocabulary.from_coco_categories(list(entries))
    except (TypeError, ValueError) as err:
        raise AutolabelOutputError(f"{where}: bad categories: {err}") from None
    return check_no_void_class(classes, where)


def check_no_void_class(classes: Vocabulary, where: str) -> Vocabulary:
    """``classes`` itself after checking that no class has category id 0 (void)."""
    if 0 in classes.category_ids:
        raise AutolabelOutputError(
            f"{where}: class {classes.by_id(0).name!r} has category id 0, which is void in semantic masks and panoptic PNGs"
        )
    return classes


def _classes_from_run_vocabulary(vocab: Mapping[str, Any], where: str) -> Vocabulary:
    """From run.json's ``{"names", "isthing", "category_ids"?, "colors"?}`` lists."""
    try:
        names = list(vocab["names"])
        isthing = list(vocab["isthing"])
        ids = list(vocab.get("category_ids") or range(1, len(names) + 1))
        colors = list(vocab.get("colors") or [None] * len(names))
    except (KeyError, TypeError) as err:
        raise AutolabelOutputError(f"{where}: vocabulary needs 'names' and 'isthing' lists ({err})") from None
    if not (len(names) == len(isthing) == len(ids) == len(colors)):
        raise AutolabelOutputError(f"{where}: vocabulary lists have different lengths")
    entries = [{"id": i, "name": n, "isthing": t, "color": c} for n, t, i, c in zip(names, isthing, ids, colors)]
    return label_field_classes(entries, where)


# ---------------------------------------------------------------------------------- records
@dataclass
class ImageRecord:
    """One row of ``images/*.parquet``."""

    image_id: int
    file_path: str
    width: Optional[int]
    height: Optional[int]
    status: str
    error: Optional[str]
    num_segments: int


@dataclass
class ImageLabels:
    """An image and its panoptic labels as decoded from the RLEs (None for error images)."""

    record: ImageRecord
    prediction: Optional[PanopticPrediction]
    run_id: Optional[str] = None


def decode_segment_rows(
    rows: Sequence[Mapping[str, Any]], height: int, width: int, where: str
) -> list[tuple[Mapping[str, Any], tuple[int, int, int, int], Optional[np.ndarray]]]:
    """Check one image's segment rows and decode each RLE once, cropped to its box.

    Args:
        rows: segment rows (dicts with the :data:`SEGMENT_COLUMNS` keys) of one image.
        height, width: the image size (every RLE must have this size).
        where: file/image description for error messages.
    Returns:
        ``(row, (x, y, w, h), crop)`` per row in segment-id order: the tight pixel box and the
        (h, w) bool mask inside it (None for a segment without pixels).
    Raises:
        AutolabelOutputError: a segment id not positive or duplicated, an RLE of another size,
            overlapping masks.
    """
    ordered = sorted(rows, key=lambda r: int(r["segment_id"]))
    seen: set[int] = set()
    for row in ordered:
        segment_id = int(row["segment_id"])
        if segment_id <= 0 or segment_id in seen:
            raise AutolabelOutputError(f"{where}: segment id {segment_id} is {'not positive' if segment_id <= 0 else 'duplicated'}")
        seen.add(segment_id)
        size = [int(v) for v in row["rle"]["size"]]
        if size != [height, width]:
            raise AutolabelOutputError(f"{where}: segment {segment_id} RLE size {size} differs from the image size [{height}, {width}]")
    overlapping = first_overlap([row["rle"] for row in ordered])
    if overlapping is not None:
        raise AutolabelOutputError(f"{where}: segment {int(ordered[overlapping]['segment_id'])} overlaps another segment (panoptic masks must be disjoint)")
    return [(row, *decode_rle_crop(row["rle"])) for row in ordered]


def segments_to_prediction(rows: Sequence[Mapping[str, Any]], height: int, width: int, where: str) -> PanopticPrediction:
    """Paint the RLE masks of one image's segment rows into an (H, W) int32 id map.

    Checks and errors as :func:`decode_segment_rows`.
    """
    panoptic_map = np.zeros((height, width), dtype=np.int32)
    segments: list[SegmentInfo] = []
    for row, (x, y, w, h), crop in decode_segment_rows(rows, height, width, where):
        segment_id = int(row["segment_id"])
        if crop is not None:
            panoptic_map[y : y + h, x : x + w][crop] = segment_id
        segments.append(
            SegmentInfo(
                id=segment_id,
                category_id=int(row["category_id"]),
                category=str(row["category"]),
                isthing=bool(row["isthing"]),
                score=float(row["score"]),
                mask_quality=float(row["mask_quality"]),
                in_vocab_prob=float(row["in_vocab_prob"]),
                out_vocab_prob=float(row["out_vocab_prob"]),
                area=int(row["area"]),
                bbox=[float(v) for v in row["bbox"]],
            )
        )
    return PanopticPrediction(panoptic_map=panoptic_map, segments=segments)


def _check_columns(path: Path, required: Sequence[str]) -> None:
    try:
        names = set(pq.read_schema(path).names)
    except Exception as err:  # pyarrow raises several types for non-Parquet bytes
        raise AutolabelOutputError(f"{path}: not a readable Parquet file ({err})") from None
    missing = [c for c in required if c not in names]
    if missing:
        raise AutolabelOutputError(f"{path}: missing column(s) {', '.join(missing)} (not an autolabel {path.parent.name} table)")


class AutolabelOutput:
    """A validated autolabel output directory.

    Use :meth:`open`; it raises :class:`AutolabelOutputError` when the directory is not one.
    """

    def __init__(self, root: Path, run_info: dict[str, Any], categories: Vocabulary) -> None:
        self.root = root
        self.run_info = run_info
        self.categories = categories
        self._store = OutputStore(root)

    # ---------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: Union[str, os.PathLike]) -> "AutolabelOutput":
        root = Path(os.path.abspath(os.fspath(path)))
        expected = "expected run.json, images/part-*.parquet and segments/part-*.parquet from python -m pipelines.autolabel"
        if not root.exists():
            raise AutolabelOutputError(f"{root}: no such directory")
        if not root.is_dir():
            raise AutolabelOutputError(f"{root}: not a directory ({expected})")
        run_json = root / "run.json"
        if not run_json.is_file():
            raise AutolabelOutputError(f"{root}: not an autolabel output: run.json is missing ({expected})")
        try:
            run_info = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise AutolabelOutputError(f"{run_json}: not valid JSON ({err})") from None
        if not isinstance(run_info, dict):
            raise AutolabelOutputError(f"{run_json}: expected a JSON object")
        for sub in ("images", "segments"):
            if not (root / sub).is_dir():
                raise AutolabelOutputError(f"{root}: not an autolabel output: {sub}/ is missing ({expected})")
        categories = cls._read_categories(root, run_info)
        out = cls(root, run_info, categories)
        parts = out.parts()
        if not parts:
            raise AutolabelOutputError(f"{root}: no committed images/part-*.parquet (the run wrote no results yet)")
        for part in parts:
            _check_columns(out._store.images_part_path(part), IMAGE_COLUMNS)
            seg_path = out._store.segments_part_path(part)
            if not seg_path.is_file():
                raise AutolabelOutputError(f"{seg_path}: missing although images part {part} is committed")
            _check_columns(seg_path, SEGMENT_COLUMNS)
        return out

    @staticmethod
    def _read_categories(root: Path, run_info: Mapping[str, Any]) -> Vocabulary:
        vocab = run_info.get("vocabulary")
        if isinstance(vocab, Mapping) and "names" in vocab:
            return _classes_from_run_vocabulary(vocab, f"{root / 'run.json'}: vocabulary")
        if isinstance(vocab, Mapping) and "classes" in vocab:  # Vocabulary.to_dict() form
            return label_field_classes(vocab["classes"], f"{root / 'run.json'}: vocabulary")
        panoptic_json = root / "panoptic.json"
        if panoptic_json.is_file():
            try:
                cats = json.loads(panoptic_json.read_text(encoding="utf-8"))["categories"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise AutolabelOutputError(f"{panoptic_json}: no readable 'categories' ({err})") from None
            return label_field_classes(cats, f"{panoptic_json}: categories")
        raise AutolabelOutputError(f"{root}: neither run.json 'vocabulary' nor panoptic.json 'categories' names the classes")

    # ---------------------------------------------------------------------------- reading
    @property
    def run_id(self) -> Optional[str]:
        value = self.run_info.get("run_id")
        return str(value) if value is not None else None

    def parts(self) -> list[str]:
        return self._store.committed_parts()

    def count_rows(self) -> tuple[int, int]:
        """(number of image rows, number of segment rows), from the Parquet footers."""
        images = sum(pq.ParquetFile(self._store.images_part_path(p)).metadata.num_rows for p in self.parts())
        segments = sum(pq.ParquetFile(self._store.segments_part_path(p)).metadata.num_rows for p in self.parts())
        return images, segments

    def iter_records(self) -> Iterator[ImageRecord]:
        """Every image row, one part at a time (no masks decoded)."""
        for part in self.parts():
            table = pq.read_table(self._store.images_part_path(part), columns=list(IMAGE_COLUMNS))
            for row in table.to_pylist():
                yield _record(row)

    def part_paths(self, part: str) -> tuple[Path, Path]:
        """(images/part-P.parquet, segments/part-P.parquet) of a committed part."""
        return self._store.images_part_path(part), self._store.segments_part_path(part)

    def iter_images(self) -> Iterator[ImageLabels]:
        """Every image with its decoded panoptic labels, one part in memory at a time.

        Error images come with ``prediction=None``. Raises AutolabelOutputError for segments whose
        image has no committed row, or that disagree with it.
        """
        for part in self.parts():
            images_path, segments_path = self.part_paths(part)
            for record, rows in iter_part_rows(images_path, segments_path):
                if record.status != "ok":
                    yield ImageLabels(record, None)
                    continue
                where = f"{segments_path} (image {record.image_id}, {record.file_path})"
                run_ids = {r["run_id"] for r in rows}
                prediction = segments_to_prediction(rows, record.height, record.width, where)  # type: ignore[arg-type]
                yield ImageLabels(record, prediction, run_ids.pop() if len(run_ids) == 1 else self.run_id)


def _column_rows(table: Any) -> list[dict[str, Any]]:
    """Rows of an Arrow table as dicts, converted a column at a time (faster than ``to_pylist``)."""
    names = table.column_names
    columns = [table.column(name).to_pylist() for name in names]
    return [dict(zip(names, values)) for values in zip(*columns)]


def iter_part_rows(images_path: Path, segments_path: Path) -> Iterator[tuple[ImageRecord, list[dict[str, Any]]]]:
    """The image rows of one committed part, each with its segment rows (RLEs not decoded).

    Memory holds this one part (the unit the producer held). The rows are checked against each
    other: segments must belong to an image row of the part, error images have none, an ok image
    has a size and exactly ``num_segments`` rows. Raises AutolabelOutputError naming the file.
    """
    try:
        records = [_record(r) for r in _column_rows(pq.read_table(images_path, columns=list(IMAGE_COLUMNS)))]
        segments = pq.read_table(segments_path, columns=list(SEGMENT_COLUMNS))
    except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError) for bad bytes
        raise AutolabelOutputError(f"{images_path.parent.parent}: part {images_path.stem} is not readable ({err})") from None
    rows_by_image: dict[int, list[dict[str, Any]]] = {}
    for row in _column_rows(segments):
        rows_by_image.setdefault(int(row["image_id"]), []).append(row)
    del segments
    known = {r.image_id for r in records}
    orphans = sorted(set(rows_by_image) - known)
    if orphans:
        raise AutolabelOutputError(f"{segments_path}: segments of image id(s) {orphans[:5]} that have no row in {images_path}")
    for record in records:
        rows = rows_by_image.pop(record.image_id, [])
        where = f"{segments_path} (image {record.image_id}, {record.file_path})"
        if record.status != "ok":
            if rows:
                raise AutolabelOutputError(f"{where}: segments for an image with status {record.status!r}")
        elif record.width is None or record.height is None:
            raise AutolabelOutputError(f"{images_path}: image {record.image_id} has status ok but no width/height")
        elif len(rows) != record.num_segments:
            raise AutolabelOutputError(f"{where}: {len(rows)} segment rows but num_segments={record.num_segments} in {images_path}")
        yield record, rows


def _record(row: Mapping[str, Any]) -> ImageRecord:
    return ImageRecord(
        image_id=int(row["image_id"]),
        file_path=os.path.normpath(str(row["file_path"])),
        width=None if row["width"] is None else int(row["width"]),
        height=None if row["height"] is None else int(row["height"]),
        status=str(row["status"]),
        error=row["error"],
        num_segments=int(row["num_segments"]),
    )
