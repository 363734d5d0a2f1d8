"""Hungarian matching of predicted queries to ground-truth segments (Mask2Former / FC-CLIP recipe).

For each image the cost of assigning query q to target t is

    cost_class * (-p_q[label_t]) + cost_mask * BCE(q, t) + cost_dice * Dice(q, t)

with p_q the softmax over the K+1 class logits, and both mask costs measured on ``num_points``
uniformly random points shared by every query and target of the image. The assignment that
minimizes the total cost is found with ``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from possam_label.train.point_sampling import point_sample

MatchIndices = list[tuple[torch.Tensor, torch.Tensor]]


def pairwise_bce_cost(pred_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over points for every (prediction, target) pair.

    Args:
        pred_logits: (Q, P) mask logits at P points.
        target: (N, P) target values in [0, 1] at the same points.
    Returns:
        (Q, N) costs.
    """
    num_points = pred_logits.shape[1]
    # BCE(x, y) = y * softplus(-x) + (1 - y) * softplus(x): two matrix products cover all pairs.
    loss_if_fg = F.softplus(-pred_logits)
    loss_if_bg = F.softplus(pred_logits)
    cost = loss_if_fg @ target.T + loss_if_bg @ (1.0 - target).T
    return cost / num_points


def pairwise_dice_cost(pred_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice loss ``1 - (2|p t| + 1) / (|p| + |t| + 1)`` for every (prediction, target) pair.

    Args:
        pred_logits: (Q, P) mask logits at P points (sigmoid is applied here).
        target: (N, P) target values in [0, 1].
    Returns:
        (Q, N) costs.
    """
    prob = pred_logits.sigmoid()
    numerator = 2.0 * (prob @ target.T)
    denominator = prob.sum(-1)[:, None] + target.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets per image (no gradient).

    Args:
        cost_class: weight of the classification cost (-probability of the target class).
        cost_mask: weight of the point-sampled BCE cost.
        cost_dice: weight of the point-sampled Dice cost.
        num_points: uniformly random points per image for the mask costs.
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = float(cost_class)
        self.cost_mask = float(cost_mask)
        self.cost_dice = float(cost_dice)
        self.num_points = int(num_points)

    def cost_matrix(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Matching cost of one image.

        Args:
            pred_logits: (Q, K+1) class logits.
            pred_masks: (Q, Hm, Wm) mask logits.
            labels: (N,) int64 target classes in [0, K).
            masks: (N, H, W) bool/uint8/float target masks (any resolution).
            generator: optional RNG for the points.
        Returns:
            (Q, N) float32 cost on the predictions' device.
        """
        device = pred_masks.device
        prob = pred_logits.float().softmax(-1)
        cost = -self.cost_class * prob[:, labels.to(device)]  # (Q, N)
        if self.cost_mask != 0 or self.cost_dice != 0:
            coords = torch.rand(1, self.num_points, 2, device=device, generator=generator)
            target_points = point_sample(
                masks.to(device=device, dtype=torch.float32)[None], coords
            )[0]  # (N, P)
            pred_points = point_sample(pred_masks.float()[None], coords)[0]  # (Q, P)
            if self.cost_mask != 0:
                cost = cost + self.cost_mask * pairwise_bce_cost(pred_points, target_points)
            if self.cost_dice != 0:
                cost = cost + self.cost_dice * pairwise_dice_cost(pred_points, target_points)
        return cost

    @torch.no_grad()
    def forward(
        self,
        outputs: dict[str, Any],
        targets: Sequence[dict[str, torch.Tensor]],
        generator: Optional[torch.Generator] = None,
    ) -> MatchIndices:
        """Match every image of the batch.

        Args:
            outputs: {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, Hm, Wm), ...}.
            targets: B dicts {"labels": (N_i,) int64, "masks": (N_i, H, W)}.
            generator: optional RNG for the points.
        Returns:
            B pairs (query_indices, target_indices), int64 CPU tensors of length min(Q, N_i),
            sorted by query index; target j of image i is assigned query query_indices[k] where
            target_indices[k] == j.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {pred_logits.shape[0]} predictions but {len(targets)} targets")
        indices: MatchIndices = []
        for b, target in enumerate(targets):
            labels, masks = target["labels"], target["masks"]
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], labels, masks, generator).cpu()
            if torch.isnan(cost).any():
                raise ValueError(f"HungarianMatcher: NaN in the matching cost of image {b} (NaN predictions?)")
            # linear_sum_assignment rejects infinities; a huge finite cost keeps the same order.
            cost = torch.nan_to_num(cost, posinf=1e8, neginf=-1e8)
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )
