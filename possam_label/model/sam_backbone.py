"""Frozen SAM image encoder (segment_anything ``ImageEncoderViT``) as PosSAM's mask backbone."""

from __future__ import annotations

import logging
from functools import partial
from typing import Optional

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from ..config import SAMConfig
from .weights import SAM_CHECKPOINT_URLS, WeightsError, download, load_state_dict

logger = logging.getLogger(__name__)


class SAMBackbone(nn.Module):
    """SAM's ViT image encoder, frozen, exposing the neck output and the last block's output.

    Args:
        img_size: encoder input side (1024 for the official models); inputs must be exactly this size.
        patch_size: ViT patch size (16).
        embed_dim, depth, num_heads, global_attn_indexes, window_size: ViT sizes.
        out_chans: neck channels (256 for the official models).
        feature: "neck" (``out_chans`` channels) or "last_block" (``embed_dim`` channels).
        pixel_mean, pixel_std: per-channel normalisation on the [0, 255] scale.
    """

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        global_attn_indexes: list[int],
        window_size: int,
        out_chans: int,
        feature: str,
        pixel_mean: list[float],
        pixel_std: list[float],
    ) -> None:
        super().__init__()
        if feature not in ("neck", "last_block"):
            raise ValueError(f"sam.feature must be 'neck' or 'last_block', got {feature!r}")
        if img_size % patch_size:
            raise ValueError(f"sam.img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.stride = patch_size
        self.feature = feature
        self.out_channels = out_chans if feature == "neck" else embed_dim
        self.encoder = ImageEncoderViT(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=3,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4.0,
            out_chans=out_chans,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
            use_rel_pos=True,
            rel_pos_zero_init=True,
            window_size=window_size,
            global_attn_indexes=tuple(global_attn_indexes),
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    @classmethod
    def from_config(cls, cfg: SAMConfig, checkpoint: Optional[str] = None) -> "SAMBackbone":
        """Build from config; ``checkpoint`` is a resolved path, "official", or None (random init)."""
        cfg = cfg.resolved()
        if checkpoint == "official":
            # Fetch before building the (large) encoder, so an offline machine fails fast.
            if cfg.variant not in SAM_CHECKPOINT_URLS:
                raise WeightsError("sam.checkpoint 'official' needs sam.variant vit_b, vit_l or vit_h")
            checkpoint = str(download(SAM_CHECKPOINT_URLS[cfg.variant], "sam.checkpoint"))
        model = cls(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            global_attn_indexes=cfg.global_attn_indexes,
            window_size=cfg.window_size,
            out_chans=cfg.out_chans,
            feature=cfg.feature,
            pixel_mean=cfg.pixel_mean,
            pixel_std=cfg.pixel_std,
        )
        if checkpoint is not None:
            model.load_sam_checkpoint(checkpoint)
        return model

    def load_sam_checkpoint(self, path: str) -> None:
        """Load the image encoder from a segment_anything checkpoint (full ``Sam`` state dict or encoder only)."""
        state = load_state_dict(path)
        prefix = "image_encoder."
        encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not encoder_state:
            encoder_state = state
        try:
            self.encoder.load_state_dict({k: v.float() for k, v in encoder_state.items()}, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path}: does not fit the SAM encoder of this config ({exc})") from exc
        logger.info("loaded SAM encoder weights from %s", path)

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "SAMBackbone":
        # Frozen: stays in eval mode whatever the parent does.
        return super().train(False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 255] -> normalised input."""
        return (pixels - self.pixel_mean) / self.pixel_std

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode padded images.

        Args:
            pixels: (B, 3, img_size, img_size) float on the [0, 255] scale.
        Returns:
            (B, out_channels, img_size/16, img_size/16) features (stride 16).
        """
        if pixels.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"SAM encoder needs {self.img_size}x{self.img_size} input, got {tuple(pixels.shape[-2:])}")
        enc = self.encoder
        x = enc.patch_embed(self.normalize(pixels))
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for blk in enc.blocks:
            x = blk(x)
        x = x.permute(0, 3, 1, 2)
        if self.feature == "last_block":
            return x
        return enc.neck(x)
