"""The full segment_anything ``Sam`` of a config (image encoder, prompt encoder, mask decoder),
for the two-stage baseline's automatic mask generator, and its batched image encoder."""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import Optional

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from ..config import SAMConfig
from ..model.weights import SAM_CHECKPOINT_URLS, WeightsError, download, load_state_dict

logger = logging.getLogger(__name__)


def _decoder_sizes(state: Optional[dict[str, torch.Tensor]], out_chans: int) -> dict[str, int]:
    """Prompt-encoder / mask-decoder sizes, read from a ``Sam`` state dict where it has them.

    Without a state dict (random weights) the sizes of the project's small SAM are used:
    depth 2, MLP 4 x ``out_chans``, IoU head hidden ``out_chans``. The number of attention heads
    is not visible in tensor shapes; it is ``out_chans // 32`` (head width 32), which gives the
    official 8 heads at 256 channels and the small SAM's 4 heads at 128.
    """
    sizes = {
        "depth": 2,
        "mlp_dim": 4 * out_chans,
        "num_heads": max(1, out_chans // 32),
        "attention_downsample_rate": 2,
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": out_chans,
        "mask_in_chans": 16,
    }
    if state is None:
        return sizes
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))}
    iou_ids = {int(m.group(1)) for k in state if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight$", k))}
    shapes = {
        "mlp_dim": ("mask_decoder.transformer.layers.0.mlp.lin1.weight", 0),
        "iou_head_hidden_dim": ("mask_decoder.iou_prediction_head.layers.0.weight", 0),
        "mask_in_chans": ("prompt_encoder.mask_downscaling.3.weight", 0),
    }
    for name, (key, dim) in shapes.items():
        if key in state:
            sizes[name] = int(state[key].shape[dim])
    if layer_ids:
        sizes["depth"] = max(layer_ids) + 1
    if iou_ids:
        sizes["iou_head_depth"] = max(iou_ids) + 1
    if "mask_decoder.mask_tokens.weight" in state:
        sizes["num_multimask_outputs"] = int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1
    q_proj = state.get("mask_decoder.transformer.final_attn_token_to_image.q_proj.weight")
    if q_proj is not None and q_proj.shape[0] > 0:
        sizes["attention_downsample_rate"] = max(1, out_chans // int(q_proj.shape[0]))
    return sizes


def build_sam(cfg: SAMConfig, checkpoint: Optional[str] = None) -> Sam:
    """The full segment_anything ``Sam`` of a config, with weights from ``checkpoint``.

    Args:
        cfg: SAM sizes (``variant`` vit_b / vit_l / vit_h, or custom sizes).
        checkpoint: a resolved path to a full ``Sam`` state dict (.pth / .safetensors),
            "official" (download the official checkpoint of ``variant``), or None (random weights).
    Raises:
        WeightsError: missing file, a checkpoint without prompt encoder / mask decoder (an
            image-encoder-only file cannot drive the automatic mask generator), or tensors that
            do not fit the config's sizes. The message names the file.
    """
    cfg = cfg.resolved()
    if checkpoint == "official":
        if cfg.variant not in SAM_CHECKPOINT_URLS:
            raise WeightsError("sam.checkpoint 'official' needs sam.variant vit_b, vit_l or vit_h")
        checkpoint = str(download(SAM_CHECKPOINT_URLS[cfg.variant], "sam.checkpoint"))
    state = None
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
        missing = [p for p in ("image_encoder.", "prompt_encoder.", "mask_decoder.") if not any(k.startswith(p) for k in state)]
        if missing:
            raise WeightsError(
                f"{checkpoint}: not a full segment_anything Sam checkpoint, it has no {', '.join(p + '*' for p in missing)} "
                "weights; the SAM+CLIP baseline runs SAM's automatic mask generator and needs the image encoder, "
                "prompt encoder and mask decoder"
            )
    if cfg.variant in sam_model_registry and cfg.variant != "custom":
        if cfg.img_size != 1024 or cfg.patch_size != 16 or cfg.out_chans != 256 or cfg.window_size != 14:
            raise ValueError(
                f"sam.variant {cfg.variant} is the official 1024-pixel model (patch 16, window 14, 256 channels); "
                f"got img_size={cfg.img_size}, patch_size={cfg.patch_size}, window_size={cfg.window_size}, "
                f"out_chans={cfg.out_chans}: use variant: custom"
            )
        sam = sam_model_registry[cfg.variant](checkpoint=None)
    else:
        sizes = _decoder_sizes(state, cfg.out_chans)
        grid = cfg.img_size // cfg.patch_size
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=cfg.img_size,
                patch_size=cfg.patch_size,
                in_chans=3,
                embed_dim=cfg.embed_dim,
                depth=cfg.depth,
                num_heads=cfg.num_heads,
                mlp_ratio=4.0,
                out_chans=cfg.out_chans,
                qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                act_layer=nn.GELU,
                use_rel_pos=True,
                rel_pos_zero_init=True,
                window_size=cfg.window_size,
                global_attn_indexes=tuple(cfg.global_attn_indexes),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=cfg.out_chans,
                image_embedding_size=(grid, grid),
                input_image_size=(cfg.img_size, cfg.img_size),
                mask_in_chans=sizes["mask_in_chans"],
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=cfg.out_chans,
                transformer=TwoWayTransformer(
                    depth=sizes["depth"],
                    embedding_dim=cfg.out_chans,
                    num_heads=sizes["num_heads"],
                    mlp_dim=sizes["mlp_dim"],
                    attention_downsample_rate=sizes["attention_downsample_rate"],
                ),
                num_multimask_outputs=sizes["num_multimask_outputs"],
                iou_head_depth=sizes["iou_head_depth"],
                iou_head_hidden_dim=sizes["iou_head_hidden_dim"],
            ),
            pixel_mean=cfg.pixel_mean,
            pixel_std=cfg.pixel_std,
        )
    sam.pixel_mean.copy_(torch.tensor(cfg.pixel_mean).view(-1, 1, 1))
    sam.pixel_std.copy_(torch.tensor(cfg.pixel_std).view(-1, 1, 1))
    if state is not None:
        try:
            sam.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{checkpoint}: does not fit the SAM of this config ({exc})") from exc
        logger.info("loaded SAM weights (encoder, prompt encoder, mask decoder) from %s", checkpoint)
    for p in sam.parameters():
        p.requires_grad_(False)
    return sam.eval()


class BatchedImageEncoder(nn.Module):
    """Stands in for ``Sam.image_encoder``: bf16 autocast on CUDA and features computed per batch.

    The automatic mask generator encodes one image at a time through ``SamPredictor``.
    :meth:`precompute` encodes a batch of already preprocessed images in one pass; when the
    generator later calls :meth:`forward` with one of those inputs (compared exactly), the
    stored features are returned instead of being recomputed.

    Args:
        encoder: segment_anything ``ImageEncoderViT`` (weights already loaded).
        autocast: run the encoder under bf16 autocast (CUDA only).
    """

    def __init__(self, encoder: ImageEncoderViT, autocast: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.img_size = encoder.img_size
        self.autocast = autocast
        self._ready: list[tuple[torch.Tensor, torch.Tensor]] = []

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised, padded -> (B, C, S/16, S/16) float32 embeddings."""
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.encoder(pixels).float()

    def precompute(self, pixels: torch.Tensor) -> None:
        """Encode a batch (B, 3, S, S) now; :meth:`forward` hands the results out one by one."""
        features = self.encode(pixels)
        self._ready = list(zip(pixels.split(1), features.split(1)))

    def clear(self) -> None:
        self._ready = []

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        for i, (stored, features) in enumerate(self._ready):
            if stored.shape == pixels.shape and torch.equal(stored, pixels):
                del self._ready[i]
                return features
        return self.encode(pixels)
