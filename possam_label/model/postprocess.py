"""Mask2Former panoptic post-processing (spec 8.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PanopticSegment:
    """A segment of the panoptic map: its id, the query it came from and its class index."""

    id: int
    query: int
    label: int
    isthing: bool


def panoptic_inference(
    mask_logits: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    isthing: torch.Tensor,
    object_mask_threshold: float,
    overlap_threshold: float,
    min_segment_area: int = 0,
) -> tuple[torch.Tensor, list[PanopticSegment]]:
    """Merge per-query masks into one non-overlapping panoptic map.

    Each pixel goes to the query with the highest ``score * sigmoid(mask)``; a query keeps its
    segment only if enough of its own mask survives (``overlap_threshold``); stuff segments of the
    same class are merged; thing instances stay apart.

    Args:
        mask_logits: (Q, H, W) mask logits of the candidate queries at output resolution.
        scores: (Q,) query scores.
        labels: (Q,) class index per query; queries whose label is void must already be removed.
        isthing: (K,) bool per class.
        object_mask_threshold: queries with score <= this are dropped.
        overlap_threshold: min fraction of a query's own mask that must remain its segment.
        min_segment_area: segments smaller than this (pixels) are dropped to void.
    Returns:
        panoptic map (H, W) int32 (0 = void) and its segments, ids 1..N in creation order.
    """
    height, width = mask_logits.shape[-2:]
    panoptic = torch.zeros((height, width), dtype=torch.int32, device=mask_logits.device)
    segments: list[PanopticSegment] = []
    keep = scores > object_mask_threshold
    query_index = torch.nonzero(keep).flatten()
    if query_index.numel() == 0:
        return panoptic, segments
    probs = mask_logits[query_index].float().sigmoid()
    cur_scores = scores[query_index].float()
    cur_labels = labels[query_index]
    owner = (cur_scores[:, None, None] * probs).argmax(0)
    stuff_segment: dict[int, int] = {}
    for k in range(query_index.numel()):
        label = int(cur_labels[k])
        is_thing = bool(isthing[label])
        own = probs[k] >= 0.5
        original_area = int(own.sum())
        won = owner == k
        area = int(won.sum())
        segment_mask = won & own
        segment_area = int(segment_mask.sum())
        if area == 0 or original_area == 0 or segment_area == 0:
            continue
        if area / original_area < overlap_threshold:
            continue
        if segment_area < min_segment_area:
            continue
        if not is_thing and label in stuff_segment:
            panoptic[segment_mask] = stuff_segment[label]
            continue
        segment_id = len(segments) + 1
        if not is_thing:
            stuff_segment[label] = segment_id
        panoptic[segment_mask] = segment_id
        segments.append(PanopticSegment(segment_id, int(query_index[k]), label, is_thing))
    return panoptic, segments
