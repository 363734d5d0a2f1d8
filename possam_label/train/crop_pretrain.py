"""Pretraining LDP's crop encoder as a classifier of ground-truth segments [I].

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
filled with SAM's mean, and mask logits on the mask-feature grid (stride 4), here from the
ground-truth masks instead of predicted ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..model.mask_shape import MaskShapeEncoder
from .small_sam import cosine_lr
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
    coverage = F.avg_pool2d(masks.reshape(b * n, 1, s, s).float(), stride).reshape(b, n, s // stride, s // stride)
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


def pretrain_crop_encoder(
    classifier: CropClassifier,
    batches: Iterator[dict[str, Any]],
    normalize: Any,
    pad_value: Any,
    mask_stride: int,
    cfg: CropPretrainConfig,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``classifier`` (the encoder's convolutions and the temporary classifier).

    Args:
        batches: an endless stream of training batches (see :func:`crop_batch_logits`).
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
        logits, labels = crop_batch_logits(classifier, next(batches), normalize, pad_value, mask_stride, generator)
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
    isthing = torch.as_tensor(isthing, dtype=torch.bool)
    correct = {True: 0, False: 0}
    count = {True: 0, False: 0}
    for batch in batches:
        logits, labels = crop_batch_logits(classifier, batch, normalize, pad_value, mask_stride)
        keep = labels != IGNORE
        hits = (logits[keep].argmax(-1) == labels[keep]).cpu()
        kinds = isthing[labels[keep].cpu()]
        for kind in (True, False):
            correct[kind] += int(hits[kinds == kind].sum())
            count[kind] += int((kinds == kind).sum())
    total = count[True] + count[False]
    return {
        "all": (correct[True] + correct[False]) / max(total, 1),
        "things": correct[True] / max(count[True], 1),
        "stuff": correct[False] / max(count[False], 1),
        "n_things": count[True],
        "n_stuff": count[False],
    }
