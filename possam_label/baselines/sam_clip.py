"""The training-free two-stage baseline: SAM's automatic mask generator, then CLIP per mask.

Stage 1 runs segment_anything's :class:`SamAutomaticMaskGenerator` (a grid of point prompts
through the full ``Sam`` model: image encoder, prompt encoder, mask decoder; IoU and stability
filtering; box NMS). Stage 2 classifies every mask with the frozen CLIP of the config, in one
of two ways (``baseline.classify``):

* ``mask_pooled`` (the paper's "feature-crop" baseline): one dense CLIP pass per image on the
  SAM-style padded image, exactly as PosSAM's frozen out-of-vocabulary classifier does it: each
  mask is brought to the dense map (coverage per cell > 0.5), its features are average-pooled,
  projected with CLIP's own head (:meth:`CLIPBackbone.embed_pooled`) and compared with the text
  classifier (cosine x CLIP logit scale, max over synonyms).
* ``crop`` (the paper's "image-crop" baseline): each mask's box, made square and widened by
  ``crop_context`` of its side on every side, is cut out of the image with everything outside
  the mask set to the CLIP pixel mean, resized to ``crop_size`` and embedded with
  ``clip.encode_image`` (one CLIP pass per mask, batched).

A segment's score is the softmax class probability times SAM's predicted IoU. Masks are then
merged into one panoptic map by the combine heuristic of panopticapi (re-implemented): masks
in decreasing score; a mask is skipped when less than ``postprocess.overlap_threshold`` of it
is still free; stuff masks of one class become one segment, thing masks stay separate
instances; pixels no kept mask covers are void (0).

The baseline has a single classifier, so each :class:`SegmentInfo` carries the CLIP class
probability as both ``in_vocab_prob`` and ``out_vocab_prob``; ``mask_quality`` is SAM's
predicted IoU.

Images whose longest side exceeds the SAM input size are first resized to it (SAM sees that
resolution anyway); the panoptic map is made at that working size and resized back to the
original size with nearest neighbour (:func:`possam_label.panoptic.resize_ids`), as
:class:`~possam_label.predictor.PosSAMPredictor` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from torchvision.ops import roi_align

from ..config import DEFAULT_CONFIG, PosSAMConfig, load_config
from ..config_mapping import from_dict, merge
from ..model.clip_backbone import CLIPBackbone, TextClassifier
from ..model.common import masked_average_pool
from ..model.weights import SAM_CHECKPOINT_URLS, WeightsError, download
from ..panoptic import renumber, resize_ids
from ..predictor_base import BatchPredictor
from ..transforms import check_rgb_image, preprocess, resize_longest_side_shape
from ..types import PanopticPrediction, SegmentInfo
from ..vocab import Vocabulary, load_vocabulary, resolve_vocabulary_spec
from .merge import MergedSegment, merge_masks
from .sam_model import BatchedImageEncoder, build_sam

__all__ = ["CLASSIFY_MODES", "SamClipPredictor", "build_sam", "merge_masks"]  # build_sam, merge_masks: re-exported

logger = logging.getLogger(__name__)

CLASSIFY_MODES = ("mask_pooled", "crop")
# Masks handled at once when resampling them to the CLIP grid or to crops (bounds memory:
# MASK_CHUNK x H x W float32 at the working resolution).
MASK_CHUNK = 16
# Crops per clip.encode_image call.
CROP_BATCH = 64


# ------------------------------------------------------------------------------------ predictor
@dataclass
class _ImageMasks:
    """Stage-1 output of one image at its working resolution."""

    masks: list[np.ndarray]  # N (h, w) bool
    boxes: list[list[float]]  # N [x, y, w, h]
    predicted_iou: np.ndarray  # (N,)


class SamClipPredictor(BatchPredictor):
    """SAM automatic masks + CLIP classification; same public API as ``PosSAMPredictor``.

    Args:
        sam: the full ``Sam`` (weights loaded); its image encoder gets wrapped in a
            :class:`BatchedImageEncoder`.
        clip: frozen CLIP.
        config: the config (``baseline``, ``sam``, ``clip`` and ``postprocess`` sections are used).
        vocabulary: default vocabulary.
        device: where to run.
        weight_files: {"sam": path, "clip": path} for identity hashes.
    """

    def __init__(
        self,
        sam: Sam,
        clip: CLIPBackbone,
        config: PosSAMConfig,
        vocabulary: Vocabulary,
        device: torch.device,
        weight_files: Optional[dict[str, Optional[str]]] = None,
    ) -> None:
        base = config.baseline
        if base.classify not in CLASSIFY_MODES:
            raise ValueError(f"baseline.classify must be one of {CLASSIFY_MODES}, got {base.classify!r}")
        if base.crop_size < 8 or base.crop_context < 0:
            raise ValueError(f"baseline.crop_size must be >= 8 and crop_context >= 0, got {base.crop_size}, {base.crop_context}")
        self.config = config
        self.vocabulary = vocabulary
        self.device = device
        self.weight_files = weight_files or {}
        use_autocast = device.type == "cuda"
        if not isinstance(sam.image_encoder, BatchedImageEncoder):
            sam.image_encoder = BatchedImageEncoder(sam.image_encoder, autocast=use_autocast)
        self.sam = sam.to(device).eval()
        self.clip = clip.to(device).eval()
        self.img_size = int(self.sam.image_encoder.img_size)
        self._autocast = use_autocast
        self.mask_generator = SamAutomaticMaskGenerator(
            self.sam,
            points_per_side=base.points_per_side,
            points_per_batch=base.points_per_batch,
            pred_iou_thresh=base.pred_iou_thresh,
            stability_score_thresh=base.stability_score_thresh,
            min_mask_region_area=base.min_mask_region_area,
            output_mode="binary_mask",
        )

    @classmethod
    def from_config(
        cls,
        config: Union[str, Path, PosSAMConfig] = DEFAULT_CONFIG,
        checkpoint: Optional[str] = None,
        device: Optional[Union[str, torch.device]] = None,
        overrides: Optional[dict[str, Any]] = None,
        load_backbones: bool = True,
    ) -> "SamClipPredictor":
        """Build from a YAML config.

        Args:
            config: YAML path or a loaded config.
            checkpoint: a full SAM state dict overriding ``config.sam.checkpoint`` (the baseline
                has no trained heads, so ``config.checkpoint`` is not used).
            device: "cpu", "cuda", ... ; default CUDA when available.
            overrides: nested mapping merged over the YAML (e.g. ``{"baseline": {"classify": "crop"}}``).
            load_backbones: False keeps random SAM and CLIP weights (tests and speed benchmarks).
        """
        cfg = config if isinstance(config, PosSAMConfig) else load_config(config, overrides)
        if isinstance(config, PosSAMConfig) and overrides:
            base_dir = cfg.base_dir
            cfg = from_dict(PosSAMConfig, merge(cfg.to_dict(), overrides))
            cfg.base_dir = base_dir
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        sam_file: Optional[str] = None
        if checkpoint is not None:
            sam_file = checkpoint
        elif load_backbones and (cfg.baseline.sam_checkpoint or cfg.sam.checkpoint) is not None:
            # The two-stage path may name its own SAM: the shipped small config pairs PosSAM's heads
            # with the SAM they were trained on, and the baseline with the promptable one.
            chosen = cfg.baseline.sam_checkpoint or cfg.sam.checkpoint
            sam_file = chosen if chosen == "official" else cfg.resolve_path(chosen)
        if sam_file == "official":
            if cfg.sam.variant not in SAM_CHECKPOINT_URLS:
                raise WeightsError("sam.checkpoint 'official' needs sam.variant vit_b, vit_l or vit_h")
            sam_file = str(download(SAM_CHECKPOINT_URLS[cfg.sam.variant], "sam.checkpoint"))
        sam = build_sam(cfg.sam, sam_file)
        clip_pretrained = None
        if load_backbones and cfg.clip.pretrained is not None:
            p = cfg.clip.pretrained
            is_file = "/" in p or p.endswith((".safetensors", ".bin", ".pt", ".pth"))
            clip_pretrained = cfg.resolve_path(p) if is_file else p
        clip = CLIPBackbone.from_config(cfg.clip, default_image_size=cfg.sam.img_size, pretrained=clip_pretrained)
        vocabulary = load_vocabulary(resolve_vocabulary_spec(cfg.vocabulary, cfg.resolve_path))
        files = {
            "sam": sam_file,
            "clip": clip_pretrained if clip_pretrained and Path(clip_pretrained).is_file() else None,
        }
        return cls(sam, clip, cfg, vocabulary, dev, files)

    def weights_identity(self) -> dict[str, Optional[str]]:
        """``method`` (the baseline and its classifier), and sha256 of each weight file (None for random)."""
        out = super().weights_identity()
        out["heads"] = None
        out["method"] = f"sam_clip_baseline/{self.config.baseline.classify}"
        return out

    def text_classifier(self, vocabulary: Vocabulary) -> TextClassifier:
        return self.clip.text_classifier(vocabulary)

    # ---- stage 1: SAM ---------------------------------------------------------------------
    def _working_image(self, index: int, image: np.ndarray) -> np.ndarray:
        """Check the array; shrink it so that its longest side is at most the SAM input size."""
        arr = check_rgb_image(index, image)
        if max(arr.shape[:2]) <= self.img_size:
            return np.ascontiguousarray(arr)
        h, w = resize_longest_side_shape(arr.shape[0], arr.shape[1], self.img_size)
        return np.array(Image.fromarray(arr).resize((w, h), Image.BILINEAR))

    def _sam_inputs(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The exact encoder inputs ``SamPredictor.set_image`` builds: (B, 3, S, S) normalised, padded."""
        transform = self.mask_generator.predictor.transform
        inputs = []
        for image in images:
            resized = torch.as_tensor(transform.apply_image(image), device=self.device).permute(2, 0, 1).contiguous()[None]
            inputs.append(self.sam.preprocess(resized))
        return torch.cat(inputs)

    def generate_masks(self, images: Sequence[np.ndarray]) -> list[_ImageMasks]:
        """SAM's automatic masks of working-size images (encoder batched over ``images``)."""
        encoder: BatchedImageEncoder = self.sam.image_encoder  # type: ignore[assignment]
        encoder.precompute(self._sam_inputs(images))
        out = []
        try:
            for image in images:
                records = self.mask_generator.generate(image)
                out.append(
                    _ImageMasks(
                        masks=[r["segmentation"] for r in records],
                        boxes=[r["bbox"] for r in records],
                        predicted_iou=np.array([r["predicted_iou"] for r in records], np.float32),
                    )
                )
        finally:
            encoder.clear()
        return out

    # ---- stage 2: CLIP --------------------------------------------------------------------
    def _mask_pooled_embeddings(self, dense: torch.Tensor, masks: list[np.ndarray]) -> torch.Tensor:
        """Mask-pooled dense CLIP features through CLIP's head.

        Args:
            dense: (C, g, g) dense CLIP features of the padded square image.
            masks: N (h, w) bool masks of the working image (which fills the top-left of the
                padded square of side max(h, w)).
        Returns:
            (N, D) embeddings.
        """
        grid = dense.shape[-1]
        h, w = masks[0].shape
        side = max(h, w)
        pooled = []
        for start in range(0, len(masks), MASK_CHUNK):
            chunk = torch.from_numpy(np.stack(masks[start : start + MASK_CHUNK])).to(self.device, torch.float32)
            padded = F.pad(chunk, (0, side - w, 0, side - h))[:, None]
            # Fraction of each dense cell the mask covers; > 0.5 is the binary mask at stride 32.
            coverage = F.adaptive_avg_pool2d(padded, grid)[:, 0]
            binary = (coverage > 0.5).float()
            # Masks too small to own a cell fall back to their soft coverage rather than pool nothing.
            empty = binary.sum(dim=(-2, -1)) == 0
            weights = torch.where(empty[:, None, None], coverage, binary)
            pooled.append(masked_average_pool(dense[None].float(), weights[None])[0])
        return self.clip.embed_pooled(torch.cat(pooled)).float()

    def masked_crops(self, image: np.ndarray, masks: list[np.ndarray], boxes: list[list[float]]) -> torch.Tensor:
        """The crops the ``crop`` classifier embeds, on the [0, 255] scale.

        Each crop is the square around the mask's box, widened by ``crop_context`` of its side
        on every side, resized to ``crop_size``; pixels outside the mask (or the image) are the
        CLIP pixel mean.

        Args:
            image: (h, w, 3) uint8 working image.
            masks: N (h, w) bool masks.
            boxes: N [x, y, w, h] mask boxes (SAM's records: x + w is the last column).
        Returns:
            (N, 3, crop_size, crop_size) float32.
        """
        base = self.config.baseline
        size = base.crop_size
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
        mean = self.clip.pixel_mean.view(1, 3, 1, 1).float()
        # roi_align works in pixel-edge coordinates (aligned=True): a box ends one past its last pixel.
        xywh = torch.tensor(boxes, dtype=torch.float32, device=self.device).view(-1, 4)
        centre_x = xywh[:, 0] + (xywh[:, 2] + 1) / 2
        centre_y = xywh[:, 1] + (xywh[:, 3] + 1) / 2
        half = torch.maximum(xywh[:, 2], xywh[:, 3]).add(1).mul(0.5 + base.crop_context)
        rois = torch.stack([centre_x - half, centre_y - half, centre_x + half, centre_y + half], dim=1)
        crops = []
        for start in range(0, len(masks), MASK_CHUNK):
            chunk_rois = rois[start : start + MASK_CHUNK]
            n = chunk_rois.shape[0]
            index = torch.arange(n, dtype=torch.float32, device=self.device)[:, None]
            chunk_masks = torch.from_numpy(np.stack(masks[start : start + n])).to(self.device, torch.float32)[:, None]
            # sampling_ratio=0 averages ceil(box / crop_size)^2 samples per output pixel, so large
            # boxes shrink without aliasing.
            image_crops = roi_align(pixels, torch.cat([torch.zeros_like(index), chunk_rois], 1), size, 1.0, 0, True)
            inside = roi_align(chunk_masks, torch.cat([index, chunk_rois], 1), size, 1.0, 0, True).clamp_(0, 1)
            crops.append(inside * image_crops + (1 - inside) * mean)
        return torch.cat(crops)

    def _crop_embeddings(self, image: np.ndarray, masks: list[np.ndarray], boxes: list[list[float]]) -> torch.Tensor:
        """(N, D) CLIP image embeddings of :meth:`masked_crops` (one image-tower pass per mask, batched)."""
        crops = self.masked_crops(image, masks, boxes)
        normalised = (crops - self.clip.pixel_mean.view(1, 3, 1, 1)) / self.clip.pixel_std.view(1, 3, 1, 1)
        embeddings = []
        for start in range(0, normalised.shape[0], CROP_BATCH):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self._autocast):
                embeddings.append(self.clip.clip.encode_image(normalised[start : start + CROP_BATCH]).float())
        return torch.cat(embeddings)

    # ---- both stages + merge --------------------------------------------------------------
    def _dense_features(self, work_images: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, C, g, g) dense CLIP features of the SAM-style padded images (one pass per batch)."""
        pixels, _ = preprocess(work_images, self.img_size, self.config.sam.pixel_mean, self.device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self._autocast):
            return self.clip.dense_features(pixels).float()

    def _class_probs(
        self, work_image: np.ndarray, dense: Optional[torch.Tensor], masks: list[np.ndarray], boxes: list[list[float]], text: TextClassifier
    ) -> torch.Tensor:
        """(N, K) class probabilities of N masks of one working image with ``baseline.classify``."""
        if self.config.baseline.classify == "mask_pooled":
            assert dense is not None
            embeddings = self._mask_pooled_embeddings(dense, masks)
        else:
            embeddings = self._crop_embeddings(work_image, masks, boxes)
        return text.class_logits(embeddings, self.clip.logit_scale.float()).softmax(dim=-1)

    @torch.inference_mode()
    def classify_masks(
        self, image: np.ndarray, masks: Sequence[np.ndarray], vocabulary: Union[Vocabulary, str, None] = None
    ) -> torch.Tensor:
        """Stage 2 alone: CLIP class probabilities of given masks (e.g. ground truth) of one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            masks: N (H, W) bool masks, non-empty.
            vocabulary: as in :meth:`predict`.
        Returns:
            (N, K) probabilities over the vocabulary's classes (CPU float32).
        """
        vocab = self.vocabulary_for(vocabulary)
        work = self._working_image(0, image)
        height, width = work.shape[:2]
        work_masks = []
        for i, mask in enumerate(masks):
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != np.asarray(image).shape[:2] or not mask.any():
                raise ValueError(f"mask {i}: expected a non-empty bool mask of the image's shape {np.asarray(image).shape[:2]}, got {mask.shape}")
            work_masks.append(resize_ids(mask.astype(np.int32), height, width).astype(bool))
        boxes = []
        for mask in work_masks:
            rows, cols = np.nonzero(mask)
            boxes.append([float(cols.min()), float(rows.min()), float(cols.max() - cols.min()), float(rows.max() - rows.min())])
        dense = self._dense_features([work])[0] if self.config.baseline.classify == "mask_pooled" else None
        return self._class_probs(work, dense, work_masks, boxes, self.text_classifier(vocab)).float().cpu()

    def predict_batch(self, images: Sequence[np.ndarray], vocab: Vocabulary, text: TextClassifier) -> list[PanopticPrediction]:
        """Predictions of one batch (see :meth:`BatchPredictor.predict`; ``baseline.points_per_batch``
        batches the mask generator's point prompts)."""
        base = self.config.baseline
        work = [self._working_image(i, image) for i, image in enumerate(images)]
        generated = self.generate_masks(work)
        dense: Optional[torch.Tensor] = None
        if base.classify == "mask_pooled" and any(g.masks for g in generated):
            dense = self._dense_features(work)
        results = []
        for b, (image, work_image, gen) in enumerate(zip(images, work, generated)):
            height, width = np.asarray(image).shape[:2]
            if not gen.masks:
                results.append(PanopticPrediction(np.zeros((height, width), np.int32), []))
                continue
            probs = self._class_probs(work_image, None if dense is None else dense[b], gen.masks, gen.boxes, text)
            class_prob, labels = probs.max(dim=-1)
            class_prob_np = class_prob.cpu().numpy()
            scores = class_prob_np * gen.predicted_iou
            panoptic, segments = merge_masks(
                gen.masks,
                gen.boxes,
                scores,
                labels.cpu().numpy(),
                vocab.isthing,
                self.config.postprocess.overlap_threshold,
                self.config.postprocess.min_segment_area,
                base.object_mask_threshold,
            )
            id_map = resize_ids(panoptic, height, width)
            results.append(self._to_prediction(id_map, segments, scores, class_prob_np, gen.predicted_iou, vocab))
        return results

    @staticmethod
    def _to_prediction(
        id_map: np.ndarray,
        segments: list[MergedSegment],
        scores: np.ndarray,
        class_prob: np.ndarray,
        predicted_iou: np.ndarray,
        vocab: Vocabulary,
    ) -> PanopticPrediction:
        """Renumber the segments that survive resizing, with their areas and boxes at full size."""
        panoptic_map, kept = renumber(id_map, [seg.id for seg in segments])
        infos: list[SegmentInfo] = []
        for k in kept:
            seg = segments[k.index]
            n = seg.mask_index
            infos.append(
                SegmentInfo(
                    id=k.new_id,
                    category_id=int(vocab.category_ids[seg.label]),
                    category=vocab.names[seg.label],
                    isthing=bool(vocab.isthing[seg.label]),
                    score=float(scores[n]),
                    mask_quality=float(predicted_iou[n]),
                    # One classifier: the CLIP probability fills both fields.
                    in_vocab_prob=float(class_prob[n]),
                    out_vocab_prob=float(class_prob[n]),
                    area=k.area,
                    bbox=k.bbox,
                )
            )
        return PanopticPrediction(panoptic_map=panoptic_map, segments=infos)
