"""The predictions as loaded, and the fingerprints that show what changed since.

* ``<field>_original`` is the loader's baseline: a JSON-friendly copy of every loaded Detection
  (mask as RLE, same label id), from which :func:`~.corrections.revert_corrections` restores the
  predictions exactly and :func:`original_predictions` reads the model's output;
* ``<field>_synced`` holds a fingerprint (class + box + mask pixels) of every label as last seen by
  possam-label (:func:`record_state`); :mod:`.editor_sync` compares labels with it to find edits
  made in the App's Annotate tab.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np

import fiftyone as fo

from ..io.rle import decode_rle, encode_mask
from .bulk_load import BASELINE_ATTRIBUTES
from .convert import label_attr, set_isthing
from .dataset import DEFAULT_LABEL_FIELD, ReviewFields


def _crop_mask(det: fo.Detection) -> Optional[np.ndarray]:
    if det.mask is None and det.mask_path is None:
        return None
    mask = np.asarray(det.get_mask())
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask > 0


def fingerprint(label: Optional[str], bounding_box: Optional[Sequence[float]], mask: Optional[np.ndarray]) -> str:
    """A short hash of what a reviewer can change on a label: class, box and mask pixels."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(label).encode("utf-8"))
    box = [round(float(v), 6) for v in bounding_box] if bounding_box is not None else []
    digest.update(repr(box).encode("ascii"))
    if mask is not None:
        mask = np.asarray(mask) > 0
        digest.update(repr(mask.shape).encode("ascii"))
        digest.update(np.packbits(mask).tobytes())
    return digest.hexdigest()


def detection_fingerprint(det: fo.Detection) -> str:
    return fingerprint(det.label, det.bounding_box, _crop_mask(det))


def baseline_entry(det: fo.Detection) -> dict[str, Any]:
    """The JSON-friendly copy of a loaded Detection kept in ``<field>_original`` (mask as RLE)."""
    mask = _crop_mask(det)
    return {
        "label_id": det.id,
        "label": det.label,
        "bounding_box": [float(v) for v in det.bounding_box] if det.bounding_box is not None else None,
        "mask": encode_mask(mask) if mask is not None else None,
        "confidence": None if det.confidence is None else float(det.confidence),
        "tags": list(det.tags or []),
        "attributes": {k: label_attr(det, k) for k in BASELINE_ATTRIBUTES if label_attr(det, k) is not None},
    }


def baseline_entries(detections: Optional[fo.Detections]) -> Optional[list[dict[str, Any]]]:
    """Baseline of an image's loaded labels (None for an image without labels)."""
    if detections is None:
        return None
    return [baseline_entry(det) for det in detections.detections]


def detection_from_baseline(entry: Mapping[str, Any]) -> fo.Detection:
    """The Detection exactly as loaded (same id) from its baseline entry."""
    det = fo.Detection(
        label=entry["label"],
        bounding_box=entry["bounding_box"],
        mask=decode_rle(entry["mask"]) if entry.get("mask") else None,
        confidence=entry.get("confidence"),
        tags=list(entry.get("tags") or []),
        **dict(entry.get("attributes") or {}),
    )
    if (entry.get("attributes") or {}).get("isthing") is False:
        set_isthing(det, False)  # the App's mask-only drawing of a stuff label, as the loader wrote it
    det.id = entry["label_id"]
    return det


def baseline_fingerprint(entry: Mapping[str, Any]) -> str:
    mask = decode_rle(entry["mask"]) if entry.get("mask") else None
    return fingerprint(entry["label"], entry["bounding_box"], mask)


def record_state(sample: fo.Sample, fields: ReviewFields) -> None:
    """Remember every current label's fingerprint: what a later editor edit is compared with."""
    detections = sample[fields.labels]
    sample[fields.synced] = [
        {"label_id": det.id, "label": det.label, "hash": detection_fingerprint(det)}
        for det in (detections.detections if detections is not None else [])
    ]


def original_predictions(sample: fo.Sample, label_field: str = DEFAULT_LABEL_FIELD) -> list[dict[str, Any]]:
    """The model's predictions of a sample as loaded, whatever was corrected since:
    ``[{label_id, segment_id, label, category_id, isthing, confidence}]`` sorted by segment id."""
    fields = ReviewFields(label_field)
    baseline = sample[fields.original] if sample.has_field(fields.original) else None
    if baseline is not None:
        return sorted(
            (
                {
                    "label_id": e["label_id"],
                    "segment_id": (e.get("attributes") or {}).get("segment_id"),
                    "label": e["label"],
                    "category_id": (e.get("attributes") or {}).get("category_id"),
                    "isthing": (e.get("attributes") or {}).get("isthing"),
                    "confidence": e.get("confidence"),
                }
                for e in baseline
            ),
            key=lambda d: (d["segment_id"] or 0),
        )
    current = sample[fields.labels]
    deleted = sample[fields.deleted] if sample.has_field(fields.deleted) else None
    out = []
    for det in list(current.detections if current is not None else []) + list(deleted.detections if deleted is not None else []):
        relabeled = label_attr(det, "original_label") is not None
        out.append(
            {
                "label_id": det.id,
                "segment_id": label_attr(det, "segment_id"),
                "label": label_attr(det, "original_label") if relabeled else det.label,
                "category_id": label_attr(det, "original_category_id" if relabeled else "category_id"),
                "isthing": label_attr(det, "original_isthing" if relabeled else "isthing"),
                "confidence": det.confidence,
            }
        )
    return sorted(out, key=lambda d: (d["segment_id"] or 0))
