"""Arrow schemas of the auto-labeling tables (images, segments, predicted segments), rows to tables,
Arrow IPC bytes, the Parquet writer and the stable image id.

The directory these tables are committed to is :mod:`possam_label.io.output_store`; docs/outputs.md
lists every column.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

from ..types import SegmentInfo, segment_fields
from .atomic_files import atomic_replace

SCHEMA_VERSION = "1"

RLE_TYPE = pa.struct([pa.field("size", pa.list_(pa.int32())), pa.field("counts", pa.string())])

# Arrow type of each storage type a SegmentInfo field declares (types.STORAGE_TYPES).
ARROW_TYPES: dict[str, pa.DataType] = {
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "bbox": pa.list_(pa.float32(), 4),
}

# The SegmentInfo fields as table columns, in declaration order: (attribute, column) pairs.
SEGMENT_INFO_COLUMNS: tuple[tuple[str, str], ...] = tuple((attr, column) for attr, column, _ in segment_fields())

SEGMENTS_SCHEMA = pa.schema(
    [pa.field("image_id", pa.int64(), nullable=False), pa.field("file_path", pa.string(), nullable=False)]
    + [pa.field(column, ARROW_TYPES[storage], nullable=False) for _, column, storage in segment_fields()]
    + [pa.field("rle", RLE_TYPE, nullable=False), pa.field("run_id", pa.string(), nullable=False)],
    metadata={b"possam_label.table": b"segments", b"possam_label.schema_version": SCHEMA_VERSION.encode()},
)
SEGMENT_COLUMNS: tuple[str, ...] = tuple(SEGMENTS_SCHEMA.names)

# Predicted segments in flight between the model and the encode stage: the SegmentInfo columns,
# floats kept in float64 (the model's values, exactly) until the segments table stores float32.
PREDICTED_SEGMENTS_SCHEMA = pa.schema(
    [pa.field(column, pa.float64() if storage == "float32" else ARROW_TYPES[storage], nullable=False) for _, column, storage in segment_fields()]
)


def predicted_segments_table(segments: Sequence[SegmentInfo]) -> pa.Table:
    """:class:`SegmentInfo` objects -> a :data:`PREDICTED_SEGMENTS_SCHEMA` table (one row per segment)."""
    columns = {column: [getattr(s, attr) for s in segments] for attr, column in SEGMENT_INFO_COLUMNS}
    return pa.Table.from_pydict(columns, schema=PREDICTED_SEGMENTS_SCHEMA)


def table_to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes (how tables travel in a Ray numpy batch column)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_ipc(data: bytes) -> pa.Table:
    """Inverse of :func:`table_to_ipc`."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("file_path", pa.string(), nullable=False),
        pa.field("width", pa.int32()),  # null when the image could not be read
        pa.field("height", pa.int32()),
        pa.field("status", pa.string(), nullable=False),  # "ok" | "error"
        pa.field("error", pa.string()),  # null when ok; "<reason>: <detail>" otherwise
        pa.field("num_segments", pa.int32(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
        pa.field("panoptic_file", pa.string()),  # "panoptic/<image_id>.png" relative to DIR; null on error
        pa.field("run_id", pa.string(), nullable=False),
    ],
    metadata={b"possam_label.table": b"images", b"possam_label.schema_version": SCHEMA_VERSION.encode()},
)

STATUS_OK = "ok"
STATUS_ERROR = "error"

def image_id_for_path(path: Union[str, Path]) -> int:
    """Stable 60-bit integer id of an image: the first 15 hex digits of sha1(absolute path).

    The absolute, normalised path is hashed (symlinks are not resolved), so the id is the same
    across runs and machines that see the file under the same path. 60 bits keep the value a
    positive int64 (Parquet, Arrow) that detectron2's ``int(image_id)`` and JSON accept.
    """
    absolute = os.path.normpath(os.path.abspath(os.fspath(path)))
    return int(hashlib.sha1(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:15], 16)


def write_parquet(table: pa.Table, path: Union[str, Path]) -> None:
    """Write a table as one zstd Parquet file in place (the settings of every table file here)."""
    pq.write_table(table, path, compression="zstd", use_dictionary=["category", "file_path", "run_id", "status"])


def write_parquet_atomic(table: pa.Table, path: Union[str, Path], durable: bool = True) -> None:
    """Write a table as one zstd Parquet file, atomically (:func:`~.atomic_files.atomic_replace`)."""
    with atomic_replace(path, durable=durable) as tmp:
        write_parquet(table, tmp)


def segments_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with the :data:`SEGMENTS_SCHEMA` keys) -> table; missing/extra keys are errors."""
    return _table(rows, SEGMENTS_SCHEMA)


def images_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with the :data:`IMAGES_SCHEMA` keys) -> table; missing/extra keys are errors."""
    return _table(rows, IMAGES_SCHEMA)


def _table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    names = schema.names
    for i, row in enumerate(rows):
        if set(row) != set(names):
            missing = sorted(set(names) - set(row))
            extra = sorted(set(row) - set(names))
            raise ValueError(f"row {i} does not fit the {schema.metadata[b'possam_label.table'].decode()} schema: missing {missing}, extra {extra}")
    columns = {name: [row[name] for row in rows] for name in names}
    return pa.Table.from_pydict(columns, schema=schema)
