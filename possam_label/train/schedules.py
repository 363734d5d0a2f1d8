"""Learning-rate schedules shared by the trainers."""

from __future__ import annotations

import math


def cosine_lr(step: int, total: int, base_lr: float, warmup: int, final_ratio: float = 0.05) -> float:
    """Linear warmup then cosine decay to ``final_ratio * base_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
