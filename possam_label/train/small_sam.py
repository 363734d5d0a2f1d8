"""A small SAM (segment_anything's own modules) trained from scratch on the synthetic world.

No pretrained SAM weights can reach the machines this project runs on, so the project ships a
small promptable, class-agnostic segmenter trained on scenes rendered on the fly by
:mod:`possam_label.data.synthetic`. The network is segment_anything's ``Sam`` with fixed small
sizes (:data:`SMALL_SAM_ARCH`); its state-dict keys are exactly segment_anything's
(``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``), so ``SamPredictor``,
``SamAutomaticMaskGenerator`` and PosSAM's :class:`~possam_label.model.sam_backbone.SAMBackbone`
load it unchanged.

Training from scratch on 2 CPU cores needs three additions to SAM's recipe (measured, see the
docstrings): :func:`init_decoder_for_training` (tied query/key projections, small tokens, small
neck output), phase 1 :func:`warm_up_decoder` (decoder-only geometry task until it localises
prompts) and the auxiliary :func:`segment_discrimination_loss` on the image embedding. Without
them the decoder predicted the same mask wherever the prompt was for the whole budget.

Phase 2 recipe (SAM paper, section "Training algorithm", reduced):
  * Every step renders ``batch_size`` scenes; per scene ``prompts_per_image`` ground-truth segments
    (things and stuff alike, class-agnostic) are prompted, half with a jittered box, half with
    1-3 positive points plus an occasional negative point.
  * The decoder always predicts 4 masks (``MaskDecoder.predict_masks``): output 0 is the
    single-mask output, outputs 1-3 the multimask outputs.
  * Mask loss = 20 * focal (alpha 0.5) + 1 * dice. Every prompt trains output 0 (so ``multimask_output=False``
    works for any prompt, as it does for boxes and several points in SAM); a single positive point
    without negatives (the ambiguous prompt) additionally trains the best of outputs 1-3
    (min over the three, as SAM does).
  * IoU head: MSE between the predicted IoU of all 4 outputs and their actual IoU with the target.
  * Segment discrimination (weight 1): every embedding cell classified among the scene's segments
    by cosine to their mean embeddings (also what PosSAM wants from a frozen SAM encoder).
  * Losses are computed at 128x128 (the 64x64 low-res logits upsampled 2x, the target area-pooled
    2x): at the full 256x256 the loss costs more than the network on 2 CPU cores.
  * The dense mask-prompt path (``mask_input``) is not trained (no iterative refinement rounds).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from ..model.weights import WeightsError, load_state_dict

logger = logging.getLogger(__name__)

# Sizes of the shipped small SAM; PosSAM's shipped config depends on them (do not change).
SMALL_SAM_ARCH: dict[str, Any] = {
    "img_size": 256,
    "patch_size": 16,
    "embed_dim": 192,
    "depth": 4,
    "num_heads": 3,
    "mlp_ratio": 4.0,
    "out_chans": 128,
    "window_size": 8,
    "global_attn_indexes": [1, 3],
    "prompt_embed_dim": 128,
    "mask_in_chans": 16,
    "num_multimask_outputs": 3,
    "decoder_depth": 2,
    "decoder_mlp_dim": 512,
    "decoder_num_heads": 4,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 128,
    "pixel_mean": [123.675, 116.28, 103.53],
    "pixel_std": [58.395, 57.12, 57.375],
}

# Held-out scene i is rendered from ``scene_rng(HELD_OUT_SEED, i)`` (the synthetic world's dataset
# convention). Training streams are seeded with three numbers ([seed, worker, TRAIN_STREAM_TAG]), so
# they never coincide with any dataset's scenes (two numbers) whatever the seeds.
HELD_OUT_SEED = 777
SAM_TRAIN_STREAM_TAG = 0x5A


def build_small_sam(checkpoint: Optional[str | Path] = None) -> Sam:
    """The small segment_anything ``Sam`` of :data:`SMALL_SAM_ARCH`, in eval mode.

    Args:
        checkpoint: a ``.safetensors`` (or ``weights_only`` torch) state dict with
            segment_anything's keys; None gives random weights.
    Raises:
        WeightsError: the file is missing, unreadable or does not fit the architecture.
    """
    a = SMALL_SAM_ARCH
    embedding_side = a["img_size"] // a["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=a["img_size"],
            patch_size=a["patch_size"],
            embed_dim=a["embed_dim"],
            depth=a["depth"],
            num_heads=a["num_heads"],
            mlp_ratio=a["mlp_ratio"],
            out_chans=a["out_chans"],
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            rel_pos_zero_init=True,
            window_size=a["window_size"],
            global_attn_indexes=list(a["global_attn_indexes"]),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a["prompt_embed_dim"],
            image_embedding_size=(embedding_side, embedding_side),
            input_image_size=(a["img_size"], a["img_size"]),
            mask_in_chans=a["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=a["num_multimask_outputs"],
            transformer=TwoWayTransformer(
                depth=a["decoder_depth"],
                embedding_dim=a["prompt_embed_dim"],
                mlp_dim=a["decoder_mlp_dim"],
                num_heads=a["decoder_num_heads"],
            ),
            transformer_dim=a["prompt_embed_dim"],
            iou_head_depth=a["iou_head_depth"],
            iou_head_hidden_dim=a["iou_head_hidden_dim"],
        ),
        pixel_mean=list(a["pixel_mean"]),
        pixel_std=list(a["pixel_std"]),
    )
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
        try:
            sam.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{checkpoint}: does not fit the small SAM architecture ({exc})") from exc
        logger.info("loaded small SAM weights from %s", checkpoint)
    sam.eval()
    return sam


def init_decoder_for_training(sam: Sam, qk_gain: float = 2.0, token_std: float = 0.02, neck_scale: float = 0.1) -> None:
    """Initialisation that lets the from-scratch decoder learn where the prompt is.

    With PyTorch's default initialisation the decoder's attention is nearly uniform over image
    positions and prompt tokens, so the predicted mask does not depend on the prompt's position
    and training sits on a constant-mask plateau (measured: no progress on a pure "point -> disc"
    task in 100 steps). Two changes, architecture untouched:

    * in every cross-attention of the two-way transformer the key projection starts equal to the
      query projection (orthogonal, gain ``qk_gain``), so attention logits start as a similarity of
      the positional encodings of prompt points and image positions;
    * the learned prompt and output tokens start small (std ``token_std`` instead of 1), so they do
      not drown the positional encodings they are added to.
    Measured on the point -> disc task: IoU 0.5 after 80 steps (with decoder lr 3e-3) instead of 0.
    """
    from segment_anything.modeling.transformer import Attention

    for name, module in sam.mask_decoder.transformer.named_modules():
        if isinstance(module, Attention) and ("cross_attn" in name or name.endswith("final_attn_token_to_image")):
            nn.init.orthogonal_(module.q_proj.weight, gain=qk_gain)
            module.k_proj.weight.data.copy_(module.q_proj.weight.data)
    prompt_encoder = sam.prompt_encoder
    embeddings = list(prompt_encoder.point_embeddings) + [
        prompt_encoder.not_a_point_embed,
        prompt_encoder.no_mask_embed,
        sam.mask_decoder.iou_token,
        sam.mask_decoder.mask_tokens,
    ]
    for embedding in embeddings:
        nn.init.normal_(embedding.weight, std=token_std)
    # The neck ends in a LayerNorm whose unit-scale output would also drown the positional
    # encodings in the decoder's attention; start it small.
    nn.init.constant_(sam.image_encoder.neck[-1].weight, neck_scale)


# --------------------------------------------------------------------------------------------
# Checkpoint files and loss plots (shared with small_clip)
# --------------------------------------------------------------------------------------------
def save_fp16_checkpoint(model: nn.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``model``'s state dict as fp16 safetensors with string metadata.

    Floating-point tensors are cast to fp16 (the fp32 master weights stay in ``model``); other
    dtypes are kept. Non-string metadata values are JSON-encoded.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()}
    save_file(state, str(path), metadata=meta)
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty dict when it has none)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises several error types for bad headers
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def plot_loss_curve(history: Sequence[dict[str, float]], path: str | Path, title: str, keys: Sequence[str]) -> Path:
    """Save a loss curve PNG (matplotlib, Agg) of ``keys`` from ``history`` rows (each has 'step')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key in keys:
        rows = [row for row in history if key in row]
        if rows:
            ax.plot([row["step"] for row in rows], [row[key] for row in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def cosine_lr(step: int, total: int, base_lr: float, warmup: int, final_ratio: float = 0.05) -> float:
    """Linear warmup then cosine decay to ``final_ratio * base_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------
@dataclass
class PromptGroup:
    """Prompts of one decoder call on one image (same structure, so they batch).

    Attributes:
        boxes: (N, 4) float32 XYXY in input pixels, or None.
        point_coords: (N, P, 2) float32 (x, y) in input pixels, or None.
        point_labels: (N, P) float32, 1 positive / 0 negative, or None.
        targets: (N,) int64 indices into the image's target masks.
        ambiguous: True for a single positive point without negatives (trains the multimask outputs).
    """

    boxes: Optional[np.ndarray]
    point_coords: Optional[np.ndarray]
    point_labels: Optional[np.ndarray]
    targets: np.ndarray
    ambiguous: bool


@dataclass
class PromptedImage:
    """One training scene with its prompts.

    Attributes:
        image: (H, W, 3) uint8.
        masks: (M, H, W) bool target masks (class-agnostic GT segments).
        groups: decoder calls on this image.
        coverage: (S, g, g) float32, share of each embedding cell covered by each of the scene's S
            segments (void excluded), for the segment-discrimination loss.
    """

    image: np.ndarray
    masks: np.ndarray
    groups: list[PromptGroup]
    coverage: np.ndarray


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box of a (H, W) bool mask (x1, y1 are the last covered pixel + 1)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float32)


def jitter_box(rng: np.random.Generator, box: np.ndarray, size: int, rel_std: float = 0.1, max_px: float = 20.0) -> np.ndarray:
    """SAM-style box noise: per-coordinate Gaussian, std ``rel_std`` x side, clipped at ``max_px``."""
    w, h = box[2] - box[0], box[3] - box[1]
    noise = rng.normal(0.0, 1.0, 4) * rel_std * np.array([w, h, w, h])
    noise = np.clip(noise, -max_px, max_px)
    out = box + noise.astype(np.float32)
    out = np.clip(out, 0, size)
    # Keep a valid box even under heavy noise on small objects.
    out[2] = max(out[2], out[0] + 1)
    out[3] = max(out[3], out[1] + 1)
    return out


def sample_points(rng: np.random.Generator, region: np.ndarray, count: int) -> np.ndarray:
    """``count`` (x, y) pixel coordinates drawn uniformly from the True pixels of ``region`` (H, W)."""
    ys, xs = np.nonzero(region)
    pick = rng.integers(0, len(xs), size=count)
    return np.stack([xs[pick], ys[pick]], axis=1).astype(np.float32)


def negative_region(mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Pixels outside ``mask`` near it (in the box grown 1.5x); anywhere outside if that is empty."""
    h, w = mask.shape
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = 0.75 * (box[2] - box[0]) + 4, 0.75 * (box[3] - box[1]) + 4
    near = np.zeros_like(mask)
    near[max(0, int(cy - hh)) : min(h, int(cy + hh) + 1), max(0, int(cx - hw)) : min(w, int(cx + hw) + 1)] = True
    region = near & ~mask
    return region if region.any() else ~mask


@dataclass
class PromptSampling:
    """How prompts are drawn for training.

    Attributes:
        prompts_per_image: GT segments prompted per scene.
        box_fraction: share of them prompted with a box (the rest with points).
        min_area: segments smaller than this (pixels) are not prompted.
        point_count_probs: probabilities of 1, 2, 3 positive points.
        negative_prob: probability that a point prompt also has one negative point.
        box_rel_std, box_max_px: box jitter.
        embedding_side: side of the image embedding (segment coverage is computed on it).
    """

    prompts_per_image: int = 6
    box_fraction: float = 0.5
    min_area: int = 24
    point_count_probs: tuple[float, float, float] = (0.5, 0.25, 0.25)
    negative_prob: float = 0.3
    box_rel_std: float = 0.1
    box_max_px: float = 20.0
    embedding_side: int = 16


def prompt_scene(
    rng: np.random.Generator,
    image: np.ndarray,
    id_map: np.ndarray,
    segments: Sequence[dict[str, Any]],
    sampling: PromptSampling,
) -> Optional[PromptedImage]:
    """Draw the training prompts of one rendered scene (None if it has no usable segment)."""
    size = id_map.shape[0]
    all_masks = [id_map == seg["id"] for seg in segments]
    masks = [m for m in all_masks if m.sum() >= sampling.min_area]
    if not masks:
        return None
    cell = size // sampling.embedding_side
    coverage = np.stack(all_masks).reshape(len(all_masks), sampling.embedding_side, cell, sampling.embedding_side, cell)
    coverage = coverage.mean(axis=(2, 4), dtype=np.float32)
    k = sampling.prompts_per_image
    chosen = rng.choice(len(masks), size=k, replace=len(masks) < k)
    targets = np.stack([masks[i] for i in chosen])
    n_box = int(round(k * sampling.box_fraction))
    box_idx = np.arange(n_box)
    point_idx = np.arange(n_box, k)
    groups: list[PromptGroup] = []
    if n_box:
        boxes = np.stack(
            [jitter_box(rng, mask_box(targets[i]), size, sampling.box_rel_std, sampling.box_max_px) for i in box_idx]
        )
        groups.append(PromptGroup(boxes=boxes, point_coords=None, point_labels=None, targets=box_idx, ambiguous=False))
    if len(point_idx):
        # One structure (positives, negatives) for the whole call, so the prompts batch without
        # extra padding tokens (SAM's own prompt encoder adds exactly one pad point).
        n_pos = int(rng.choice(3, p=np.asarray(sampling.point_count_probs)) + 1)
        n_neg = int(rng.random() < sampling.negative_prob)
        if any(targets[i].all() for i in point_idx):
            n_neg = 0  # a segment covering the whole image leaves nowhere to click "not this"
        coords, labels = [], []
        for i in point_idx:
            pos = sample_points(rng, targets[i], n_pos)
            if n_neg:
                neg = sample_points(rng, negative_region(targets[i], mask_box(targets[i])), n_neg)
                pos = np.concatenate([pos, neg])
            coords.append(pos)
            labels.append(np.array([1.0] * n_pos + [0.0] * n_neg, dtype=np.float32))
        groups.append(
            PromptGroup(
                boxes=None,
                point_coords=np.stack(coords),
                point_labels=np.stack(labels),
                targets=point_idx,
                ambiguous=(n_pos == 1 and n_neg == 0),
            )
        )
    return PromptedImage(image=image, masks=targets, groups=groups, coverage=coverage)


SceneRenderer = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]


def default_scene_renderer(size: int = 256) -> SceneRenderer:
    """The synthetic world's ``render_scene`` at ``size``."""
    from ..data.synthetic import render_scene

    return partial(render_scene, size=size)


class SyntheticPromptStream(torch.utils.data.IterableDataset):
    """Endless stream of :class:`PromptedImage` rendered on the fly, deterministic by seed.

    The stream is seeded with ``[seed, worker_id, SAM_TRAIN_STREAM_TAG]``; with zero or one loader
    worker it is the same sequence, so a run is reproducible whatever ``num_workers`` (0 or 1) is used.
    """

    def __init__(self, seed: int, sampling: PromptSampling, renderer: Optional[SceneRenderer] = None) -> None:
        super().__init__()
        self.seed = seed
        self.sampling = sampling
        self.renderer = renderer

    def __iter__(self) -> Iterator[PromptedImage]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, worker, SAM_TRAIN_STREAM_TAG])
        render = self.renderer or default_scene_renderer()
        while True:
            image, id_map, segments = render(rng)
            item = prompt_scene(rng, image, id_map, segments, self.sampling)
            if item is not None:
                yield item


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Phase 1: geometric warm-up of the decoder
# --------------------------------------------------------------------------------------------
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
    sam: Sam, warmup: GeometryWarmup, seed: int, weights: "SamLossWeights", log_every: int, progress: bool
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


