"""Batches of :class:`~possam_label.data.sources.PanopticTargetDataset` samples for the heads' trainers."""

from __future__ import annotations

from typing import Any


def collate_batch(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of training samples into one batch (a DataLoader's ``collate_fn``).

    Args:
        samples: dataset items with "image" (3, S, S), "valid" ((S, S) bool or None), "labels"
            (N,), "masks" (N, S, S) and optionally "ignore" ((S, S) bool: void pixels); N differs
            between samples.
    Returns:
        {"images": (B, 3, S, S), "valid": (B, S, S) or None, "targets": [{"labels", "masks"[, "ignore"]}] * B}.
    """
    import torch

    return {
        "images": torch.stack([s["image"] for s in samples]),
        "valid": torch.stack([s["valid"] for s in samples]) if samples[0].get("valid") is not None else None,
        "targets": [training_target(s) for s in samples],
    }


def training_target(sample: dict[str, Any]) -> dict[str, Any]:
    """The criterion's target of one sample: labels, masks and, when the sample has one, the void
    mask (its pixels count for no mask, neither as object nor as background)."""
    target = {"labels": sample["labels"], "masks": sample["masks"]}
    if sample.get("ignore") is not None:
        target["ignore"] = sample["ignore"]
    return target


def seed_worker(worker_id: int, base_seed: int) -> None:
    """DataLoader ``worker_init_fn`` (bind ``base_seed`` with ``functools.partial``): each worker
    reseeds the dataset's augmentation, so workers draw different augmentation streams."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset.transform, "reseed"):
        info.dataset.transform.reseed(base_seed + 7919 * (worker_id + 1))
