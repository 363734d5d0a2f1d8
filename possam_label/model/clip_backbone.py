"""Frozen open_clip model: dense ConvNeXt features, text classifier and the out-of-vocabulary head."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CLIPConfig
from .bn_convnet import register_with_timm
from .weights import WeightsError

logger = logging.getLogger(__name__)

# The 14 ViLD prompt templates (method spec 3.4).
VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)
SINGLE_TEMPLATE = ("a photo of a {}.",)
# clip.out_vocab_source values (possam_label.model.masked_crop).
OUT_VOCAB_SOURCES = ("mask_pool", "masked_crop", "mean")


class TextClassifier:
    """Normalised text embeddings of a vocabulary, one row per synonym.

    Attributes:
        embeddings: (S, D) L2-normalised, S = total synonyms.
        class_index: (S,) long, the class of each synonym row.
        num_classes: K.
        isthing: (K,) bool, thing classes (None: unknown).
    """

    def __init__(self, embeddings: torch.Tensor, class_index: torch.Tensor, num_classes: int, isthing: Optional[torch.Tensor] = None) -> None:
        self.embeddings = embeddings
        self.class_index = class_index
        self.num_classes = num_classes
        self.isthing = isthing

    def to(self, device: torch.device) -> "TextClassifier":
        isthing = self.isthing.to(device) if self.isthing is not None else None
        return TextClassifier(self.embeddings.to(device), self.class_index.to(device), self.num_classes, isthing)

    def class_logits(self, queries: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """Cosine logits with the max over each class's synonyms.

        Args:
            queries: (..., D) query embeddings (any norm; normalised here).
            scale: logit scale.
        Returns:
            (..., K) logits.
        """
        q = F.normalize(queries, dim=-1)
        per_synonym = scale * q @ self.embeddings.to(q.dtype).t()  # (..., S)
        out = per_synonym.new_full(per_synonym.shape[:-1] + (self.num_classes,), float("-inf"))
        index = self.class_index.expand(per_synonym.shape)
        return out.scatter_reduce(-1, index, per_synonym, reduce="amax", include_self=True)


def build_open_clip(cfg: CLIPConfig, pretrained: Optional[str]) -> tuple[nn.Module, Any]:
    """Create the open_clip model and its tokenizer.

    ``pretrained`` is an open_clip pretrained tag, a resolved local path, or None (random init).
    """
    import open_clip

    # A custom model_cfg may name the project's own timm tower (the shipped small CLIP does).
    register_with_timm()
    is_file = pretrained is not None and ("/" in pretrained or pretrained.endswith((".safetensors", ".bin", ".pt", ".pth")))
    if cfg.model_cfg is not None:
        model_cfg = dict(cfg.model_cfg)
        model = open_clip.CLIP(
            embed_dim=model_cfg.pop("embed_dim"),
            vision_cfg=model_cfg.pop("vision_cfg"),
            text_cfg=model_cfg.pop("text_cfg"),
            **model_cfg,
        )
        context_length = cfg.model_cfg["text_cfg"].get("context_length", 77)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        if pretrained is not None and not is_file:
            raise WeightsError(f"clip.pretrained {pretrained!r}: a custom clip.model_cfg needs a local weights file")
    else:
        if pretrained is not None and not is_file:
            # Fetch the tagged weights before building the (large) model so offline fails fast.
            pretrained_cfg = open_clip.get_pretrained_cfg(cfg.model_name, pretrained)
            if not pretrained_cfg:
                raise WeightsError(f"open_clip has no pretrained tag {pretrained!r} for model {cfg.model_name!r}")
            try:
                pretrained = str(open_clip.download_pretrained(pretrained_cfg))
            except Exception as exc:  # hub/network errors come in many types
                raise WeightsError(
                    f"could not download open_clip weights {cfg.model_name}/{pretrained} ({type(exc).__name__}: {exc}). "
                    "This machine may be offline: download the open_clip checkpoint elsewhere and pass its local "
                    "path with `clip.pretrained: /path/to/open_clip_model.safetensors` in the config "
                    "(or the matching command-line flag)."
                ) from exc
            is_file = True
        model = open_clip.create_model(cfg.model_name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(cfg.model_name)
    if is_file:
        if not Path(pretrained).is_file():
            raise WeightsError(f"CLIP weight file not found: {pretrained}")
        try:
            # open_clip's loader (weights_only=True) also adapts old checkpoint layouts.
            open_clip.load_checkpoint(model, pretrained, strict=True, weights_only=True)
        except RuntimeError as exc:
            raise WeightsError(f"{pretrained}: does not fit the CLIP model of this config ({exc})") from exc
        logger.info("loaded CLIP weights from %s", pretrained)
    return model, tokenizer


class CLIPBackbone(nn.Module):
    """Frozen CLIP with a timm ConvNeXt image tower (as FC-CLIP uses it).

    Args:
        clip_model: an ``open_clip.CLIP`` whose ``visual`` is a ``TimmModel`` (ConvNeXt trunk).
        tokenizer: its tokenizer.
        image_size: side of the square image fed to the image tower.
        pixel_mean, pixel_std: normalisation on the [0, 255] scale.
        templates: prompt templates.
        text_chunk_size: prompts per text-encoder call.
        out_vocab_source: what the out-of-vocabulary classifier reads per mask, one of
            ``OUT_VOCAB_SOURCES`` (see :meth:`PosSAM.out_vocab_logits`).
        mask_crop_size: side of the masked crops; None: the image tower's own input size.
        mask_crop_margin: a mask's box is made square and enlarged by this factor for its crop.
        mask_crop_classes: ``"all"``, or ``"things"``: the masked crops score thing classes only,
            stuff classes keep the mask-pooled logits (with ``out_vocab_source: mean``).
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Any,
        image_size: int,
        pixel_mean: list[float],
        pixel_std: list[float],
        templates: tuple[str, ...] = VILD_TEMPLATES,
        text_chunk_size: int = 128,
        out_vocab_source: str = "mask_pool",
        mask_crop_size: Optional[int] = None,
        mask_crop_margin: float = 1.4,
        mask_crop_classes: str = "all",
    ) -> None:
        super().__init__()
        if out_vocab_source not in OUT_VOCAB_SOURCES:
            raise ValueError(f"clip.out_vocab_source must be one of {', '.join(OUT_VOCAB_SOURCES)}, got {out_vocab_source!r}")
        if mask_crop_margin < 1.0:
            raise ValueError(f"clip.mask_crop_margin must be >= 1, got {mask_crop_margin}")
        if mask_crop_classes not in ("all", "things"):
            raise ValueError(f"clip.mask_crop_classes must be 'all' or 'things', got {mask_crop_classes!r}")
        visual = clip_model.visual
        if not hasattr(visual, "trunk") or not hasattr(visual.trunk, "forward_features"):
            raise ValueError(
                "CLIPBackbone needs an open_clip model with a timm image tower (e.g. ConvNeXt); "
                f"got {type(visual).__name__}"
            )
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.templates = templates
        self.text_chunk_size = text_chunk_size
        self.out_vocab_source = out_vocab_source
        tower_size = getattr(visual, "image_size", None)
        tower_size = tower_size[0] if isinstance(tower_size, (tuple, list)) else tower_size
        self.mask_crop_size = int(mask_crop_size or tower_size or image_size)
        self.mask_crop_margin = mask_crop_margin
        self.mask_crop_classes = mask_crop_classes
        self.dense_channels = int(visual.trunk.num_features)
        self.embed_dim = int(clip_model.text_projection.shape[1])
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)
        self._text_cache: dict[str, TextClassifier] = {}
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @classmethod
    def from_config(cls, cfg: CLIPConfig, default_image_size: int, pretrained: Optional[str]) -> "CLIPBackbone":
        model, tokenizer = build_open_clip(cfg, pretrained)
        templates = {"vild": VILD_TEMPLATES, "single": SINGLE_TEMPLATE}.get(cfg.templates)
        if templates is None:
            raise ValueError(f"clip.templates must be 'vild' or 'single', got {cfg.templates!r}")
        return cls(
            model,
            tokenizer,
            image_size=cfg.image_size or default_image_size,
            pixel_mean=cfg.pixel_mean,
            pixel_std=cfg.pixel_std,
            templates=templates,
            text_chunk_size=cfg.text_chunk_size,
            out_vocab_source=cfg.out_vocab_source,
            mask_crop_size=cfg.mask_crop_size,
            mask_crop_margin=cfg.mask_crop_margin,
            mask_crop_classes=cfg.mask_crop_classes,
        )

    def train(self, mode: bool = True) -> "CLIPBackbone":
        return super().train(False)

    @property
    def logit_scale(self) -> torch.Tensor:
        """Frozen CLIP temperature, exp'd and clamped at 100."""
        return self.clip.logit_scale.exp().clamp(max=100.0)

    @torch.no_grad()
    def dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Dense image features.

        Args:
            pixels: (B, 3, S, S) float on the [0, 255] scale (the padded square image at any S).
        Returns:
            (B, C_dense, image_size/32, image_size/32) trunk features after ``norm_pre``.
        """
        if pixels.shape[-1] != self.image_size:
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        x = (pixels - self.pixel_mean) / self.pixel_std
        return self.clip.visual.trunk.forward_features(x)

    @torch.no_grad()
    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Project mask-pooled dense features through CLIP's own head.

        Args:
            pooled: (N, C_dense).
        Returns:
            (N, D) embeddings in the joint space (not normalised).
        """
        visual = self.clip.visual
        x = visual.trunk.forward_head(pooled[:, :, None, None])
        return visual.head(x)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings of whole images (e.g. masked crops), at their own size.

        Args:
            images: (N, 3, s, s) float on the [0, 255] scale.
        Returns:
            (N, D) embeddings in the joint space (not normalised).
        """
        return self.clip.encode_image((images - self.pixel_mean) / self.pixel_std)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(P,) prompts -> (P, D) un-normalised text features, in chunks."""
        device = self.clip.text_projection.device
        out = []
        for start in range(0, len(prompts), self.text_chunk_size):
            tokens = self.tokenizer(prompts[start : start + self.text_chunk_size]).to(device)
            out.append(self.clip.encode_text(tokens).float())
        return torch.cat(out)

    @torch.no_grad()
    def text_classifier(self, vocabulary: Any) -> TextClassifier:
        """Text classifier of a :class:`~possam_label.vocab.Vocabulary`, cached by its identity."""
        key = vocabulary.identity()
        cached = self._text_cache.get(key)
        device = self.clip.text_projection.device
        if cached is not None:
            return cached.to(device)
        synonyms = [(ci, s) for ci, syns in enumerate(vocabulary.synonyms) for s in syns]
        prompts = [t.format(s) for _, s in synonyms for t in self.templates]
        feats = F.normalize(self.encode_prompts(prompts), dim=-1).view(len(synonyms), len(self.templates), -1)
        embeddings = F.normalize(feats.mean(dim=1), dim=-1)
        class_index = torch.tensor([ci for ci, _ in synonyms], dtype=torch.long, device=device)
        isthing = torch.tensor(list(vocabulary.isthing), dtype=torch.bool, device=device)
        classifier = TextClassifier(embeddings, class_index, len(vocabulary), isthing)
        self._text_cache[key] = classifier
        return classifier
