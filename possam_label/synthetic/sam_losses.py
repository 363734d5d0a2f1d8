"""Losses of the small SAM's training (see :mod:`.small_sam` for the recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from .sam_prompts import PromptedImage


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss averaged over pixels. logits, targets: (N, C, H, W) -> (N, C)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss. logits, targets: (N, C, H, W) -> (N, C)."""
    prob = logits.sigmoid()
    inter = (prob * targets).sum(dim=(-2, -1))
    return 1 - (2 * inter + 1) / (prob.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1)) + 1)


def mask_iou(pred_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with (targets > 0.5). (N, C, H, W) -> (N, C)."""
    pred = pred_logits > 0
    gt = targets > 0.5
    inter = (pred & gt).sum(dim=(-2, -1)).float()
    union = (pred | gt).sum(dim=(-2, -1)).float()
    return inter / union.clamp(min=1)


@dataclass
class SamLossWeights:
    """Loss weights. ``focal_alpha`` 0.5 (balanced) rather than detection's 0.25: with 0.25 the
    from-scratch model sat for hundreds of steps predicting empty masks. ``segment`` weighs the
    auxiliary segment-discrimination loss on the image embedding (see :func:`segment_discrimination_loss`)."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    focal_alpha: float = 0.5
    segment: float = 1.0
    segment_temperature: float = 0.1
    loss_size: int = 128


def segment_discrimination_loss(embedding: torch.Tensor, coverage: torch.Tensor, temperature: float) -> torch.Tensor:
    """Dense auxiliary loss that makes the image embedding segment-aware from the first steps.

    Each GT segment's prototype is the coverage-weighted mean of the normalised embedding; every
    cell is classified among the scene's segments by cosine to the prototypes, with the cell's
    coverage shares as soft targets. The prompt-driven mask loss alone teaches the from-scratch
    encoder very slowly (a few prompts per image); this gives every cell a gradient every step.

    Args:
        embedding: (C, g, g) image embedding of one scene.
        coverage: (S, g, g) share of each cell covered by each segment.
    Returns:
        scalar, mean over covered cells.
    """
    feats = F.normalize(embedding.flatten(1), dim=0)  # (C, g*g)
    cov = coverage.flatten(1)  # (S, g*g)
    protos = F.normalize(cov @ feats.t() / cov.sum(dim=1, keepdim=True).clamp(min=1e-6), dim=1)  # (S, C)
    logits = protos @ feats / temperature  # (S, g*g)
    log_prob = F.log_softmax(logits, dim=0)
    covered = cov.sum(dim=0)
    per_cell = -(cov * log_prob).sum(dim=0)
    return per_cell.sum() / covered.sum().clamp(min=1e-6)


def sam_prompt_losses(
    low_res_logits: torch.Tensor,
    iou_pred: torch.Tensor,
    targets: torch.Tensor,
    ambiguous: bool,
    weights: SamLossWeights,
) -> dict[str, torch.Tensor]:
    """Losses of one decoder call.

    Args:
        low_res_logits: (N, 4, h, w) all 4 decoder outputs (0 single, 1-3 multimask).
        iou_pred: (N, 4).
        targets: (N, 1, S, S) float target masks at ``weights.loss_size``.
        ambiguous: single-point prompts: add the min-over-outputs-1..3 mask loss.
    Returns:
        Summed (not averaged) 'mask', 'iou' losses over the N prompts, and 'iou_actual' (N, 4).
    """
    logits = F.interpolate(low_res_logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    t = targets.expand_as(logits)
    per_output = weights.focal * sigmoid_focal_loss(logits, t, alpha=weights.focal_alpha) + weights.dice * dice_loss(logits, t)  # (N, 4)
    mask_loss = per_output[:, 0]
    if ambiguous:
        mask_loss = mask_loss + per_output[:, 1:].min(dim=1).values
    with torch.no_grad():
        actual = mask_iou(logits, t)
    iou_loss = F.mse_loss(iou_pred, actual, reduction="none").sum(dim=1)
    return {"mask": mask_loss.sum(), "iou": weights.iou * iou_loss.sum(), "iou_actual": actual}


def forward_prompted_batch(
    sam: Sam, batch: Sequence[PromptedImage], weights: SamLossWeights, device: torch.device
) -> dict[str, torch.Tensor]:
    """Encode a batch of scenes, decode all their prompts, return mean losses per prompt.

    Returns:
        'loss' (scalar to optimise), 'mask', 'iou' (means per prompt), 'miou_single' (mean IoU of
        output 0, a training-progress figure).
    """
    images = torch.stack([torch.from_numpy(b.image).permute(2, 0, 1) for b in batch]).to(device).float()
    embeddings = sam.image_encoder(sam.preprocess(images))  # (B, 128, 16, 16)
    dense_pe = sam.prompt_encoder.get_dense_pe()
    mask_sum = iou_sum = segment_sum = torch.zeros((), device=device)
    ious = []
    count = 0
    for b, item in enumerate(batch):
        if weights.segment > 0:
            coverage = torch.from_numpy(item.coverage).to(device)
            segment_sum = segment_sum + segment_discrimination_loss(embeddings[b], coverage, weights.segment_temperature)
        targets_all = torch.from_numpy(item.masks).to(device).float()[:, None]
        # Area pooling keeps a soft boundary; IoU targets threshold it at 0.5.
        targets_all = F.adaptive_avg_pool2d(targets_all, weights.loss_size)
        for group in item.groups:
            boxes = torch.from_numpy(group.boxes).to(device) if group.boxes is not None else None
            points = None
            if group.point_coords is not None:
                points = (torch.from_numpy(group.point_coords).to(device), torch.from_numpy(group.point_labels).to(device))
            sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
            low_res, iou_pred = sam.mask_decoder.predict_masks(
                image_embeddings=embeddings[b : b + 1],
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
            )
            losses = sam_prompt_losses(low_res, iou_pred, targets_all[torch.from_numpy(group.targets)], group.ambiguous, weights)
            mask_sum = mask_sum + losses["mask"]
            iou_sum = iou_sum + losses["iou"]
            ious.append(losses["iou_actual"][:, 0])
            count += len(group.targets)
    mask_mean, iou_mean, segment_mean = mask_sum / count, iou_sum / count, segment_sum / len(batch)
    return {
        "loss": mask_mean + iou_mean + weights.segment * segment_mean,
        "mask": mask_mean.detach(),
        "iou": iou_mean.detach(),
        "segment": segment_mean.detach(),
        "miou_single": torch.cat(ious).mean(),
    }
