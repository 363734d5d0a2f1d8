"""Set-prediction losses of PosSAM (spec section 7.2): class CE, mask BCE + Dice, mask-IoU regression.

Per decoder stage (final + every auxiliary stage, each matched on its own):

* ``loss_ce``: cross-entropy over K+1 classes for all Q queries; unmatched queries target the
  void class (last), whose class weight is ``void_weight``.
* ``loss_mask`` / ``loss_dice``: on matched pairs only, on ``num_points`` points per mask chosen
  by PointRend importance sampling; BCE is the mean over points; both are summed over masks and
  divided by ``num_masks`` (targets in the batch, averaged over distributed workers, >= 1).
  Points on a target's void pixels (its ``ignore`` mask: unlabeled, crowd, pseudo-labels scored
  below ``--min-score``) weigh nothing: void is unknown, neither the object nor background. (The
  matcher's costs still read them as background, as Mask2Former's do.)
* ``loss_iou``: regression of the predicted mask quality ``pred_iou`` (already in [0, 1]) to the
  IoU of the binarized predicted mask with its target. Matched queries get that IoU; unmatched
  queries get 0 when ``iou_supervise_unmatched`` (teaches the head to flag duplicates and
  background). The loss is the mean over supervised queries.

  IoU target, computed without gradient at the mask resolution: the prediction is binarized
  (``sigmoid > 0.5``, i.e. logit > 0) on its (Hm, Wm) grid, and the target is area-pooled to
  that grid, giving per cell the fraction of target pixels. ``IoU = sum(p * f) /
  (sum(p) + sum(f) - sum(p * f))`` is then exactly the IoU between the target and the
  prediction upsampled by nearest neighbour to the target resolution (when the sizes divide),
  and small targets do not vanish as they would if the pooled target were thresholded.

Keys of the returned dict: ``loss_ce, loss_mask, loss_dice, loss_iou`` for the final stage and
``loss_ce_0, ...`` for ``aux_outputs[0]``, etc. Values are already multiplied by their weights.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from possam_label.train.matcher import HungarianMatcher, MatchIndices
from possam_label.train.point_sampling import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
    uncertainty_from_logits,
)

IOU_LOSSES = ("mse", "smooth_l1")
_TARGET_CHUNK = 16  # target masks converted to float this many at a time (memory)


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of all weighted losses (every ``loss_*`` entry) of :meth:`SetCriterion.forward`."""
    terms = [value for key, value in losses.items() if key.startswith("loss_")]
    if not terms:
        raise ValueError("total_loss: no 'loss_*' entries")
    return torch.stack([t.float() for t in terms]).sum()


def mask_iou_targets(pred_mask_logits: torch.Tensor, target_fraction: torch.Tensor) -> torch.Tensor:
    """IoU of binarized predicted masks with targets given as per-cell coverage fractions.

    Args:
        pred_mask_logits: (M, Hm, Wm) mask logits.
        target_fraction: (M, Hm, Wm) fraction of each cell covered by the target, in [0, 1]
            (a binary mask at (Hm, Wm) is the special case of 0/1 fractions).
    Returns:
        (M,) float32 IoU in [0, 1]; 1 where prediction and target are both empty.
    """
    pred = (pred_mask_logits.detach() > 0).float()
    frac = target_fraction.float()
    inter = (pred * frac).flatten(1).sum(1)
    union = pred.flatten(1).sum(1) + frac.flatten(1).sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-6), torch.ones_like(union))


