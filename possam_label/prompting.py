"""Box-prompted segmentation and mask classification for review tools (refine a label, segment a
drawn box), knowing nothing of FiftyOne.

:class:`PromptedSegmenter` holds two models of one config:

* the promptable SAM: ``baseline.sam_checkpoint`` when the config sets it, else ``sam.checkpoint``
  (the shipped small config's PosSAM encoder, ``sam.checkpoint``, was not trained on prompts; its
  ``sam_small_prompt.safetensors`` was), driven through segment_anything's ``SamPredictor``;
* PosSAM (:class:`~possam_label.predictor.PosSAMPredictor`) for the class of a mask: the frozen
  CLIP's mask-pooled logits of that very mask (out of vocabulary) and LDP's distribution of the
  PosSAM query whose mask overlaps it best (in vocabulary), combined by
  :func:`~possam_label.model.mase.ensemble` together with the image's own queries, so MASE's
  per-image thresholds are those inference uses (:meth:`PromptedSegmenter.classify_masks`).

:func:`prompted_segmenter` builds one per (config, heads checkpoint, device) and keeps the last
few (a process-wide cache): an App server loads the models once, not per correction.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .config import DEFAULT_CONFIG, PosSAMConfig, load_config
from .model.mase import ensemble
from .vocab import Vocabulary

logger = logging.getLogger(__name__)

# Models kept by prompted_segmenter (a review server switches between a few runs at most).
CACHE_SIZE = 2


@dataclass
class MaskClass:
    """The class PosSAM gives one mask.

    Attributes:
        index: class index into the vocabulary (void excluded: a reviewer's box holds something).
        confidence: that class's probability (void included in the distribution) times the matched
            query's predicted IoU ** ``mase.gamma``: the score inference gives a segment.
        matched_query: the PosSAM query whose mask overlaps the given mask best.
        matched_iou: their IoU.
    """

    index: int
    confidence: float
    matched_query: int
    matched_iou: float


def promptable_sam_checkpoint(cfg: PosSAMConfig) -> Optional[str]:
    """The SAM weights prompts go to: ``baseline.sam_checkpoint`` when set, else ``sam.checkpoint``."""
    chosen = cfg.baseline.sam_checkpoint or cfg.sam.checkpoint
    if chosen is None or chosen == "official":
        return chosen
    return cfg.resolve_path(chosen)


# How far refine_mask lets a mask grow toward SAM's, as a fraction of the image's longer side
# (6 px at the small model's 256 px). Chosen on 10 held-out synthetic scenes (seed 4242, 66
# segments, docs/review.md): IoU with the ground truth of masks eroded by 3 px 0.64 -> 0.77, of
# masks with the middle third cut out 0.61 -> 0.66; SAM's box mask alone lowers both (0.58, 0.56:
# the small SAM's box-prompt mIoU is 0.55 on things), the mask prompt added to the box even more
# (its dense-prompt path was never trained: 0.50 / 0.49), and a band letting SAM move the boundary
# both ways (4 px: 0.77 / 0.57; 8 px: 0.69 / 0.58); growing by 10 px: 0.72 / 0.66.
# tools/measure_review_sam.py measures these.
REFINE_GROW_FRACTION = 6 / 256


def refine_mask(current: np.ndarray, sam_mask: np.ndarray, grow_fraction: float = REFINE_GROW_FRACTION) -> np.ndarray:
    """A label's mask refined by SAM's mask for its box: the current mask plus SAM's pixels within
    ``grow_fraction`` of the image's longer side of it (holes, gaps and eroded edges are filled
    where SAM agrees; pixels are never taken away).

    Args:
        current: (H, W) bool, the label's mask.
        sam_mask: (H, W) bool, SAM's mask for the label's box.
    Returns:
        (H, W) bool.
    """
    from scipy import ndimage

    if current.shape != sam_mask.shape:
        raise ValueError(f"masks differ in size: {current.shape} vs {sam_mask.shape}")
    if not current.any():
        return sam_mask.copy()
    radius = max(1, int(round(grow_fraction * max(current.shape))))
    near = ndimage.binary_dilation(current, structure=ndimage.generate_binary_structure(2, 1), iterations=radius)
    return current | (sam_mask & near)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


class PromptedSegmenter:
    """A promptable SAM and PosSAM's classifier, for one image at a time.

    Args:
        sam: a segment_anything ``Sam`` with a trained prompt encoder and mask decoder.
        predictor: the PosSAM predictor that classifies masks.
    """

    def __init__(self, sam: torch.nn.Module, predictor) -> None:
        from segment_anything import SamPredictor

        self.sam = sam.to(predictor.device).eval()
        self.sam_predictor = SamPredictor(self.sam)
        self.predictor = predictor
        self._lock = threading.Lock()  # SamPredictor keeps the current image: one caller at a time

    @classmethod
    def from_config(
        cls, config: Union[str, Path] = DEFAULT_CONFIG, checkpoint: Optional[str] = None, device: Optional[str] = None
    ) -> "PromptedSegmenter":
        """Build from a PosSAM YAML config (``checkpoint``: PosSAM head weights overriding the config's)."""
        from .baselines.sam_model import build_sam
        from .predictor import PosSAMPredictor

        cfg = load_config(config)
        predictor = PosSAMPredictor.from_config(cfg, checkpoint=checkpoint, device=device or "cpu")
        sam_file = promptable_sam_checkpoint(cfg)
        logger.info("review SAM: %s (config %s)", sam_file, config)
        return cls(build_sam(cfg.sam, sam_file), predictor)

    def segment_boxes(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
        """SAM's mask for each box prompt (one mask per box, ``multimask_output=False``).

        Args:
            image: (H, W, 3) uint8 RGB.
            boxes: (N, 4) ``x0, y0, x1, y1`` in image pixels.
        Returns:
            masks (N, H, W) bool and SAM's predicted IoU of each (N,).
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        height, width = image.shape[:2]
        if not len(boxes):
            return np.zeros((0, height, width), dtype=bool), np.zeros(0, dtype=np.float32)
        with self._lock, torch.inference_mode():
            self.sam_predictor.set_image(np.ascontiguousarray(image[:, :, :3]), image_format="RGB")
            masks, scores = [], []
            for box in boxes:
                out, score, _ = self.sam_predictor.predict(box=box, multimask_output=False)
                masks.append(out[0])
                scores.append(float(score[0]))
            self.sam_predictor.reset_image()
        return np.stack(masks).astype(bool), np.asarray(scores, dtype=np.float32)

    def field_vocabulary(self, classes: Vocabulary) -> Vocabulary:
        """``classes`` with the synonyms the model's vocabulary has for them (a field's class table
        stores names only; the text classifier encodes every synonym)."""
        own = self.predictor.vocabulary
        synonyms = tuple(own.synonyms[own.index_of(name)] if name in own else (name,) for name in classes.names)
        return dataclasses.replace(classes, synonyms=synonyms)

    def classify_masks(self, image: np.ndarray, masks: np.ndarray, vocabulary: Vocabulary) -> list[MaskClass]:
        """PosSAM's class and confidence for each of ``masks`` (N, H, W) bool on ``image`` (H, W, 3)."""
        from .transforms import preprocess

        predictor = self.predictor
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
            raise ValueError(f"masks must be (N, H, W) with the image's size {image.shape[:2]}, got {masks.shape}")
        if not len(masks):
            return []
        vocabulary = self.field_vocabulary(vocabulary)
        text = predictor.text_classifier(vocabulary)
        size = predictor.model.sam.img_size
        with self._lock, torch.inference_mode():
            pixels, shapes = preprocess([image[:, :, :3]], size, predictor.config.sam.pixel_mean, predictor.device)
            sam_features, clip_features = predictor.model.encode(pixels)
            outputs = predictor.model.forward_heads(sam_features, clip_features, text, all_stages=False, pixels=pixels)
            h, w = shapes[0]
            query_masks = outputs["pred_masks"][0]  # (Q, m, m) logits of the padded square
            # The given masks as logits in the padded input frame, at the query masks' resolution.
            given = torch.from_numpy(masks.astype(np.float32)).to(predictor.device)[None]
            framed = torch.zeros((1, len(masks), size, size), device=predictor.device)
            framed[:, :, :h, :w] = F.interpolate(given, size=(h, w), mode="bilinear", align_corners=False)
            given_logits = F.interpolate(framed, size=query_masks.shape[-2:], mode="bilinear", align_corners=False)
            given_logits = (given_logits - 0.5) * 20.0  # a binary mask as confident logits
            out_logits = predictor.model.out_vocab_logits(
                torch.cat([query_masks[None], given_logits], dim=1), clip_features, text, pixels=pixels
            )[0].float()
            num_queries = query_masks.shape[0]
            # Each given mask takes LDP's logits and predicted IoU of the query that matches it best.
            query_bin = F.interpolate(query_masks[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, :, :h, :w] > 0
            given_bin = framed[0, :, :h, :w] > 0.5
            inter = torch.einsum("qhw,nhw->nq", query_bin.float(), given_bin.float())
            union = query_bin.flatten(1).sum(-1)[None, :] + given_bin.flatten(1).sum(-1)[:, None] - inter
            ious = inter / union.clamp(min=1)
            best_iou, best = ious.max(dim=1)
            in_logits = torch.cat([outputs["pred_logits"][0], outputs["pred_logits"][0][best]])
            quality = torch.cat([outputs["pred_iou"][0], outputs["pred_iou"][0][best]])
            seen = torch.tensor(vocabulary.seen_mask(predictor.train_vocabulary), dtype=torch.bool, device=predictor.device)
            result = ensemble(in_logits, out_logits, quality, seen, predictor.config.mase)
        classes = []
        num_classes = len(vocabulary)
        for i in range(len(masks)):
            row = num_queries + i
            index = int(result.probs[row, :num_classes].argmax())
            confidence = float(result.probs[row, index] * result.mask_quality[row].pow(predictor.config.mase.gamma))
            classes.append(MaskClass(index, confidence, int(best[i]), float(best_iou[i])))
        return classes


_CACHE: "OrderedDict[tuple[str, Optional[str], str], PromptedSegmenter]" = OrderedDict()
_CACHE_LOCK = threading.Lock()


def prompted_segmenter(
    config: Union[str, Path, None] = None, checkpoint: Optional[str] = None, device: Optional[str] = None
) -> PromptedSegmenter:
    """The process's :class:`PromptedSegmenter` of ``config`` (default: the shipped one) and heads
    ``checkpoint``, built on first use and kept (the last :data:`CACHE_SIZE` ones)."""
    key = (str(Path(config or DEFAULT_CONFIG).resolve()), checkpoint, device or "cpu")
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        segmenter = PromptedSegmenter.from_config(key[0], checkpoint=checkpoint, device=key[2])
        _CACHE[key] = segmenter
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return segmenter


def clear_prompted_segmenters() -> None:
    """Forget the cached models (tests; a server that wants its memory back)."""
    with _CACHE_LOCK:
        _CACHE.clear()
