"""Pretraining LDP's crop encoder on a COCO-panoptic training set (see ``train.crop_pretrain``).

One process, no Ray: the job is small (a few minutes on two CPU cores for the small model) and
its output, a heads checkpoint, is the ``train.init_heads`` of the Ray Train heads run.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

from ..config import load_config
from ..train.batches import collate_batch, seed_worker
from .train_data import TrainData, build_dataset, training_vocabulary

logger = logging.getLogger(__name__)

HEADS_FILE = "heads_init.safetensors"
REPORT_FILE = "crop_pretrain.json"
MASK_SOURCES = ("ground_truth", "predicted")
SEGMENT_KINDS = ("all", "things")


def run_crop_encoder_pretraining(
    config_path: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    vocabulary: Optional[str] = None,
    init_heads: Optional[str | Path] = None,
    val_dir: Optional[str | Path] = None,
    images_per_step: int = 32,
    steps: int = 600,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 50,
    loader_workers: int = 1,
    num_threads: Optional[int] = None,
    overrides: Optional[dict[str, Any]] = None,
    progress: bool = True,
    mask_source: str = "ground_truth",
    crops_per_step: int = 128,
    segments: str = "all",
) -> dict[str, Any]:
    """Pretrain ``ldp.crop_encoder`` and write a heads checkpoint to start heads training from.

    Args:
        config_path: model config; ``ldp.crop_encoder`` is switched on whatever it says.
        data_dir: COCO-panoptic training folder (panoptic.json, images/, panoptic/).
        out_dir: receives ``heads_init.safetensors`` (the other head tensors from ``init_heads``,
            or freshly initialised) and ``crop_pretrain.json`` (history, validation accuracy).
        vocabulary: training vocabulary spec; default: the dataset's categories.
        init_heads: heads checkpoint whose matching tensors fill the rest of the heads.
        val_dir: a COCO-panoptic folder to report accuracy on (no augmentation).
        images_per_step: images per step; every ground-truth segment in them is one crop.
        log_every: steps between history entries (mean loss and accuracy since the last one).
        loader_workers: processes reading and augmenting images while the encoder trains (0: none).
        mask_source: ``ground_truth``: every ground-truth segment of ``images_per_step``
            augmented images is a crop. ``predicted``: the model with the ``init_heads`` heads (and
            its backbones) runs once over the un-augmented training set; each predicted mask
            matched to a ground-truth segment (IoU > 0.5) becomes a crop, and each step draws
            ``crops_per_step`` of them, turned and mirrored. Validation then also uses predicted
            masks and reports the heads' own accuracy on the same predictions.
        segments: ``all`` trains on every segment; ``things`` on thing segments only (the
            stuff classes are told apart by LDP's pooled features already; validation still
            reports both kinds).
    Returns:
        The report written to ``crop_pretrain.json``, with ``"heads"`` the checkpoint path.
    """
    import torch
    from torch.utils.data import DataLoader

    from ..model.possam import PosSAM, save_heads
    from ..train.crop_pretrain import CropClassifier, CropPretrainConfig
    from ..train.trainer import init_heads_from

    _check_arguments(mask_source, init_heads, segments, crops_per_step, loader_workers, images_per_step, steps, log_every)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    torch.manual_seed(seed)
    cfg = load_config(config_path, overrides)
    cfg.ldp.crop_encoder = True
    data = TrainData.from_dir(data_dir)
    vocab = training_vocabulary(data, vocabulary)
    predicted = mask_source == "predicted"
    things_only = segments == "things"
    # Ground-truth masks: only the heads are trained and saved, and SAM's normalisation is a fixed
    # buffer, so the backbone weights (gigabytes for ViT-H) are not needed. Predicted masks need
    # the whole model.
    model = PosSAM.from_config(cfg, load_backbones=predicted)
    if init_heads is not None:
        init_heads_from(model, init_heads)
    classifier = CropClassifier(model.ldp.crop_encoder, len(vocab))
    recipe = CropPretrainConfig(steps=steps, lr=lr, seed=seed, log_every=log_every)
    val_loader = None
    if val_dir is not None:
        # Read before training: a bad folder fails at once, not after the training.
        val_set = build_dataset(cfg, TrainData.from_dir(val_dir), vocab, seed=0, augment=False)
        val_loader = DataLoader(val_set, batch_size=images_per_step, shuffle=False, collate_fn=collate_batch)
    loading = {"images_per_step": images_per_step, "loader_workers": loader_workers, "seed": seed}
    if predicted:
        history, bank, accuracy = _pretrain_on_predicted_masks(
            model, classifier, cfg, data, vocab, recipe, val_loader, crops_per_step, things_only, progress, data_dir, **loading
        )
        training_crops: Optional[int] = len(bank)
    else:
        history = _pretrain_on_ground_truth(model, classifier, cfg, data, vocab, recipe, things_only, progress, data_dir, **loading)
        accuracy = _ground_truth_accuracy(model, classifier, cfg, vocab, val_loader)
        training_crops = None
    report: dict[str, Any] = {
        "config": str(config_path),
        "data": str(data_dir),
        "init_heads": str(init_heads) if init_heads is not None else None,
        "mask_source": mask_source,
        "segments": segments,
        "images_per_step": images_per_step,
        "crops_per_step": crops_per_step if predicted else None,
        "training_crops": training_crops,
        "recipe": recipe.__dict__,
        "history": history,
    }
    if accuracy is not None:
        report["validation"] = {"data": str(val_dir), **accuracy}
        logger.info("crop encoder validation accuracy: %s", report["validation"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heads = out / HEADS_FILE
    save_heads(model, heads, cfg, vocab, extra={"crop_encoder_pretraining": json.dumps(report["history"][-1:])})
    report["heads"] = str(heads)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def _check_arguments(mask_source: str, init_heads: Any, segments: str, crops_per_step: int, loader_workers: int,
                     images_per_step: int, steps: int, log_every: int) -> None:
    """ValueError naming the first argument out of its range."""
    if mask_source not in MASK_SOURCES:
        raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")
    if mask_source == "predicted" and init_heads is None:
        raise ValueError("mask_source='predicted' needs init_heads: the trained heads whose masks the encoder learns from")
    if segments not in SEGMENT_KINDS:
        raise ValueError(f"segments must be one of {SEGMENT_KINDS}, got {segments!r}")
    if crops_per_step < 1:
        raise ValueError(f"crops_per_step must be >= 1, got {crops_per_step}")
    if loader_workers < 0:
        raise ValueError(f"loader_workers must be >= 0, got {loader_workers}")
    if min(images_per_step, steps, log_every) < 1:
        raise ValueError(f"images_per_step, steps and log_every must be >= 1 (got {images_per_step}, {steps}, {log_every})")


def _pretrain_on_predicted_masks(
    model: Any, classifier: Any, cfg: Any, data: TrainData, vocab: Any, recipe: Any, val_loader: Any, crops_per_step: int,
    things_only: bool, progress: bool, data_dir: Any, *, images_per_step: int, loader_workers: int, seed: int,
) -> tuple[list[dict[str, Any]], Any, Optional[dict[str, Any]]]:
    """``mask_source="predicted"``: the init heads' masks matched to the ground truth are banked
    once (training and validation sets), then each step draws ``crops_per_step`` of them.

    Returns:
        (history, the training bank, validation accuracy or None without ``val_loader``).
    """
    from torch.utils.data import DataLoader

    from ..train.crop_pretrain import bank_accuracy, bank_batch_logits, is_thing_label, predicted_mask_bank, pretrain_crop_encoder

    encoder = model.ldp.crop_encoder
    # A fresh encoder's projection is zero (and is not trained here).
    fresh = not encoder.proj.weight.any() and not encoder.proj.bias.any()
    model.eval()
    text = model.clip.text_classifier(vocab)
    plain = build_dataset(cfg, data, vocab, seed=seed, augment=False)
    loader = DataLoader(plain, batch_size=images_per_step, shuffle=False, collate_fn=collate_batch, num_workers=loader_workers)
    bank = predicted_mask_bank(model, loader, text, cfg.sam.pixel_mean, embed_crops=not fresh, progress=progress)
    # Also before training: the heads' own classes on it are those of the init_heads model
    # (an encoder with a trained projection takes part in them, and training changes it).
    val_bank = predicted_mask_bank(model, val_loader, text, cfg.sam.pixel_mean, embed_crops=not fresh, progress=progress) if val_loader is not None else None
    logger.info("%d predicted masks matched in %d training images (mean IoU %.3f)", len(bank), len(plain), float(bank.iou.mean()))
    if things_only:
        bank = bank.subset(is_thing_label(bank.labels, vocab.isthing))
        if len(bank) == 0:
            raise ValueError(f"{data_dir}: no predicted mask matched a thing segment (segments='things')")
        logger.info("%d of them thing segments", len(bank))
    history = pretrain_crop_encoder(classifier, lambda g: bank_batch_logits(classifier, bank, crops_per_step, g), recipe, progress=progress)
    accuracy = bank_accuracy(classifier, val_bank, vocab.isthing) if val_bank is not None else None
    return history, bank, accuracy


def _pretrain_on_ground_truth(
    model: Any, classifier: Any, cfg: Any, data: TrainData, vocab: Any, recipe: Any, things_only: bool, progress: bool,
    data_dir: Any, *, images_per_step: int, loader_workers: int, seed: int,
) -> list[dict[str, Any]]:
    """``mask_source="ground_truth"``: every ground-truth segment of ``images_per_step`` augmented
    images is a crop; returns the history."""
    import torch
    from torch.utils.data import DataLoader

    from ..model.possam import MASK_STRIDE
    from ..train.crop_pretrain import crop_batch_logits, ignore_stuff, pretrain_crop_encoder

    dataset = build_dataset(cfg, data, vocab, seed=seed)
    loader = DataLoader(
        dataset, batch_size=images_per_step, shuffle=True, drop_last=True, collate_fn=collate_batch,
        generator=torch.Generator().manual_seed(seed), num_workers=loader_workers,
        persistent_workers=loader_workers > 0,
        worker_init_fn=functools.partial(seed_worker, base_seed=seed) if loader_workers > 0 else None,
    )
    if len(loader) == 0:
        raise ValueError(f"{data_dir}: {len(dataset)} images, fewer than images_per_step={images_per_step}")
    batches = _endless(loader)

    def step_logits(generator: Any) -> Any:
        logits, labels = crop_batch_logits(classifier, next(batches), model.sam.normalize, cfg.sam.pixel_mean, MASK_STRIDE, generator)
        return logits, ignore_stuff(labels, vocab.isthing) if things_only else labels

    return pretrain_crop_encoder(classifier, step_logits, recipe, progress=progress)


def _ground_truth_accuracy(model: Any, classifier: Any, cfg: Any, vocab: Any, val_loader: Any) -> Optional[dict[str, Any]]:
    """The encoder's accuracy on the validation set's ground-truth segments (None without one)."""
    from ..model.possam import MASK_STRIDE
    from ..train.crop_pretrain import crop_accuracy

    if val_loader is None:
        return None
    return crop_accuracy(classifier, val_loader, model.sam.normalize, cfg.sam.pixel_mean, MASK_STRIDE, vocab.isthing)


def _endless(loader: Any) -> Iterator[dict[str, Any]]:
    while True:
        yield from loader
