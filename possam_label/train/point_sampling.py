"""Point sampling for mask losses and matching (PointRend-style importance sampling).

Mask losses in Mask2Former/FC-CLIP are not computed on whole masks but on a few thousand points
per mask: that keeps memory flat at high resolution. Points are continuous coordinates in
``[0, 1] x [0, 1]`` (x right, y down) of the mask's extent, so masks of different resolutions
(predictions at stride 4, targets at input resolution) are read at the same places.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def point_sample(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly read ``input`` at normalized points (``grid_sample`` with ``align_corners=False``).

    Args:
        input: (N, C, H, W) maps.
        coords: (N, P, 2) or (N, Hg, Wg, 2) points, (x, y) in [0, 1]; 0 and 1 are the outer edges
            of the first and last pixels, so pixel centres are at (i + 0.5) / W.
    Returns:
        (N, C, P) or (N, C, Hg, Wg) sampled values, in ``input``'s dtype. Points outside the
        map read zeros.
    """
    if input.dim() != 4:
        raise ValueError(f"point_sample: input must be (N, C, H, W), got shape {tuple(input.shape)}")
    if coords.shape[-1] != 2 or coords.dim() not in (3, 4) or coords.shape[0] != input.shape[0]:
        raise ValueError(
            f"point_sample: coords must be (N, P, 2) or (N, Hg, Wg, 2) with N={input.shape[0]}, "
            f"got shape {tuple(coords.shape)}"
        )
    flat = coords.dim() == 3
    grid = coords.unsqueeze(2) if flat else coords
    # grid_sample wants [-1, 1]; with align_corners=False, -1 and 1 are the outer pixel edges,
    # which is exactly the [0, 1] convention above.
    grid = grid.to(input.dtype) * 2.0 - 1.0
    out = F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(3) if flat else out


def uncertainty_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of a binary mask logit: ``-|logit|`` (highest at the decision boundary)."""
    return -logits.abs()


def get_uncertain_point_coords_with_randomness(
    logits: torch.Tensor,
    uncertainty_fn: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """PointRend training-time point selection: mostly uncertain points, some uniform ones.

    Draws ``int(num_points * oversample_ratio)`` uniform candidates per map, keeps the
    ``int(num_points * importance_sample_ratio)`` candidates with the highest
    ``uncertainty_fn`` value, and fills the remaining slots with fresh uniform points.

    Args:
        logits: (N, 1, H, W) class-agnostic mask logits (or (N, C, H, W) if ``uncertainty_fn``
            reduces the sampled (N, C, P) values to (N, 1, P)).
        uncertainty_fn: maps sampled logits (N, C, P) to uncertainties (N, 1, P).
        num_points: points per map.
        oversample_ratio: >= 1.
        importance_sample_ratio: in [0, 1].
        generator: optional RNG (on ``logits``' device); the global RNG otherwise.
    Returns:
        (N, num_points, 2) coordinates in [0, 1], no gradient.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    if num_points <= 0:
        raise ValueError(f"num_points must be positive, got {num_points}")
    n = logits.shape[0]
    device = logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(num_points * importance_sample_ratio)
    num_uniform = num_points - num_uncertain
    with torch.no_grad():
        candidates = torch.rand(n, num_candidates, 2, device=device, generator=generator)
        uncertainty = uncertainty_fn(point_sample(logits.detach().float(), candidates))
        if uncertainty.shape != (n, 1, num_candidates):
            raise ValueError(
                f"uncertainty_fn must return (N, 1, P) = {(n, 1, num_candidates)}, got {tuple(uncertainty.shape)}"
            )
        chosen = uncertainty[:, 0, :].topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
        coords = torch.gather(candidates, 1, chosen.unsqueeze(-1).expand(-1, -1, 2))
        if num_uniform > 0:
            uniform = torch.rand(n, num_uniform, 2, device=device, generator=generator)
            coords = torch.cat([coords, uniform], dim=1)
    return coords
