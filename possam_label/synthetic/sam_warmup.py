"""Phase 1 of the small SAM's training: a decoder-only warm-up on a pure geometry task."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from .sam_losses import SamLossWeights, dice_loss, mask_iou, sigmoid_focal_loss
from .sam_prompts import SAM_TRAIN_STREAM_TAG

logger = logging.getLogger(__name__)


@dataclass
class GeometryWarmup:
    """Decoder-only warm-up on a pure geometry task before the real training.

    Even with :func:`init_decoder_for_training`, the from-scratch decoder first has to learn to
    relate a prompt's positional encoding to image positions; on real scenes (irregular targets,
    untrained encoder) that took longer than the whole training budget (constant masks after 400
    steps). On a clean geometry task - a click gives a disc around it, a box gives the filled box,
    image embeddings are small noise - it is learnt in a few hundred cheap steps (no encoder, no
    rendering), and the real training then starts from a decoder that already localises.

    When the decoder "clicks" varies a lot with the seed (measured: 80 to over 300 steps), so the
    phase runs until the running mIoU of output 0 reaches ``target_miou`` (deterministic for a
    seed), between ``min_steps`` and ``max_steps``.

    Attributes:
        max_steps: upper bound on warm-up steps (0 disables the phase).
        min_steps: lower bound.
        target_miou: stop once the mean IoU over the last ``window`` steps reaches this.
        window: steps averaged for the stopping rule.
        prompts: prompts per step (half clicks, half boxes).
        lr: AdamW rate for the prompt encoder and mask decoder.
        embedding_std: std of the noise image embedding (the neck's initial output scale).
        loss_size: side of the targets (the decoder's native 64 x 64: this phase is about where,
            not about boundaries).
    """

    max_steps: int = 800
    min_steps: int = 100
    target_miou: float = 0.4
    window: int = 20
    prompts: int = 32
    lr: float = 3e-3
    embedding_std: float = 0.1
    loss_size: int = 64


def geometry_batch(rng: np.random.Generator, count: int, img_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """Random clicks with disc targets and random boxes with filled-box targets.

    Returns:
        clicks (n, 2) (x, y) pixels, boxes (m, 4) XYXY pixels, disc targets (n, 1, S, S) and box
        targets (m, 1, S, S) at S = ``out_size``.
    """
    n_clicks = count // 2
    n_boxes = count - n_clicks
    clicks = rng.uniform(0.04, 0.96, (n_clicks, 2)).astype(np.float32) * img_size
    radius = rng.uniform(0.03, 0.16, n_clicks).astype(np.float32) * img_size
    centres = rng.uniform(0.04, 0.96, (n_boxes, 2)) * img_size
    sides = rng.uniform(0.04, 0.4, (n_boxes, 2)) * img_size
    boxes = np.clip(np.concatenate([centres - sides / 2, centres + sides / 2], axis=1), 0, img_size).astype(np.float32)
    coords = (torch.arange(out_size, dtype=torch.float32) + 0.5) * img_size / out_size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    c = torch.from_numpy(clicks)
    discs = ((xx - c[:, 0, None, None]) ** 2 + (yy - c[:, 1, None, None]) ** 2) <= torch.from_numpy(radius)[:, None, None] ** 2
    b = torch.from_numpy(boxes)
    filled = (xx >= b[:, 0, None, None]) & (xx <= b[:, 2, None, None]) & (yy >= b[:, 1, None, None]) & (yy <= b[:, 3, None, None])
    return clicks, boxes, discs.float()[:, None], filled.float()[:, None]


def warm_up_decoder(
    sam: Sam, warmup: GeometryWarmup, seed: int, weights: SamLossWeights, log_every: int, progress: bool
) -> list[dict[str, float]]:
    """Phase 1 (see :class:`GeometryWarmup`): trains ``sam.prompt_encoder`` and ``sam.mask_decoder``
    in place. Only output 0 learns the target: with the loss on all 4 outputs (4 random read-outs
    pulling the shared transformer different ways) the decoder had not localised after 760 steps,
    with output 0 alone it did after 80-180 steps (3 seeds). Returns the logged history rows (the
    last row's 'step' is the number of warm-up steps run)."""
    from tqdm import tqdm

    if warmup.max_steps <= 0:
        return []
    rng = np.random.default_rng([seed, 0, SAM_TRAIN_STREAM_TAG, 1])
    params = list(sam.prompt_encoder.parameters()) + list(sam.mask_decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=warmup.lr, weight_decay=0.01)
    side = sam.prompt_encoder.image_embedding_size
    channels = sam.prompt_encoder.embed_dim
    img_size = sam.image_encoder.img_size
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    window: dict[str, list[float]] = {"geometry": [], "geometry_miou": []}
    recent: list[float] = []
    bar = tqdm(range(warmup.max_steps), desc="small SAM decoder warm-up", disable=not progress, dynamic_ncols=True)
    for step in bar:
        clicks, boxes, discs, filled = geometry_batch(rng, warmup.prompts, img_size, warmup.loss_size)
        embedding = torch.randn((1, channels, *side), generator=gen) * warmup.embedding_std
        dense_pe = sam.prompt_encoder.get_dense_pe()
        losses, ious = [], []
        for points, box, target in (
            ((torch.from_numpy(clicks)[:, None], torch.ones(len(clicks), 1)), None, discs),
            (None, torch.from_numpy(boxes), filled),
        ):
            sparse, dense = sam.prompt_encoder(points=points, boxes=box, masks=None)
            low_res, _ = sam.mask_decoder.predict_masks(embedding, dense_pe, sparse, dense)
            logits = low_res
            if logits.shape[-2:] != target.shape[-2:]:
                logits = F.interpolate(low_res, size=target.shape[-2:], mode="bilinear", align_corners=False)
            single = logits[:, :1]
            losses.append((weights.focal * sigmoid_focal_loss(single, target, alpha=weights.focal_alpha) + weights.dice * dice_loss(single, target)).mean())
            ious.append(mask_iou(logits[:, :1].detach(), target).mean())
        loss = sum(losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        miou = float(sum(ious) / len(ious))
        window["geometry"].append(float(loss.detach()))
        window["geometry_miou"].append(miou)
        recent = (recent + [miou])[-warmup.window :]
        done = step + 1 >= warmup.min_steps and len(recent) == warmup.window and float(np.mean(recent)) >= warmup.target_miou
        if (step + 1) % log_every == 0 or step + 1 == warmup.max_steps or done:
            row = {"step": step + 1, "phase": 1}
            row.update({k: float(np.mean(v)) for k, v in window.items()})
            history.append(row)
            window = {k: [] for k in window}
            logger.info("warm-up step %d geometry loss %.4f miou %.3f", step + 1, row["geometry"], row["geometry_miou"])
            bar.set_postfix(miou=f"{row['geometry_miou']:.2f}")
        if done:
            break
    else:
        logger.warning("decoder warm-up reached max_steps=%d before mIoU %.2f", warmup.max_steps, warmup.target_miou)
    return history