def target_coverage_fraction(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-pool (N, H, W) binary masks to (N, h, w) coverage fractions (float32, no grad)."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.float()
    chunks = [
        F.interpolate(masks[i : i + _TARGET_CHUNK].float()[None], size=size, mode="area")[0]
        for i in range(0, masks.shape[0], _TARGET_CHUNK)
    ]
    return torch.cat(chunks)


def _dice_loss(point_logits: torch.Tensor, point_labels: torch.Tensor, point_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(M,) Dice loss ``1 - (2 sum(w p t) + 1) / (sum(w p) + sum(w t) + 1)`` per mask over its
    points (``point_weights`` (M, P): 0 on void pixels; None: all 1)."""
    prob = point_logits.sigmoid()
    if point_weights is not None:
        prob, point_labels = prob * point_weights, point_labels * point_weights
    numerator = 2.0 * (prob * point_labels).sum(-1)
    denominator = prob.sum(-1) + point_labels.sum(-1)
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class SetCriterion(nn.Module):
    """Mask2Former-style losses with deep supervision and an IoU-head loss.

    Args:
        num_classes: K, the training vocabulary size (logits have K+1 columns, void last).
        matcher: assigns queries to targets (re-run for every stage).
        class_weight, mask_weight, dice_weight, iou_weight: loss weights.
        void_weight: CE class weight of the void class (Mask2Former's eos_coef).
        num_points: points per mask for the BCE/Dice losses.
        oversample_ratio, importance_sample_ratio: PointRend importance sampling.
        iou_loss: "mse" or "smooth_l1".
        iou_supervise_unmatched: unmatched queries get IoU target 0 (else they are ignored).
        iou_smooth_l1_beta: transition point of the smooth-L1 IoU loss (IoUs live in [0, 1], so
            the usual beta = 1 would make it a halved MSE).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        iou_weight: float = 1.0,
        void_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        iou_loss: str = "mse",
        iou_supervise_unmatched: bool = True,
        iou_smooth_l1_beta: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"SetCriterion: num_classes must be positive, got {num_classes}")
        if iou_loss not in IOU_LOSSES:
            raise ValueError(f"SetCriterion: iou_loss must be one of {IOU_LOSSES}, got {iou_loss!r}")
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1 or num_points <= 0:
            raise ValueError(
                "SetCriterion: need num_points > 0, oversample_ratio >= 1, 0 <= importance_sample_ratio <= 1"
            )
        self.num_classes = int(num_classes)
        self.matcher = matcher
        self.weights = {
            "loss_ce": float(class_weight),
            "loss_mask": float(mask_weight),
            "loss_dice": float(dice_weight),
            "loss_iou": float(iou_weight),
        }
        self.void_weight = float(void_weight)
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.iou_loss = iou_loss
        self.iou_supervise_unmatched = bool(iou_supervise_unmatched)
        self.iou_smooth_l1_beta = float(iou_smooth_l1_beta)
        class_weights = torch.ones(self.num_classes + 1)
        class_weights[-1] = self.void_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    @classmethod
    def from_config(cls, train_cfg: Any, num_classes: int) -> "SetCriterion":
        """Criterion and matcher from a :class:`possam_label.config.TrainConfig`."""
        matcher = HungarianMatcher(
            cost_class=train_cfg.class_weight,
            cost_mask=train_cfg.mask_weight,
            cost_dice=train_cfg.dice_weight,
            num_points=train_cfg.num_points,
        )
        return cls(
            num_classes=num_classes,
            matcher=matcher,
            class_weight=train_cfg.class_weight,
            mask_weight=train_cfg.mask_weight,
            dice_weight=train_cfg.dice_weight,
            iou_weight=train_cfg.iou_weight,
            void_weight=train_cfg.void_weight,
            num_points=train_cfg.num_points,
            oversample_ratio=train_cfg.oversample_ratio,
            importance_sample_ratio=train_cfg.importance_sample_ratio,
            iou_loss=train_cfg.iou_loss,
            iou_supervise_unmatched=train_cfg.iou_supervise_unmatched,
        )

    # ------------------------------------------------------------------------------ helpers
    def _check_targets(self, outputs: dict[str, Any], targets: Sequence[dict[str, torch.Tensor]]) -> None:
        batch = outputs["pred_logits"].shape[0]
        if len(targets) != batch:
            raise ValueError(f"SetCriterion: batch of {batch} predictions but {len(targets)} targets")
        if outputs["pred_logits"].shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"SetCriterion: pred_logits has {outputs['pred_logits'].shape[-1]} classes, "
                f"expected num_classes + 1 = {self.num_classes + 1}"
            )
        for b, target in enumerate(targets):
            labels, masks = target["labels"], target["masks"]
            if labels.dim() != 1 or masks.dim() != 3 or masks.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"SetCriterion: target {b} needs labels (N,) and masks (N, H, W), got "
                    f"{tuple(labels.shape)} and {tuple(masks.shape)}"
                )
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"SetCriterion: target {b} has labels outside [0, {self.num_classes}): "
                    f"min {int(labels.min())}, max {int(labels.max())}"
                )

    @staticmethod
    def _num_masks(targets: Sequence[dict[str, torch.Tensor]], device: torch.device) -> float:
        """Targets in the batch, averaged over distributed workers, at least 1."""
        count = torch.tensor(float(sum(int(t["labels"].numel()) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return max(float(count.item()), 1.0)

    # ------------------------------------------------------------------------------- losses
    def loss_labels(self, logits: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]], indices: MatchIndices) -> torch.Tensor:
        """Weighted-mean CE over all queries; (B, Q, K+1) logits -> scalar (unweighted by class_weight)."""
        batch, num_queries = logits.shape[:2]
        target_classes = torch.full((batch, num_queries), self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (query_idx, target_idx) in enumerate(indices):
            if query_idx.numel():
                target_classes[b, query_idx.to(logits.device)] = targets[b]["labels"].to(logits.device)[target_idx.to(logits.device)]
        return F.cross_entropy(
            logits.float().transpose(1, 2), target_classes, weight=self.class_weights.to(logits.device)
        )

    def loss_masks(
        self,
        pred_masks: torch.Tensor,
        target_masks: Sequence[torch.Tensor],
        indices: MatchIndices,
        num_masks: float,
        generator: Optional[torch.Generator] = None,
        target_ignores: Optional[Sequence[Optional[torch.Tensor]]] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point-sampled BCE and Dice over matched pairs, each summed and divided by num_masks.

        Args:
            pred_masks: (B, Q, Hm, Wm) mask logits.
            target_masks: B float tensors (N_i, H_i, W_i).
            target_ignores: per image None or a float (H_i, W_i) void mask: points on (or
                bilinearly touching) void pixels weigh nothing (void is unknown, e.g. a pseudo-label scored below ``--min-score``:
                neither the object nor background).
        """
        device = pred_masks.device
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([q for q, _ in indices]).to(device)
        if query_idx.numel() == 0:
            zero = pred_masks.sum() * 0.0  # keeps the graph connected (DDP needs every grad)
            return zero, zero.clone()
        src = pred_masks[batch_idx, query_idx].float()[:, None]  # (M, 1, Hm, Wm)
        coords = get_uncertain_point_coords_with_randomness(
            src,
            uncertainty_from_logits,
            self.num_points,
            self.oversample_ratio,
            self.importance_sample_ratio,
            generator=generator,
        )  # (M, P, 2)
        labels, weights = [], []
        start = 0
        with torch.no_grad():
            for b, (q, t) in enumerate(indices):
                if q.numel() == 0:
                    continue
                tgt = target_masks[b][t.to(target_masks[b].device)][:, None]  # (m, 1, H, W)
                image_coords = coords[start : start + q.numel()]
                labels.append(point_sample(tgt, image_coords)[:, 0])
                ignore = target_ignores[b] if target_ignores is not None else None
                if ignore is None:
                    weights.append(torch.ones_like(labels[-1]))
                else:
                    void = ignore.to(tgt)[None, None].expand(q.numel(), 1, *ignore.shape[-2:])
                    # A point whose bilinear read touches a void pixel weighs nothing (a partial
                    # weight would still let a confident claim on void cost as much as a wrong mask).
                    weights.append((point_sample(void, image_coords)[:, 0] <= 0).to(tgt.dtype))
                start += q.numel()
        point_labels = torch.cat(labels)  # (M, P)
        point_weights = torch.cat(weights)  # (M, P): 0 on void
        point_logits = point_sample(src, coords)[:, 0]  # (M, P)
        bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
        bce = (bce * point_weights).sum(1) / point_weights.sum(1).clamp(min=1e-6)
        dice = _dice_loss(point_logits, point_labels, point_weights)
        return bce.sum() / num_masks, dice.sum() / num_masks

    def iou_targets(
        self, pred_masks: torch.Tensor, target_fractions: Sequence[torch.Tensor], indices: MatchIndices
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """IoU targets and the supervision mask for every query.

        Returns:
            (B, Q) float32 targets (IoU for matched queries, 0 otherwise) and (B, Q) bool mask of
            the queries the IoU loss covers.
        """
        batch, num_queries = pred_masks.shape[:2]
        device = pred_masks.device
        target = torch.zeros(batch, num_queries, dtype=torch.float32, device=device)
        supervised = torch.full((batch, num_queries), self.iou_supervise_unmatched, dtype=torch.bool, device=device)
        for b, (q, t) in enumerate(indices):
            if q.numel() == 0:
                continue
            q, t = q.to(device), t.to(device)
            target[b, q] = mask_iou_targets(pred_masks[b, q], target_fractions[b][t])
            supervised[b, q] = True
        return target, supervised

    def loss_iou(self, pred_iou: torch.Tensor, target: torch.Tensor, supervised: torch.Tensor) -> torch.Tensor:
        """Mean IoU-regression loss over supervised queries; (B, Q) inputs -> scalar."""
        pred = pred_iou.float()
        if self.iou_loss == "mse":
            per_query = (pred - target) ** 2
        else:
            per_query = F.smooth_l1_loss(pred, target, reduction="none", beta=self.iou_smooth_l1_beta)
        weight = supervised.float()
        return (per_query * weight).sum() / weight.sum().clamp(min=1.0)

    def stage_losses(
        self,
        stage: dict[str, Any],
        targets: Sequence[dict[str, torch.Tensor]],
        target_masks: Sequence[torch.Tensor],
        target_fractions: Sequence[torch.Tensor],
        num_masks: float,
        generator: Optional[torch.Generator] = None,
        target_ignores: Optional[Sequence[Optional[torch.Tensor]]] = None,
    ) -> tuple[dict[str, torch.Tensor], MatchIndices]:
        """Unweighted losses of one decoder stage and its matching."""
        # The matcher reads the float copies of the masks (no per-stage conversion).
        float_targets = [{"labels": t["labels"], "masks": m} for t, m in zip(targets, target_masks)]
        indices = self.matcher(stage, float_targets, generator=generator)
        loss_ce = self.loss_labels(stage["pred_logits"], targets, indices)
        loss_mask, loss_dice = self.loss_masks(stage["pred_masks"], target_masks, indices, num_masks, generator, target_ignores)
        iou_target, supervised = self.iou_targets(stage["pred_masks"], target_fractions, indices)
        loss_iou = self.loss_iou(stage["pred_iou"], iou_target, supervised)
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice, "loss_iou": loss_iou}, indices

    def forward(
        self,
        outputs: dict[str, Any],
        targets: Sequence[dict[str, torch.Tensor]],
        return_indices: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Union[dict[str, torch.Tensor], tuple[dict[str, torch.Tensor], list[MatchIndices]]]:
        """Weighted losses of the final stage and every auxiliary stage.

        Args:
            outputs: {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, Hm, Wm) logits,
                "pred_iou": (B, Q) in [0, 1], "aux_outputs": [same keys per earlier stage]}.
            targets: B dicts {"labels": (N_i,) int64 in [0, K), "masks": (N_i, H, W) bool/uint8,
                optionally "ignore": (H, W) bool, void pixels that count for no mask}.
            return_indices: also return the matchings, [final, aux_0, aux_1, ...].
            generator: optional RNG for all point sampling (global RNG otherwise).
        Returns:
            {"loss_ce", "loss_mask", "loss_dice", "loss_iou", "loss_ce_0", ...} scalar tensors,
            already weighted; with ``return_indices`` also the list of per-stage matchings
            (see :meth:`HungarianMatcher.forward`).
        """
        self._check_targets(outputs, targets)
        device = outputs["pred_masks"].device
        mask_size = tuple(outputs["pred_masks"].shape[-2:])
        num_masks = self._num_masks(targets, device)
        # Target-side tensors are shared by every stage: convert them once.
        with torch.no_grad():
            target_masks = [t["masks"].to(device=device, dtype=torch.float32) for t in targets]
            target_ignores = [t["ignore"].to(device=device, dtype=torch.float32) if t.get("ignore") is not None else None for t in targets]
            target_fractions = [target_coverage_fraction(m, mask_size) for m in target_masks]
        stages = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        losses: dict[str, torch.Tensor] = {}
        all_indices: list[MatchIndices] = []
        for suffix, stage in stages:
            if tuple(stage["pred_masks"].shape[-2:]) != mask_size:
                fractions = [target_coverage_fraction(m, tuple(stage["pred_masks"].shape[-2:])) for m in target_masks]
            else:
                fractions = target_fractions
            raw, indices = self.stage_losses(stage, targets, target_masks, fractions, num_masks, generator, target_ignores)
            for key, value in raw.items():
                losses[key + suffix] = value * self.weights[key]
            all_indices.append(indices)
        if return_indices:
            return losses, all_indices
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, weights={self.weights}, void_weight={self.void_weight}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}, iou_loss={self.iou_loss!r}, "
            f"iou_supervise_unmatched={self.iou_supervise_unmatched}"
        )
