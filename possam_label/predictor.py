"""PosSAMPredictor: images + vocabulary -> panoptic predictions. The object users hold."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .config import DEFAULT_CONFIG, REPO_ROOT, PosSAMConfig, load_config  # DEFAULT_CONFIG, REPO_ROOT: re-exported
from .model.clip_backbone import TextClassifier
from .model.mase import ensemble
from .model.possam import PosSAM, load_heads
from .model.postprocess import panoptic_inference
from .model.weights import sha256_file
from .types import PanopticPrediction, SegmentInfo
from .vocab import Vocabulary, load_vocabulary

logger = logging.getLogger(__name__)


def resize_longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """SAM's ResizeLongestSide output shape."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(images: Sequence[np.ndarray], size: int, pad_value: Sequence[float], device: torch.device) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Resize each image's longest side to ``size`` and pad bottom/right to ``size x size``.

    Args:
        images: (H, W, 3) uint8 RGB arrays of any sizes.
        size: encoder input side.
        pad_value: per-channel fill of the padding ([0, 255] scale; SAM's pixel mean so that
            padding is zero after normalisation).
    Returns:
        pixels (B, 3, size, size) float32 on ``device`` and the resized (h, w) of each image.
    """
    batch = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=device)
    batch[:] = torch.tensor(pad_value, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    shapes = []
    for i, image in enumerate(images):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image {i}: expected an (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
        h, w = resize_longest_side_shape(arr.shape[0], arr.shape[1], size)
        # Arrays from Ray are read-only; torch wants writable memory.
        arr = np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy()
        t = torch.from_numpy(arr).to(device).permute(2, 0, 1)[None].float()
        if (h, w) != tuple(arr.shape[:2]):
            t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 255)
        batch[i, :, :h, :w] = t[0]
        shapes.append((h, w))
    return batch, shapes


def _resize_ids(id_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an id map."""
    if id_map.shape == (height, width):
        return id_map
    rows = np.minimum((np.arange(height) + 0.5) * id_map.shape[0] / height, id_map.shape[0] - 1).astype(np.int64)
    cols = np.minimum((np.arange(width) + 0.5) * id_map.shape[1] / width, id_map.shape[1] - 1).astype(np.int64)
    return id_map[rows[:, None], cols[None, :]]


PRECISIONS = ("auto", "bf16", "fp32")


class PosSAMPredictor:
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
        self._identity: Optional[dict[str, Optional[str]]] = None

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
        train_vocabulary = load_vocabulary(_resolve_vocab(cfg, cfg.train_vocabulary))
        if heads is not None:
            metadata = load_heads(model, heads, cfg)
            if "train_vocabulary" in metadata:
                import json

                train_vocabulary = Vocabulary.from_dict(json.loads(metadata["train_vocabulary"]))
        vocabulary = load_vocabulary(_resolve_vocab(cfg, cfg.vocabulary))
        files = {
            "sam": cfg.resolve_path(cfg.sam.checkpoint) if load_backbones and cfg.sam.checkpoint not in (None, "official") else None,
            "clip": cfg.resolve_path(cfg.clip.pretrained) if load_backbones and cfg.clip.pretrained and Path(cfg.resolve_path(cfg.clip.pretrained)).is_file() else None,
            "heads": heads,
        }
        return cls(model, cfg, vocabulary, train_vocabulary, dev, files, precision=precision, compile=compile)

    def weights_identity(self) -> dict[str, Optional[str]]:
        """sha256 of each weight file (None for parts with random or hub weights)."""
        if self._identity is None:
            self._identity = {k: sha256_file(v) if v and Path(v).is_file() else None for k, v in self.weight_files.items()}
        return dict(self._identity)

    def text_classifier(self, vocabulary: Vocabulary) -> TextClassifier:
        return self.model.clip.text_classifier(vocabulary)

    @torch.inference_mode()
    def predict(
        self,
        images: Sequence[np.ndarray],
        vocabulary: Union[Vocabulary, str, None] = None,
        batch_size: int = 8,
    ) -> list[PanopticPrediction]:
        """Panoptic segmentation of a list of images.

        Args:
            images: (H, W, 3) uint8 RGB arrays, any sizes.
            vocabulary: a Vocabulary, a spec for ``load_vocabulary``, or None for the default.
            batch_size: images per forward pass.
        Returns:
            One :class:`PanopticPrediction` per image at its original size.
        """
        vocab = self._vocabulary(vocabulary)
        text = self.text_classifier(vocab)
        seen = torch.tensor(vocab.seen_mask(self.train_vocabulary), dtype=torch.bool, device=self.device)
        isthing = text.isthing  # (K,) bool, built with the text classifier
        results: list[PanopticPrediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            results.extend(self._predict_batch(chunk, vocab, text, seen, isthing))
        return results

    def _vocabulary(self, vocabulary: Union[Vocabulary, str, None]) -> Vocabulary:
        if vocabulary is None:
            return self.vocabulary
        if isinstance(vocabulary, Vocabulary):
            return vocabulary
        return load_vocabulary(vocabulary)

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

    def _predict_batch(self, images: Sequence[np.ndarray], vocab: Vocabulary, text: TextClassifier, seen: torch.Tensor, isthing: torch.Tensor) -> list[PanopticPrediction]:
        size = self.model.sam.img_size
        pixels, shapes = preprocess(images, size, self.config.sam.pixel_mean, self.device)
        outputs, out_logits = self.forward_raw(pixels, text)
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
            id_map = _resize_ids(panoptic.cpu().numpy(), image.shape[0], image.shape[1])
            results.append(self._to_prediction(id_map, segments, keep, result, vocab))
        return results

    def _to_prediction(self, id_map: np.ndarray, segments: list, keep: torch.Tensor, result: Any, vocab: Vocabulary) -> PanopticPrediction:
        areas = np.bincount(id_map.ravel(), minlength=len(segments) + 1)
        slices = ndimage.find_objects(id_map)
        infos: list[SegmentInfo] = []
        remap = np.zeros(len(segments) + 1, dtype=np.int32)
        for seg in segments:
            if seg.id > len(slices) or slices[seg.id - 1] is None or areas[seg.id] == 0:
                continue  # vanished when resizing to the original size
            new_id = len(infos) + 1
            remap[seg.id] = new_id
            q = int(keep[seg.query])
            rows, cols = slices[seg.id - 1]
            infos.append(
                SegmentInfo(
                    id=new_id,
                    category_id=int(vocab.category_ids[seg.label]),
                    category=vocab.names[seg.label],
                    isthing=bool(vocab.isthing[seg.label]),
                    score=float(result.scores[q]),
                    mask_quality=float(result.mask_quality[q]),
                    in_vocab_prob=float(result.in_vocab_probs[q, seg.label]),
                    out_vocab_prob=float(result.out_vocab_probs[q, seg.label]),
                    area=int(areas[seg.id]),
                    bbox=[float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start)],
                )
            )
        return PanopticPrediction(panoptic_map=remap[id_map].astype(np.int32), segments=infos)


def _resolve_vocab(cfg: PosSAMConfig, spec: str) -> str:
    """Vocabulary specs that name files are relative to the config file."""
    if spec in ("coco", "ade20k") or "," in spec:
        return spec
    resolved = cfg.resolve_path(spec)
    return resolved if resolved and Path(resolved).exists() else spec
