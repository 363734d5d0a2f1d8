"""Training the heads on cached frozen-encoder features (``train.cache_features``)."""

from __future__ import annotations

from typing import Any, Optional

from .batches import collate_batch, training_target


class CachedFeatures:
    """Frozen-encoder features of a dataset shard, kept in memory (fp16) with their targets.

    Iterating yields batches shaped like the regular loader's, plus "features" = (sam, clip).
    """

    def __init__(self, model: Any, dataset: Any, indices: list[int], batch_size: int, device: Any, progress: bool) -> None:
        import torch
        from tqdm import tqdm

        from .trainer import fill_padding

        self.sam: list = []
        self.clip: list = []
        self.targets: list = []
        # The inputs too when the heads read them (detail stem, LDP crop encoder): uint8
        # images (192 KiB at 256 px) and valid masks; the padding is filled at batch time.
        self.pixels: Optional[list] = [] if model.needs_pixels else None
        self.valid: list = []
        self.batch_size = batch_size
        self.pad = pad = model.sam.pixel_mean.view(-1).tolist()
        for start in tqdm(range(0, len(indices), batch_size), desc="encode training set", disable=not progress):
            samples = [dataset[i] for i in indices[start : start + batch_size]]
            batch = collate_batch(samples)
            images = fill_padding(batch["images"].to(device), batch["valid"], pad)
            with torch.no_grad():
                sam_features, clip_features = model.encode(images)
            self.sam.extend(sam_features.half().cpu())
            self.clip.extend(clip_features.half().cpu())
            self.targets.extend(training_target(t) for t in batch["targets"])
            if self.pixels is not None:
                self.pixels.extend(batch["images"])
                self.valid.extend(batch["valid"] if batch["valid"] is not None else [None] * len(samples))

    def __len__(self) -> int:
        return len(self.targets)

    def _pixels(self, idx: list[int]) -> Any:
        """(B, 3, S, S) float32 inputs of the cached images, padding filled as at encoding."""
        import torch

        from .trainer import fill_padding

        images = torch.stack([self.pixels[i] for i in idx])
        valid = None if self.valid[idx[0]] is None else torch.stack([self.valid[i] for i in idx])
        return fill_padding(images, valid, self.pad)

    def batches(self, generator: Any):
        """An endless stream of random batches."""
        import torch

        while True:
            order = torch.randperm(len(self), generator=generator).tolist()
            for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
                idx = order[start : start + self.batch_size]
                yield {
                    "features": (torch.stack([self.sam[i] for i in idx]).float(), torch.stack([self.clip[i] for i in idx]).float()),
                    "targets": [self.targets[i] for i in idx],
                    "pixels": self._pixels(idx) if self.pixels is not None else None,
                }
