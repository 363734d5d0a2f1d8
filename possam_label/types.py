"""The result objects that flow from the predictor to the writers and FiftyOne."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class SegmentInfo:
    """One panoptic segment of one image.

    ``id`` is the segment's value in :attr:`PanopticPrediction.panoptic_map` (1-based, unique in
    the image); ``category_id`` is the vocabulary's id for the class (COCO ids for the COCO
    vocabulary); ``score`` is the MASE confidence; ``mask_quality`` the predicted IoU.
    """

    id: int
    category_id: int
    category: str
    isthing: bool
    score: float
    mask_quality: float
    in_vocab_prob: float
    out_vocab_prob: float
    area: int
    bbox: list[float] = field(default_factory=list)  # [x, y, w, h] in pixels

    def to_dict(self) -> dict:
        return asdict(self)


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
