"""The result objects that flow from the predictor to the writers and FiftyOne.

:class:`SegmentInfo` is the one declaration of a segment's fields: the Arrow schema of the
``segments`` table (:mod:`possam_label.io.tables`), its column lists and the COCO entries are
derived from it. Each field's metadata names its table column (when it differs from the
attribute) and its storage type, one of :data:`STORAGE_TYPES`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

# Storage types a segment field may declare; io.tables maps each to an Arrow type.
STORAGE_TYPES = ("int32", "int64", "float32", "bool", "string", "bbox")


def _column(storage: str, column: str = "") -> dict[str, Any]:
    return {"storage": storage, "column": column}


@dataclass
class SegmentInfo:
    """One panoptic segment of one image.

    ``id`` is the segment's value in :attr:`PanopticPrediction.panoptic_map` (1-based, unique in
    the image); ``category_id`` is the vocabulary's id for the class (COCO ids for the COCO
    vocabulary); ``score`` is the MASE confidence; ``mask_quality`` the predicted IoU.
    """

    id: int = field(metadata=_column("int32", "segment_id"))
    category_id: int = field(metadata=_column("int32"))
    category: str = field(metadata=_column("string"))
    isthing: bool = field(metadata=_column("bool"))
    score: float = field(metadata=_column("float32"))
    mask_quality: float = field(metadata=_column("float32"))
    in_vocab_prob: float = field(metadata=_column("float32"))
    out_vocab_prob: float = field(metadata=_column("float32"))
    area: int = field(metadata=_column("int64"))
    bbox: list[float] = field(default_factory=list, metadata=_column("bbox"))  # [x, y, w, h] in pixels

    def to_dict(self) -> dict:
        return asdict(self)


def segment_fields() -> list[tuple[str, str, str]]:
    """``(attribute, table column, storage type)`` of every :class:`SegmentInfo` field, in order."""
    return [(f.name, f.metadata["column"] or f.name, f.metadata["storage"]) for f in fields(SegmentInfo)]


@dataclass
class PanopticPrediction:
    """Panoptic result of one image at its original resolution.

    Attributes:
        panoptic_map: (H, W) int32 array; 0 is void, other values are ``SegmentInfo.id``.
        segments: the segments, in id order.
    """

    panoptic_map: np.ndarray
    segments: list[SegmentInfo]

    @property
    def height(self) -> int:
        return int(self.panoptic_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.panoptic_map.shape[1])

    def mask(self, segment_id: int) -> np.ndarray:
        """(H, W) bool mask of one segment."""
        return self.panoptic_map == segment_id