# --------------------------------------------------------------------------------------------
# Phase 2: training
# --------------------------------------------------------------------------------------------
@dataclass
class SamTrainConfig:
    """Small-SAM training run. Defaults reproduce the shipped checkpoint."""

    steps: int = 600
    batch_size: int = 8
    seed: int = 0
    lr: float = 1e-3
    # The from-scratch decoder needs a higher rate to leave the constant-mask plateau quickly.
    decoder_lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    log_every: int = 20
    num_workers: int = 1
    # One compute thread plus one rendering worker fill the 2 cores; measured on the shared
    # machine, 2 OpenMP threads next to the worker ran up to 10x slower (threads spin-waiting).
    num_threads: int = 1
    eval_scenes: int = 50
    sampling: PromptSampling = field(default_factory=PromptSampling)
    loss: SamLossWeights = field(default_factory=SamLossWeights)
    warmup: GeometryWarmup = field(default_factory=GeometryWarmup)


@dataclass
class TrainResult:
    """What a training run produced."""

    checkpoint: Path
    loss_plot: Path
    log: Path
    final_loss: float
    wall_s: float
    metrics: dict[str, Any]


def _check_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output directory {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def train_small_sam(
    out_dir: str | Path,
    config: SamTrainConfig = SamTrainConfig(),
    renderer: Optional[SceneRenderer] = None,
    progress: bool = True,
) -> TrainResult:
    """Train the small SAM from scratch and write into ``out_dir``:

    ``sam_small.safetensors`` (fp16, metadata: arch, train config, steps, seed, metrics),
    ``loss_sam_small.png``, ``train_log_sam_small.json`` (loss history, timing, held-out metrics).
    """
    from tqdm import tqdm

    out = _check_out_dir(out_dir)
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    device = torch.device("cpu")
    sam = build_small_sam().to(device)
    init_decoder_for_training(sam)
    sam.train()
    start = time.time()
    history = warm_up_decoder(sam, config.warmup, config.seed, config.loss, config.log_every, progress)
    offset = int(history[-1]["step"]) if history else 0
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in sam.named_parameters():
        groups.setdefault((name.startswith("image_encoder."), _no_weight_decay(name, p)), []).append(p)
    optimizer = torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else config.weight_decay,
                "base_lr": config.lr if is_encoder else config.decoder_lr,
            }
            for (is_encoder, no_decay), params in groups.items()
        ],
        lr=config.lr,
        betas=(0.9, 0.999),
    )
    stream = SyntheticPromptStream(config.seed, config.sampling, renderer)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=config.batch_size,
        collate_fn=list,
        num_workers=config.num_workers,
        worker_init_fn=_single_thread_worker,
        prefetch_factor=4 if config.num_workers else None,
        persistent_workers=bool(config.num_workers),
    )
    window: dict[str, list[float]] = {"loss": [], "mask": [], "iou": [], "segment": [], "miou_single": []}
    batches = iter(loader)
    bar = tqdm(range(config.steps), desc="small SAM", disable=not progress, dynamic_ncols=True)
    for step in bar:
        lr = cosine_lr(step, config.steps, config.lr, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["base_lr"] / config.lr
        batch = next(batches)
        out_losses = forward_prompted_batch(sam, batch, config.loss, device)
        optimizer.zero_grad(set_to_none=True)
        out_losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), config.grad_clip)
        optimizer.step()
        for key in window:
            window[key].append(float(out_losses[key].detach()))
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            row = {"step": offset + step + 1, "phase": 2, "lr": lr, "elapsed_s": time.time() - start}
            row.update({k: float(np.mean(v)) for k, v in window.items()})
            history.append(row)
            window = {k: [] for k in window}
            bar.set_postfix(loss=f"{row['loss']:.3f}", miou=f"{row['miou_single']:.2f}")
            logger.info(
                "step %d loss %.4f mask %.4f iou %.4f segment %.4f miou(out0) %.3f",
                offset + step + 1, row["loss"], row["mask"], row["iou"], row["segment"], row["miou_single"],
            )
    wall = time.time() - start
    sam.eval()
    metrics = evaluate_small_sam(sam, num_scenes=config.eval_scenes, renderer=renderer, progress=progress)
    metadata = {
        "model": "segment_anything.Sam (small, possam_label.train.small_sam)",
        "arch": SMALL_SAM_ARCH,
        "train_config": asdict(config),
        "steps": config.steps,
        "decoder_warmup_steps": offset,
        "seed": config.seed,
        "train_wall_s": round(wall, 1),
        "final_loss": history[-1].get("loss") if history else None,
        "held_out_metrics": metrics,
    }
    ckpt = save_fp16_checkpoint(sam, out / "sam_small.safetensors", metadata)
    plot = plot_loss_curve(history, out / "loss_sam_small.png", f"small SAM ({offset} decoder warm-up + {config.steps} steps, seed {config.seed})", ["geometry", "loss", "mask", "iou", "segment"])
    log_path = out / "train_log_sam_small.json"
    log_path.write_text(json.dumps({"metadata": metadata, "history": history}, indent=1))
    return TrainResult(ckpt, plot, log_path, history[-1].get("loss", float("nan")) if history else float("nan"), wall, metrics)


