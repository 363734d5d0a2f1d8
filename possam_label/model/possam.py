"""PosSAM: frozen SAM + frozen CLIP, trained pyramid, pixel decoder, transformer decoder, heads and LDP."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PosSAMConfig
from .clip_backbone import CLIPBackbone, TextClassifier
from .common import masked_average_pool
from .detail_stem import ImageDetailStem
from .heads import MaskHead, MaskQualityHead
from .ldp import LocalDiscriminativePooling
from .mask_shape import MaskShapeEncoder, crop_encoder_from_config
from .masked_crop import masked_crops
from .pixel_decoder import MSDeformAttnPixelDecoder
from .pyramid import SimpleFeaturePyramid
from .sam_backbone import SAMBackbone
from .transformer_decoder import MultiScaleMaskedTransformerDecoder
from .weights import WeightsError

logger = logging.getLogger(__name__)

HEADS_FORMAT = "possam-heads-v1"
FROZEN_PREFIXES = ("sam.", "clip.")
# Input pixels per cell of the mask features and mask logits (the pixel decoder's finest level).
MASK_STRIDE = 4


def clip_pooling_weights(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Where frozen CLIP pools each mask: the mask binarised on CLIP's dense grid.

    Args:
        mask_logits: (B, Q, H, W) mask logits.
        size: (h, w) of the dense CLIP features (stride 32 of CLIP's input).
    Returns:
        (B, Q, h, w) weights: 1 in the cells whose resized logit is above 0; a mask that covers no
        cell falls back to the sigmoid of its resized logits rather than pooling nothing.
    """
    small = F.interpolate(mask_logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    binary = (small > 0).float()
    empty = binary.sum(dim=(-2, -1)) == 0
    return torch.where(empty[..., None, None], small.sigmoid(), binary)


class PosSAM(nn.Module):
    """The PosSAM network.

    Args:
        sam: frozen SAM image encoder.
        clip: frozen CLIP model.
        pyramid: simple feature pyramid on the SAM map.
        pixel_decoder: multi-scale deformable pixel decoder.
        transformer_decoder: masked-attention decoder (holds the mask head).
        mask_quality_head: IoU head.
        ldp: Local Discriminative Pooling + void class.
        detail_stem: stride-4 pixel features added to the mask features (``pixel_decoder.detail_stem``;
            None: the mask features come from SAM alone, as in the paper).
    """

    def __init__(
        self,
        sam: SAMBackbone,
        clip: CLIPBackbone,
        pyramid: SimpleFeaturePyramid,
        pixel_decoder: MSDeformAttnPixelDecoder,
        transformer_decoder: MultiScaleMaskedTransformerDecoder,
        mask_quality_head: MaskQualityHead,
        ldp: LocalDiscriminativePooling,
        detail_stem: Optional[ImageDetailStem] = None,
    ) -> None:
        super().__init__()
        self.sam = sam
        self.clip = clip
        self.pyramid = pyramid
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.mask_quality_head = mask_quality_head
        self.ldp = ldp
        self.detail_stem = detail_stem

    @classmethod
    def from_config(cls, cfg: PosSAMConfig, load_backbones: bool = True) -> "PosSAM":
        """Build the network; backbone weights come from ``cfg.sam.checkpoint`` / ``cfg.clip.pretrained``.

        ``load_backbones=False`` keeps random backbone weights (tests, speed benchmarks).
        """
        sam_cfg = cfg.sam.resolved()
        sam_ckpt = None
        if load_backbones and sam_cfg.checkpoint is not None:
            sam_ckpt = sam_cfg.checkpoint if sam_cfg.checkpoint == "official" else cfg.resolve_path(sam_cfg.checkpoint)
        sam = SAMBackbone.from_config(sam_cfg, checkpoint=sam_ckpt)
        clip_pretrained = None
        if load_backbones and cfg.clip.pretrained is not None:
            p = cfg.clip.pretrained
            is_file = "/" in p or p.endswith((".safetensors", ".bin", ".pt", ".pth"))
            clip_pretrained = cfg.resolve_path(p) if is_file else p
        clip = CLIPBackbone.from_config(cfg.clip, default_image_size=sam_cfg.img_size, pretrained=clip_pretrained)
        pyramid = SimpleFeaturePyramid(sam.out_channels, cfg.pyramid.out_channels)
        pd = cfg.pixel_decoder
        pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels=cfg.pyramid.out_channels,
            conv_dim=pd.conv_dim,
            mask_dim=pd.mask_dim,
            num_layers=pd.num_layers,
            num_heads=pd.num_heads,
            num_points=pd.num_points,
            ffn_dim=pd.ffn_dim,
            dropout=pd.dropout,
            num_groups=pd.num_groups,
        )
        dc = cfg.decoder
        decoder = MultiScaleMaskedTransformerDecoder(
            in_channels=pd.conv_dim,
            hidden_dim=dc.hidden_dim,
            num_queries=dc.num_queries,
            num_layers=dc.num_layers,
            num_heads=dc.num_heads,
            ffn_dim=dc.ffn_dim,
            dropout=dc.dropout,
            pre_norm=dc.pre_norm,
            mask_head=MaskHead(dc.hidden_dim, pd.mask_dim, dc.mask_head_layers),
        )
        quality = MaskQualityHead(dc.hidden_dim, cfg.iou_head.hidden_dim, cfg.iou_head.num_layers)
        ldp = LocalDiscriminativePooling(
            mask_dim=pd.mask_dim,
            clip_dim=clip.dense_channels,
            hidden_dim=dc.hidden_dim,
            embed_dim=clip.embed_dim,
            fusion=cfg.ldp.fusion,
            use_query_embedding=cfg.ldp.use_query_embedding,
            logit_scale_init=cfg.ldp.logit_scale_init,
            logit_scale_max=cfg.ldp.logit_scale_max,
            shape_encoder=MaskShapeEncoder(dc.hidden_dim, cfg.ldp.shape_crop_size) if cfg.ldp.shape_encoder else None,
            crop_encoder=crop_encoder_from_config(dc.hidden_dim, cfg.ldp) if cfg.ldp.crop_encoder else None,
        )
        detail_stem = None
        if pd.detail_stem:
            detail_stem = ImageDetailStem(pd.mask_dim, pd.detail_stem_channels, pd.num_groups)
        return cls(sam, clip, pyramid, pixel_decoder, decoder, quality, ldp, detail_stem)

    # ---- frozen encoders -------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run both frozen encoders once.

        Args:
            pixels: (B, 3, S, S) padded images on the [0, 255] scale, S = SAM input size.
        Returns:
            sam_features (B, C_sam, S/16, S/16) and clip_features (B, C_clip, S_clip/32, S_clip/32).
        """
        return self.sam(pixels), self.clip.dense_features(pixels)

    # ---- trainable part ----------------------------------------------------------------------
    @property
    def needs_pixels(self) -> bool:
        """Whether the heads read the input pixels (detail stem or LDP's crop encoder)."""
        return self.detail_stem is not None or self.ldp.crop_encoder is not None

    def decode_masks(
        self, sam_features: torch.Tensor, pixels: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], Optional[torch.Tensor]]:
        """Pyramid, pixel decoder (and detail stem) and the masked-attention decoder.

        ``pixels`` (B, 3, S, S), the encoders' input, is needed when the model :attr:`needs_pixels`.

        Returns:
            mask_features (B, D, S/4, S/4); the decoder's stages, [(queries (B, Q, D), mask logits
            (B, Q, S/4, S/4))], the last one final; the SAM-normalised pixels (None when the heads
            do not read them).
        """
        levels = self.pyramid(sam_features)
        if self.needs_pixels and pixels is None:
            raise ValueError(
                "this model reads the input pixels (pixel_decoder.detail_stem or ldp.crop_encoder): forward_heads needs them"
            )
        normalized = self.sam.normalize(pixels.float()) if self.needs_pixels else None
        # Mask2Former runs the deformable encoder in fp32; the detail stem too (a few cheap
        # convolutions whose stride-4 output sets where the mask logits cross zero).
        with torch.autocast(device_type=sam_features.device.type, enabled=False):
            mask_features, multi_scale = self.pixel_decoder({k: v.float() for k, v in levels.items()})
            if self.detail_stem is not None:
                mask_features = mask_features + self.detail_stem(normalized)
        stages = self.transformer_decoder(multi_scale, mask_features)
        return mask_features, stages, normalized

    def stage_outputs(self, queries: torch.Tensor, mask_logits: torch.Tensor, embeddings: torch.Tensor, text: TextClassifier) -> dict[str, torch.Tensor]:
        """One decoder stage's outputs from its LDP ``embeddings`` (B, Q, D): {"pred_logits"
        (B, Q, K+1), "pred_masks" (the ``mask_logits``), "pred_iou" (B, Q), "pred_embeddings"}."""
        return {
            "pred_logits": self.ldp.classify(embeddings, text),
            "pred_masks": mask_logits,
            "pred_iou": self.mask_quality_head(queries),
            "pred_embeddings": embeddings,
        }

    def forward_heads(
        self,
        sam_features: torch.Tensor,
        clip_features: torch.Tensor,
        text: TextClassifier,
        all_stages: bool = True,
        pixels: Optional[torch.Tensor] = None,
    ) -> dict[str, Any]:
        """Decoder, heads and LDP on encoder features.

        ``all_stages=False`` (inference) classifies only the final stage; aux_outputs is then empty.
        ``pixels`` (B, 3, S, S), the encoders' input, is needed when the model :attr:`needs_pixels`.

        Returns:
            {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, S/4, S/4), "pred_iou": (B, Q),
             "pred_embeddings": (B, Q, D), "aux_outputs": [dicts of the earlier stages]}.
        """
        mask_features, stages, normalized = self.decode_masks(sam_features, pixels)
        fused = self.ldp.fuse(mask_features, clip_features)
        classified = stages if all_stages else stages[-1:]
        outputs = [
            self.stage_outputs(queries, mask_logits, self.ldp(fused, mask_features, mask_logits, queries, normalized), text)
            for queries, mask_logits in classified
        ]
        final = dict(outputs[-1])
        final["aux_outputs"] = outputs[:-1]
        return final

    def forward(self, pixels: torch.Tensor, text: TextClassifier) -> dict[str, Any]:
        """Full forward (training and inference): see :meth:`encode` and :meth:`forward_heads`."""
        sam_features, clip_features = self.encode(pixels)
        return self.forward_heads(sam_features, clip_features, text, pixels=pixels)

    @torch.no_grad()
    def out_vocab_logits(
        self,
        mask_logits: torch.Tensor,
        clip_features: torch.Tensor,
        text: TextClassifier,
        pixels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Frozen-CLIP classification of the predicted masks (spec section 4).

        What CLIP reads per mask is ``clip.out_vocab_source`` (:mod:`possam_label.model.masked_crop`):
        its dense features pooled inside the mask (spec), the mask cut out of the image as a crop,
        or the mean of the two embeddings (for thing classes only with ``clip.mask_crop_classes:
        things``).

        Args:
            mask_logits: (B, Q, H, W) final-stage mask logits.
            clip_features: (B, C_clip, h, w) dense CLIP features.
            pixels: (B, 3, S, S) the encoders' input on the [0, 255] scale; needed for masked crops.
        Returns:
            (B, Q, K) logits.
        """
        b, q = mask_logits.shape[:2]
        source = self.clip.out_vocab_source
        embeddings = []
        if source in ("mask_pool", "mean"):
            pooled = masked_average_pool(clip_features.float(), clip_pooling_weights(mask_logits, clip_features.shape[-2:]))
            embeddings.append(self.clip.embed_pooled(pooled.reshape(b * q, -1)).float())
        if source in ("masked_crop", "mean"):
            if pixels is None:
                raise ValueError("clip.out_vocab_source reads masked crops of the image: out_vocab_logits needs the pixels")
            # The pixels outside a mask take CLIP's mean colour: zero once normalised.
            crops = masked_crops(pixels, mask_logits, self.clip.mask_crop_size, self.clip.mask_crop_margin, self.clip.pixel_mean.flatten().tolist())
            embeddings.append(self.clip.embed_images(crops).float())
        joint = torch.stack([F.normalize(e, dim=-1) for e in embeddings]).mean(dim=0)
        logits = text.class_logits(joint.view(b, q, -1), self.clip.logit_scale)
        if source == "mean" and self.clip.mask_crop_classes == "things":
            if text.isthing is None:
                raise ValueError("clip.mask_crop_classes 'things' needs a text classifier that knows its thing classes")
            pooled_only = text.class_logits(embeddings[0].view(b, q, -1), self.clip.logit_scale)
            logits = torch.where(text.isthing.to(logits.device), logits, pooled_only)
        return logits

    # ---- checkpoints -------------------------------------------------------------------------
    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable parameters and buffers only (the frozen backbones are not saved)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(FROZEN_PREFIXES)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith(FROZEN_PREFIXES)]


def save_heads(model: PosSAM, path: str | Path, cfg: PosSAMConfig, train_vocabulary: Any, extra: Optional[dict[str, str]] = None, dtype: Optional[torch.dtype] = None) -> None:
    """Write the heads as safetensors with the config and training vocabulary in the metadata."""
    from safetensors.torch import save_file

    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().cpu() for k, v in model.heads_state_dict().items()}
    metadata = {
        "format": HEADS_FORMAT,
        "model_identity": json.dumps(cfg.model_identity(), sort_keys=True),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "train_vocabulary": json.dumps(train_vocabulary.to_dict(), sort_keys=True),
    }
    metadata.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)


def read_heads_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


_ABSENT = object()


def _diff(saved: Any, current: Any, defaults: Any, prefix: str = "") -> list[str]:
    """Differences between a checkpoint's identity and the config's; a key the checkpoint lacks
    matches when the config holds its default (the setting did not exist when it was saved)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        out = []
        for key in sorted(set(saved) | set(current)):
            out += _diff(saved.get(key, _ABSENT), current.get(key, _ABSENT), defaults.get(key, _ABSENT), f"{prefix}.{key}" if prefix else key)
        return out
    if saved is _ABSENT and defaults is not _ABSENT and current == defaults:
        return []
    if saved == current:
        return []
    show = lambda v: "(absent)" if v is _ABSENT else repr(v)  # noqa: E731
    return [f"{prefix}: checkpoint {show(saved)} vs config {show(current)}"]


def load_heads(model: PosSAM, path: str | Path, cfg: PosSAMConfig) -> dict[str, str]:
    """Load head weights, refusing a checkpoint made for another architecture.

    Returns:
        The checkpoint's metadata.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"PosSAM head checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: PosSAM head checkpoints must be .safetensors")
    metadata = read_heads_metadata(path)
    if metadata.get("format") != HEADS_FORMAT:
        raise WeightsError(f"{path}: not a PosSAM head checkpoint (metadata format {metadata.get('format')!r})")
    saved = json.loads(metadata["model_identity"])
    current = json.loads(json.dumps(cfg.model_identity(), sort_keys=True))
    differences = _diff(saved, current, json.loads(json.dumps(cfg.identity_defaults(), sort_keys=True)))
    if differences:
        raise WeightsError(f"{path}: checkpoint does not match the model config: " + "; ".join(differences))
    state = load_file(str(path))
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(FROZEN_PREFIXES)]
    if missing or unexpected:
        raise WeightsError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    logger.info("loaded PosSAM heads from %s", path)
    return metadata
