"""A small SAM (segment_anything's own modules) trained from scratch on the synthetic world.

No pretrained SAM weights can reach the machines this project runs on, so the project ships a
small promptable, class-agnostic segmenter trained on scenes rendered on the fly by
:mod:`possam_label.synthetic.world`. The network is segment_anything's ``Sam`` with fixed small
sizes (:data:`SMALL_SAM_ARCH`); its state-dict keys are exactly segment_anything's
(``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``), so ``SamPredictor``,
``SamAutomaticMaskGenerator`` and PosSAM's :class:`~possam_label.model.sam_backbone.SAMBackbone`
load it unchanged.

Training from scratch on 2 CPU cores needs three additions to SAM's recipe (measured, see the
docstrings): :func:`init_decoder_for_training` (tied query/key projections, small tokens, small
neck output), phase 1 :func:`~.sam_warmup.warm_up_decoder` (decoder-only geometry task until it
localises prompts) and the auxiliary :func:`~.sam_losses.segment_discrimination_loss` on the image
embedding. Without
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
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from ..train.checkpoints import load_checkpoint_into, prepare_out_dir, save_fp16_checkpoint
from ..train.plots import plot_loss_curve
from ..train.schedules import cosine_lr
from .sam_losses import SamLossWeights, forward_prompted_batch
from .sam_eval import evaluate_small_sam
from .sam_prompts import PromptSampling, SyntheticPromptStream
from .sam_warmup import GeometryWarmup, warm_up_decoder
from .world import SceneRenderer

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
        load_checkpoint_into(sam, checkpoint, "the small SAM architecture")
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
    # Held-out scenes run through SamAutomaticMaskGenerator after training (0: skip).
    eval_amg_scenes: int = 0
    # Write OUT/sam_small_latest.safetensors every this many steps (0: only at the end), so a
    # long run that is stopped still leaves its last weights.
    save_every: int = 0
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

    out = prepare_out_dir(out_dir)
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    device = torch.device("cpu")
    sam = build_small_sam().to(device)
    init_decoder_for_training(sam)
    sam.train()
    start = time.time()
    history = warm_up_decoder(sam, config.warmup, config.seed, config.loss, config.log_every, progress)
    offset = int(history[-1]["step"]) if history else 0
    optimizer = _optimizer(sam, config)
    loader = _prompt_loader(config, renderer)
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
        if config.save_every and (step + 1) % config.save_every == 0:
            save_fp16_checkpoint(sam, out / "sam_small_latest.safetensors", {"steps": step + 1, "seed": config.seed})
    wall = time.time() - start
    sam.eval()
    metrics = evaluate_small_sam(sam, num_scenes=config.eval_scenes, renderer=renderer, progress=progress, amg_scenes=config.eval_amg_scenes)
    metadata = {
        "model": "segment_anything.Sam (small, possam_label.synthetic.small_sam)",
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


def _optimizer(sam: Sam, config: SamTrainConfig) -> torch.optim.AdamW:
    """AdamW with the encoder at ``lr`` and the decoder at ``decoder_lr`` (each group's
    "base_lr", scaled by the schedule), no weight decay on :func:`_no_weight_decay` parameters."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in sam.named_parameters():
        groups.setdefault((name.startswith("image_encoder."), _no_weight_decay(name, p)), []).append(p)
    return torch.optim.AdamW(
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


def _prompt_loader(config: SamTrainConfig, renderer: Optional[SceneRenderer]) -> torch.utils.data.DataLoader:
    """Batches of ``config.batch_size`` prompted scenes rendered on the fly (in ``num_workers`` processes)."""
    stream = SyntheticPromptStream(config.seed, config.sampling, renderer)
    return torch.utils.data.DataLoader(
        stream,
        batch_size=config.batch_size,
        collate_fn=list,
        num_workers=config.num_workers,
        worker_init_fn=_single_thread_worker,
        prefetch_factor=4 if config.num_workers else None,
        persistent_workers=bool(config.num_workers),
    )


_NO_DECAY_NAMES = ("pos_embed", "rel_pos", "point_embeddings", "not_a_point_embed", "no_mask_embed", "iou_token", "mask_tokens")


def _no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norms, biases, positional tables and learned prompt/output tokens are not decayed."""
    return param.ndim <= 1 or any(key in name for key in _NO_DECAY_NAMES)


def _single_thread_worker(worker_id: int) -> None:
    # Rendering is numpy work; keep the loader process from competing with training for threads.
    torch.set_num_threads(1)
