"""Pretraining LDP's crop encoder as a classifier of segments [I].

Trained inside PosSAM (``ldp.crop_encoder`` learning from the class loss through LDP), the crop
encoder overfits: on this project's cached small-model features the final-stage class loss fell
from 1.21 to 0.45 while validation PQ dropped (40.8 against 42.3). Trained alone on ground-truth
masks, with the whole image rotated and mirrored, a small network of this kind learns the shapes
from the pixels quickly (a probe on 12 shape classes, batch 128 crops: 65 % of held-out shapes
right after 250 steps, 84 % after 500). This module does that pretraining: the encoder's
convolutions learn to classify the training vocabulary's segments through a temporary linear
classifier, the encoder's output projection stays untouched (zero in a fresh encoder), and heads
training can then keep the convolutions fixed (``train.frozen_modules: [ldp.crop_encoder.convs]``)
while LDP learns how much of them to use.

The input is what the crop encoder reads inside PosSAM: SAM-normalised pixels with the padding
filled with SAM's mean, and mask logits on the mask-feature grid (stride 4), either from the
ground-truth masks (:func:`crop_batch_logits`) or the trained heads' own predicted masks matched
to the ground truth (:class:`CropBank`, below).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..model.mask_shape import MaskShapeEncoder
from .criterion import target_coverage_fraction
from .schedules import cosine_lr
from .trainer import fill_padding

logger = logging.getLogger(__name__)

# Mask probabilities are clamped before the logit: an area-averaged ground-truth cell is exactly
# 0 or 1 away from the outline.
_PROB_EPS = 1e-3
IGNORE = -100


@dataclass
class CropPretrainConfig:
    """Recipe of :func:`pretrain_crop_encoder`."""

    steps: int = 600
    lr: float = 2e-3
    weight_decay: float = 1e-4
    log_every: int = 50
    seed: int = 0


def mask_logits_from_masks(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """Ground-truth masks as the mask logits PosSAM's decoder would give for them.

    Args:
        masks: (B, N, S, S) bool, S a multiple of ``stride``.
    Returns:
        (B, N, S / stride, S / stride) float: logit of each cell's covered fraction.
    """
    b, n, s, _ = masks.shape
    cells = s // stride
    coverage = target_coverage_fraction(masks.reshape(b * n, s, s), (cells, cells)).reshape(b, n, cells, cells)
    return torch.logit(coverage.clamp(_PROB_EPS, 1 - _PROB_EPS))


def pad_targets(targets: list[dict[str, torch.Tensor]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-image targets to (B, N, S, S) masks and (B, N) labels, padding with empty masks
    labelled :data:`IGNORE` (N: the most segments in one image, at least 1)."""
    most = max([1] + [len(t["labels"]) for t in targets])
    masks = torch.zeros(len(targets), most, size, size, dtype=torch.bool)
    labels = torch.full((len(targets), most), IGNORE, dtype=torch.long)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        masks[i, :n] = t["masks"]
        labels[i, :n] = t["labels"]
    return masks, labels