_NO_DECAY_NAMES = ("pos_embed", "rel_pos", "point_embeddings", "not_a_point_embed", "no_mask_embed", "iou_token", "mask_tokens")


def _no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norms, biases, positional tables and learned prompt/output tokens are not decayed."""
    return param.ndim <= 1 or any(key in name for key in _NO_DECAY_NAMES)


def _single_thread_worker(worker_id: int) -> None:
    # Rendering is numpy work; keep the loader process from competing with training for threads.
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def center_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the mask pixel farthest from the mask boundary (a well-inside click)."""
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return np.array([x, y], dtype=np.float32)


def held_out_scenes(
    num_scenes: int, renderer: Optional[SceneRenderer] = None, seed: int = HELD_OUT_SEED
) -> Iterator[tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]]:
    """Scenes ``scene_rng(seed, i)``, i < num_scenes: never seen by a training stream."""
    from ..data.synthetic import scene_rng

    render = renderer or default_scene_renderer()
    for index in range(num_scenes):
        yield render(scene_rng(seed, index))


def thing_category_ids() -> set[int]:
    """Category ids of the synthetic world's thing classes."""
    from ..data.synthetic import world_classes

    return {c.id for c in world_classes() if c.isthing}


@torch.no_grad()
def evaluate_small_sam(
    sam: Sam,
    num_scenes: int = 50,
    renderer: Optional[SceneRenderer] = None,
    min_area: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean IoU of box and single-point prompts on held-out scenes, via ``SamPredictor``.

    Every GT segment of at least ``min_area`` pixels is prompted with its tight box
    (``multimask_output=False``) and with one click at its most interior pixel
    (``multimask_output=True``, the mask with the highest predicted IoU is kept, as SAM does).
    Returns mean IoUs overall and for things / stuff, and the number of segments.
    """
    from segment_anything import SamPredictor
    from tqdm import tqdm

    predictor = SamPredictor(sam)
    things_ids = thing_category_ids()
    rows: list[tuple[bool, float, float]] = []
    for image, id_map, segments in tqdm(held_out_scenes(num_scenes, renderer), total=num_scenes, desc="eval SAM", disable=not progress):
        predictor.set_image(image)
        for seg in segments:
            gt = id_map == seg["id"]
            if gt.sum() < min_area:
                continue
            box_masks, _, _ = predictor.predict(box=mask_box(gt), multimask_output=False)
            point = center_point(gt)[None]
            pt_masks, pt_scores, _ = predictor.predict(point_coords=point, point_labels=np.ones(1), multimask_output=True)
            best = pt_masks[int(np.argmax(pt_scores))]
            rows.append((seg["category_id"] in things_ids, _iou(box_masks[0], gt), _iou(best, gt)))
    if not rows:
        raise ValueError("evaluate_small_sam: the held-out scenes have no segment to prompt")
    arr = np.array([(t, b, p) for t, b, p in rows], dtype=np.float64)
    things, stuff = arr[:, 0] == 1, arr[:, 0] == 0

    def mean(col: int, sel: np.ndarray) -> Optional[float]:
        return round(float(arr[sel, col].mean()), 4) if sel.any() else None

    everything = np.ones(len(arr), dtype=bool)
    return {
        "num_scenes": num_scenes,
        "num_segments": int(len(arr)),
        "box_miou": mean(1, everything),
        "point_miou": mean(2, everything),
        "box_miou_things": mean(1, things),
        "point_miou_things": mean(2, things),
        "box_miou_stuff": mean(1, stuff),
        "point_miou_stuff": mean(2, stuff),
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
