"""PosSAMPredictor: images + vocabulary -> panoptic predictions. The object users hold."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .config import DEFAULT_CONFIG, PosSAMConfig, load_config  # DEFAULT_CONFIG: re-exported
from .model.clip_backbone import TextClassifier
from .model.mase import ensemble
from .model.possam import PosSAM, load_heads
from .model.postprocess import panoptic_inference
from .panoptic import renumber, resize_ids
from .predictor_base import BatchPredictor
from .transforms import preprocess, resize_longest_side_shape  # resize_longest_side_shape: re-exported
from .types import PanopticPrediction, SegmentInfo
from .vocab import Vocabulary, load_vocabulary, resolve_vocabulary_spec

logger = logging.getLogger(__name__)

# Re-exported for callers that import them from here.
__all__ = ["DEFAULT_CONFIG", "PRECISIONS", "PosSAMPredictor", "preprocess", "resize_longest_side_shape"]


PRECISIONS = ("auto", "bf16", "fp32")


class PosSAMPredictor(BatchPredictor):
    """Loads PosSAM once and labels batches of images.

    Args:
        model: the network (moved to ``device``, eval mode).
        config: its config.
        vocabulary: default vocabulary.
        train_vocabulary: the classes the heads were trained on (seen classes for FC-CLIP's ensemble).
        device: where to run.
        weight_files: {"sam": path, "clip": path, "heads": path} for identity hashes.
        precision: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "bf16" (bf16 autocast on any
            device, CPU included) or "fp32".
        compile: wrap the two encoders and the heads in ``torch.compile`` (first batches of each
            new input shape are slow while it compiles).
    """

    def __init__(
        self,
        model: PosSAM,
        config: PosSAMConfig,
        vocabulary: Vocabulary,
        train_vocabulary: Vocabulary,
        device: torch.device,
        weight_files: Optional[dict[str, Optional[str]]] = None,
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = model.to(device).eval()
        self.precision = precision
        self.autocast_dtype: Optional[torch.dtype] = (
            torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else None
        )
        self._encode = torch.compile(self.model.encode) if compile else self.model.encode
        self._forward_heads = torch.compile(self.model.forward_heads) if compile else self.model.forward_heads
        self.config = config
        self.vocabulary = vocabulary
        self.train_vocabulary = train_vocabulary
        self.device = device
        self.weight_files = weight_files or {}

    @classmethod
    def from_config(
        cls,
        config: Union[str, Path, PosSAMConfig] = DEFAULT_CONFIG,
        checkpoint: Optional[str] = None,
        device: Optional[Union[str, torch.device]] = None,
        overrides: Optional[dict[str, Any]] = None,
        load_backbones: bool = True,
        precision: str = "auto",
        compile: bool = False,
    ) -> "PosSAMPredictor":
        """Build from a YAML config.

        Args:
            config: YAML path or a loaded config.
            checkpoint: PosSAM head weights; default ``config.checkpoint`` (None: random heads).
            device: "cpu", "cuda", ... ; default CUDA when available.
            overrides: nested mapping merged over the YAML (e.g. ``{"mase": {"mode": "fc_clip"}}``).
            load_backbones: False keeps random backbone weights (tests and speed benchmarks).
            precision, compile: see the class.
        """
        cfg = config if isinstance(config, PosSAMConfig) else load_config(config, overrides)
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # Parts without weight files are initialised from a fixed seed, so random-weight
        # configs (tests, speed runs) build the same model in every process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            model = PosSAM.from_config(cfg, load_backbones=load_backbones)
        heads = checkpoint if checkpoint is not None else cfg.resolve_path(cfg.checkpoint)
        train_vocabulary = load_vocabulary(resolve_vocabulary_spec(cfg.train_vocabulary, cfg.resolve_path))
        if heads is not None:
            metadata = load_heads(model, heads, cfg)
            if "train_vocabulary" in metadata:
                import json

                train_vocabulary = Vocabulary.from_dict(json.loads(metadata["train_vocabulary"]))
        vocabulary = load_vocabulary(resolve_vocabulary_spec(cfg.vocabulary, cfg.resolve_path))
        files = {
            "sam": cfg.resolve_path(cfg.sam.checkpoint) if load_backbones and cfg.sam.checkpoint not in (None, "official") else None,
            "clip": cfg.resolve_path(cfg.clip.pretrained) if load_backbones and cfg.clip.pretrained and Path(cfg.resolve_path(cfg.clip.pretrained)).is_file() else None,
            "heads": heads,
        }
        return cls(model, cfg, vocabulary, train_vocabulary, dev, files, precision=precision, compile=compile)

    def text_classifier(self, vocabulary: Vocabulary) -> TextClassifier:
        return self.model.clip.text_classifier(vocabulary)

    def forward_raw(self, pixels: torch.Tensor, text: TextClassifier) -> tuple[dict[str, Any], torch.Tensor]:
        """Network outputs of the final stage and the frozen-CLIP logits for padded inputs."""
        dtype = self.autocast_dtype
        with torch.autocast(device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            sam_features, clip_features = self._encode(pixels)
            outputs = self._forward_heads(sam_features, clip_features, text, all_stages=False, pixels=pixels)
            out_logits = self.model.out_vocab_logits(outputs["pred_masks"], clip_features, text, pixels=pixels)
        # Post-processing (softmax ensembles, thresholds, argmax) runs in float32.
        outputs = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in outputs.items()}
        return outputs, out_logits.float()

    def predict_batch(self, images: Sequence[np.ndarray], vocab: Vocabulary, text: TextClassifier) -> list[PanopticPrediction]:
        """Predictions of one batch (see :meth:`BatchPredictor.predict`)."""
        pixels, shapes = preprocess(images, self.model.sam.img_size, self.config.sam.pixel_mean, self.device)
        outputs, out_logits = self.forward_raw(pixels, text)
        return self.postprocess(images, shapes, outputs, out_logits, vocab, text)

    def postprocess(
        self,
        images: Sequence[np.ndarray],
        shapes: Sequence[tuple[int, int]],
        outputs: dict[str, Any],
        out_logits: torch.Tensor,
        vocab: Vocabulary,
        text: TextClassifier,
    ) -> list[PanopticPrediction]:
        """Panoptic predictions at each image's size from :meth:`forward_raw`'s outputs.

        ``shapes`` are the resized (h, w) of each image inside the padded square input, as
        :func:`preprocess` returns them.
        """
        seen = torch.tensor(vocab.seen_mask(self.train_vocabulary), dtype=torch.bool, device=self.device)
        isthing = text.isthing  # (K,) bool, built with the text classifier
        size = self.model.sam.img_size
        post = self.config.postprocess
        results = []
        for b, image in enumerate(images):
            result = ensemble(outputs["pred_logits"][b], out_logits[b], outputs["pred_iou"][b], seen, self.config.mase)
            keep = torch.nonzero(result.keep).flatten()
            h, w = shapes[b]
            if keep.numel() == 0:  # nothing but void: an empty panoptic map
                results.append(PanopticPrediction(np.zeros(image.shape[:2], dtype=np.int32), []))
                continue
            masks = outputs["pred_masks"][b, keep].float()
            masks = F.interpolate(masks[None], size=(size, size), mode="bilinear", align_corners=False)[0, :, :h, :w]
            panoptic, segments = panoptic_inference(
                masks,
                result.scores[keep],
                result.labels[keep],
                isthing,
                post.object_mask_threshold,
                post.overlap_threshold,
                post.min_segment_area,
            )
            id_map = resize_ids(panoptic.cpu().numpy(), image.shape[0], image.shape[1])
            results.append(self._to_prediction(id_map, segments, keep, result, vocab))
        return results

    def _to_prediction(self, id_map: np.ndarray, segments: list, keep: torch.Tensor, result: Any, vocab: Vocabulary) -> PanopticPrediction:
        """Renumber the segments that survive resizing, with their areas and boxes at the image's size."""
        panoptic_map, kept = renumber(id_map, [seg.id for seg in segments])
        infos: list[SegmentInfo] = []
        for k in kept:
            seg = segments[k.index]
            q = int(keep[seg.query])
            infos.append(
                SegmentInfo(
                    id=k.new_id,
                    category_id=int(vocab.category_ids[seg.label]),
                    category=vocab.names[seg.label],
                    isthing=bool(vocab.isthing[seg.label]),
                    score=float(result.scores[q]),
                    mask_quality=float(result.mask_quality[q]),
                    in_vocab_prob=float(result.in_vocab_probs[q, seg.label]),
                    out_vocab_prob=float(result.out_vocab_probs[q, seg.label]),
                    area=k.area,
                    bbox=k.bbox,
                )
            )
        return PanopticPrediction(panoptic_map=panoptic_map, segments=infos)