def rotate_and_mirror(pixels: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random quarter turn and horizontal mirror for the images and their masks.

    Args:
        pixels: (B, 3, S, S); masks: (B, N, S, S) (square inputs: SAM pads to a square).
    """
    turns = int(torch.randint(4, (), generator=generator))
    pixels, masks = torch.rot90(pixels, turns, (2, 3)), torch.rot90(masks, turns, (2, 3))
    if bool(torch.rand((), generator=generator) < 0.5):
        pixels, masks = pixels.flip(3), masks.flip(3)
    return pixels, masks


class CropClassifier(nn.Module):
    """A crop encoder's features followed by a temporary linear classifier.

    Args:
        encoder: the :class:`MaskShapeEncoder` being pretrained (its ``proj`` is not used).
        num_classes: classes of the training vocabulary.
    """

    def __init__(self, encoder: MaskShapeEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, mask_logits: torch.Tensor, pixels: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, N, H, W) mask logits, (B, 3, S, S) normalised pixels -> (B * N, num_classes) logits."""
        return self.classifier(self.encoder.features(mask_logits, pixels))


def crop_batch_logits(
    classifier: CropClassifier,
    batch: dict[str, Any],
    normalize: Any,
    pad_value: Any,
    mask_stride: int,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits and labels of every ground-truth segment of a training batch.

    Args:
        batch: ``{"images": (B, 3, S, S), "valid": (B, S, S) or None, "targets": [...]}`` as the
            heads' training loader gives it.
        normalize: SAM's pixel normalisation (``PosSAM.sam.normalize``).
        pad_value: the padding fill (SAM's mean, [0, 255]).
        mask_stride: input pixels per mask-logit cell.
        generator: draws the rotation and mirror; None: no augmentation (evaluation).
    Returns:
        (M, K) logits and (M,) labels (:data:`IGNORE` for padding entries).
    """
    device = next(classifier.parameters()).device
    images = fill_padding(batch["images"], batch.get("valid"), pad_value)
    masks, labels = pad_targets(batch["targets"], images.shape[-1])
    if generator is not None:
        images, masks = rotate_and_mirror(images, masks, generator)
    pixels = normalize(images.to(device))
    logits = classifier(mask_logits_from_masks(masks.to(device), mask_stride), pixels)
    return logits, labels.flatten().to(device)


def is_thing_label(labels: torch.Tensor, isthing: Any) -> torch.Tensor:
    """(M,) bool: whether each label is a thing class (``isthing``: per class); :data:`IGNORE` is not."""
    kinds = torch.as_tensor(isthing, dtype=torch.bool, device=labels.device)
    return (labels != IGNORE) & kinds[labels.clamp(min=0)]


def ignore_stuff(labels: torch.Tensor, isthing: Any) -> torch.Tensor:
    """(M,) labels with every stuff class replaced by :data:`IGNORE` (``isthing``: per class)."""
    stuff = (labels != IGNORE) & ~is_thing_label(labels, isthing)
    return torch.where(stuff, torch.full_like(labels, IGNORE), labels)


def pretrain_crop_encoder(
    classifier: CropClassifier,
    step_logits: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    cfg: CropPretrainConfig,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``classifier`` (the encoder's convolutions and the temporary classifier).

    Args:
        step_logits: given the augmentation generator, the (M, K) logits and (M,) labels of one
            step (:data:`IGNORE` entries skipped): :func:`crop_batch_logits` on the next training
            batch (ground-truth masks), or :func:`bank_batch_logits` (a :class:`CropBank`).
    Returns:
        The logged history: ``{"step", "loss", "accuracy"}`` every ``cfg.log_every`` steps.
    """
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(cfg.seed)
    trainable = [p for name, p in classifier.named_parameters() if not name.startswith("encoder.proj.")]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    classifier.train()
    history: list[dict[str, float]] = []
    running_loss, running_correct, running_count = 0.0, 0, 0
    for step in tqdm(range(1, cfg.steps + 1), desc="pretrain crop encoder", disable=not progress, mininterval=10):
        # Cosine decay to zero: a short job, no schedule to tune.
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step - 1, cfg.steps, cfg.lr, warmup=0, final_ratio=0.0)
        logits, labels = step_logits(generator)
        keep = labels != IGNORE
        if not keep.any():
            continue
        loss = F.cross_entropy(logits[keep], labels[keep])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running_loss += float(loss.detach()) * int(keep.sum())
        running_correct += int((logits[keep].argmax(-1) == labels[keep]).sum())
        running_count += int(keep.sum())
        if step % cfg.log_every == 0 or step == cfg.steps:
            entry = {"step": step, "loss": running_loss / running_count, "accuracy": running_correct / running_count}
            history.append(entry)
            logger.info("crop encoder step %d loss %.4f accuracy %.3f", step, entry["loss"], entry["accuracy"])
            running_loss, running_correct, running_count = 0.0, 0, 0
    classifier.eval()
    return history


def _accuracy_by_kind(hits: torch.Tensor, labels: torch.Tensor, isthing: Any) -> dict[str, float]:
    """``{"all", "things", "stuff", "n_things", "n_stuff"}`` from (M,) hits and labels."""
    kinds = is_thing_label(labels.cpu(), isthing)
    hits = hits.cpu()
    n_things, n_stuff = int(kinds.sum()), int((~kinds).sum())
    return {
        "all": float(hits.float().mean()) if len(hits) else 0.0,
        "things": float(hits[kinds].sum()) / max(n_things, 1),
        "stuff": float(hits[~kinds].sum()) / max(n_stuff, 1),
        "n_things": n_things,
        "n_stuff": n_stuff,
    }


@torch.no_grad()
def crop_accuracy(
    classifier: CropClassifier,
    batches: Iterable[dict[str, Any]],
    normalize: Any,
    pad_value: Any,
    mask_stride: int,
    isthing: Any,
) -> dict[str, float]:
    """Accuracy on ground-truth segments: ``{"all", "things", "stuff", "n_things", "n_stuff"}``.

    ``isthing``: per class of the classifier, whether it is a thing class.
    """
    classifier.eval()
    hits, labels = [], []
    for batch in batches:
        logits, batch_labels = crop_batch_logits(classifier, batch, normalize, pad_value, mask_stride)
        keep = batch_labels != IGNORE
        hits.append(logits[keep].argmax(-1) == batch_labels[keep])
        labels.append(batch_labels[keep])
    return _accuracy_by_kind(torch.cat(hits), torch.cat(labels), isthing)


# --- Pretraining on the heads' own predicted masks ------------------------------------------------
# An encoder pretrained on ground-truth masks loses much of its accuracy on the masks the heads
# predict (measured on the small model's 416 matched validation base shapes: 53.6 % right from
# ground-truth masks, 39.2 % from the matched predicted ones, LDP itself 45.2 %), and making the
# ground truth coarse did not close that gap. Trained on the predicted masks themselves (the frozen
# heads run once over the training set; each prediction matched to a ground-truth segment gives one
# crop), the wide BatchNorm encoder names 65 % of the (414) matched validation base shapes after 1500
# steps on 3000 scenes (the heads themselves: 45 %).


@dataclass
class CropBank:
    """Crop-encoder inputs of predicted masks matched to ground-truth segments.

    Attributes:
        crops: (N, C, S, S) float16, what the encoder's convolutions read (``MaskShapeEncoder.crop_inputs``).
        geometry: (N, 2) float32, log aspect ratio and log relative area of each mask's box.
        labels: (N,) ground-truth class index in the training vocabulary.
        heads_labels: (N,) the heads' own in-vocabulary class of the matched query (a reference
            for the encoder's accuracy).
        iou: (N,) IoU of the match on the mask grid.
    """

    crops: torch.Tensor
    geometry: torch.Tensor
    labels: torch.Tensor
    heads_labels: torch.Tensor
    iou: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: torch.Tensor) -> "CropBank":
        """The entries where the (N,) bool ``keep`` is True."""
        return CropBank(self.crops[keep], self.geometry[keep], self.labels[keep], self.heads_labels[keep], self.iou[keep])


def match_predictions(mask_logits: torch.Tensor, gt_masks: torch.Tensor, min_iou: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-to-one matching of predicted masks to ground-truth segments by IoU (Hungarian, scipy).

    Args:
        mask_logits: (Q, H, W) predicted mask logits.
        gt_masks: (N, H * stride, W * stride) bool ground-truth masks; on the mask grid a
            ground-truth cell counts when over half covered.
        min_iou: pairs at or below this IoU are dropped (PQ's matching rule: IoU > 0.5).
    Returns:
        (M,) ground-truth indices, (M,) query indices, (M,) IoUs of the kept pairs.
    """
    empty = torch.zeros(0, dtype=torch.long)
    if len(gt_masks) == 0:
        return empty, empty, torch.zeros(0)
    gt = target_coverage_fraction(gt_masks, tuple(mask_logits.shape[-2:])) > 0.5
    pred = mask_logits > 0
    inter = torch.einsum("nhw,qhw->nq", gt.float(), pred.float())
    union = gt.sum(dim=(1, 2))[:, None] + pred.sum(dim=(1, 2))[None] - inter
    iou = (inter / union.clamp(min=1)).cpu()
    rows, cols = linear_sum_assignment(-iou.numpy())
    keep = iou[rows, cols] > min_iou
    rows_t, cols_t = torch.as_tensor(rows[keep.numpy()], dtype=torch.long), torch.as_tensor(cols[keep.numpy()], dtype=torch.long)
    return rows_t, cols_t, iou[rows_t, cols_t]


def final_stage_with_crop_inputs(
    model: nn.Module, sam_features: torch.Tensor, clip_features: torch.Tensor, text: Any, pixels: torch.Tensor, embed_crops: bool = True
) -> dict[str, Any]:
    """PosSAM's final decoder stage with the crop encoder's inputs of its masks, computed once for
    LDP and the caller (:func:`predicted_mask_bank` keeps them); the pieces of ``PosSAM.forward_heads``.

    Args:
        model: a ``PosSAM`` with LDP's crop encoder.
        sam_features, clip_features: ``model.encode(pixels)``.
        pixels: (B, 3, S, S) the encoders' input, [0, 255], padding filled.
        embed_crops: False leaves LDP's crop encoder out of the classes (see
            ``LocalDiscriminativePooling.forward``); the crop inputs are computed all the same.
    Returns:
        The final stage's ``PosSAM.stage_outputs`` ("pred_logits" (B, Q, K+1), "pred_masks"
        (B, Q, S/4, S/4), ...) and "crop_inputs": ((B * Q, C, s, s) crops, (B * Q, 2) box geometry).
    Raises:
        ValueError: the model has no crop encoder.
    """
    if model.ldp.crop_encoder is None:
        raise ValueError("crop-encoder pretraining needs LDP's crop encoder (ldp.crop_encoder)")
    mask_features, stages, normalized = model.decode_masks(sam_features, pixels)
    fused = model.ldp.fuse(mask_features, clip_features)
    queries, mask_logits = stages[-1]
    crop_inputs = model.ldp.crop_encoder.crop_inputs(mask_logits, normalized)
    embeddings = model.ldp(fused, mask_features, mask_logits, queries, normalized, crop_inputs=crop_inputs, embed_crops=embed_crops)
    return {**model.stage_outputs(queries, mask_logits, embeddings, text), "crop_inputs": crop_inputs}


@torch.no_grad()
def predicted_mask_bank(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    text: Any,
    pad_value: Any,
    embed_crops: bool = True,
    progress: bool = True,
) -> CropBank:
    """Run the frozen model over un-augmented batches and keep a crop of every matched prediction.

    Args:
        model: a ``PosSAM`` with LDP's crop encoder, in eval mode; its final-stage masks,
            in-vocabulary logits and crop-encoder inputs are used (:func:`final_stage_with_crop_inputs`).
        batches: ``{"images", "valid", "targets"}`` batches as the heads' loader gives them.
        text: the training vocabulary's ``TextClassifier``.
        pad_value: the padding fill (SAM's mean, [0, 255]).
        embed_crops: False for an encoder whose projection is zero (a fresh one): it cannot change
            the heads' classes, and the model then runs without its convolutions (at 48 px for every
            query they would be most of the time).
    """
    from tqdm import tqdm

    crops, geometry, labels, heads_labels, ious = [], [], [], [], []
    for batch in tqdm(batches, desc="predicted-mask crops", disable=not progress, mininterval=10):
        images = fill_padding(batch["images"], batch.get("valid"), pad_value)
        sam_features, clip_features = model.encode(images)
        out = final_stage_with_crop_inputs(model, sam_features, clip_features, text, images, embed_crops=embed_crops)
        batch_size, queries = out["pred_masks"].shape[:2]
        batch_crops = out["crop_inputs"][0].view(batch_size, queries, *out["crop_inputs"][0].shape[1:])
        batch_geometry = out["crop_inputs"][1].view(batch_size, queries, -1)
        for j, target in enumerate(batch["targets"]):
            gt_index, query_index, iou = match_predictions(out["pred_masks"][j], target["masks"])
            if len(gt_index) == 0:
                continue
            crops.append(batch_crops[j, query_index].half().cpu())
            geometry.append(batch_geometry[j, query_index].cpu())
            labels.append(target["labels"][gt_index])
            heads_labels.append(out["pred_logits"][j, query_index, :-1].argmax(-1).cpu())
            ious.append(iou)
    if not labels:
        raise ValueError("no predicted mask matched a ground-truth segment (IoU > 0.5): are these the trained heads of this dataset's model?")
    return CropBank(torch.cat(crops), torch.cat(geometry), torch.cat(labels), torch.cat(heads_labels), torch.cat(ious))


def rotate_and_mirror_crops(crops: torch.Tensor, geometry: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random quarter turn and mirror for a batch of crops; an odd turn swaps each box's
    width and height, so the log aspect ratio changes sign."""
    turns = int(torch.randint(4, (), generator=generator))
    crops = torch.rot90(crops, turns, (2, 3))
    if turns % 2:
        geometry = torch.stack([-geometry[:, 0], geometry[:, 1]], dim=1)
    if bool(torch.rand((), generator=generator) < 0.5):
        crops = crops.flip(3)
    return crops, geometry


def bank_batch_logits(classifier: CropClassifier, bank: CropBank, crops_per_step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``crops_per_step`` random crops of ``bank``, turned and mirrored."""
    device = next(classifier.parameters()).device
    pick = torch.randint(len(bank), (crops_per_step,), generator=generator)
    crops, geometry = rotate_and_mirror_crops(bank.crops[pick].float(), bank.geometry[pick], generator)
    logits = classifier.classifier(classifier.encoder.features_from_crops(crops.to(device), geometry.to(device)))
    return logits, bank.labels[pick].to(device)


@torch.no_grad()
def bank_accuracy(classifier: CropClassifier, bank: CropBank, isthing: Sequence[bool], chunk: int = 512) -> dict[str, float]:
    """Accuracy of the encoder on a bank, and of the heads' own classes on the same predictions:
    ``{"all", "things", "stuff", "n_things", "n_stuff", "heads": {...}}``."""
    classifier.eval()
    device = next(classifier.parameters()).device
    predicted = torch.cat([
        classifier.classifier(classifier.encoder.features_from_crops(bank.crops[i : i + chunk].float().to(device), bank.geometry[i : i + chunk].to(device))).argmax(-1).cpu()
        for i in range(0, len(bank), chunk)
    ])
    report: dict[str, Any] = _accuracy_by_kind(predicted == bank.labels, bank.labels, isthing)
    report["heads"] = _accuracy_by_kind(bank.heads_labels == bank.labels, bank.labels, isthing)
    report["mean_iou"] = float(bank.iou.mean())
    return report
