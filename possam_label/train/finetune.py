"""The ``finetune`` schedule preset: a short recipe for a few hundred reviewed images, from trained heads."""

from __future__ import annotations

from typing import Any, Optional

from ..config import PosSAMConfig

SCHEDULES = ("config", "finetune")
FINETUNE_EPOCHS = 40
FINETUNE_MIN_ITERS, FINETUNE_MAX_ITERS = 100, 2000
FINETUNE_LR_FACTOR = 0.2


def finetune_schedule(cfg: PosSAMConfig, num_images: int, explicit: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The ``finetune`` preset: a short schedule for a few hundred reviewed images, from trained heads.

    * ``init_heads``: the config's ``checkpoint`` (the heads it labels with) unless given;
    * ``max_iters``: ``FINETUNE_EPOCHS`` (40) passes over the data at the config's batch size,
      clamped to [100, 2000] (300 images at batch 8: 1500 iterations);
    * ``lr``: the config's x 0.2, ``warmup_iters`` min(20, 5 %), one x0.1 step at 80 %;
    * ``checkpoint_every`` (and the default validation period): a tenth of the run.

    Values in ``explicit`` (the caller's own ``train`` overrides) are kept as given.
    Returns the ``train`` values set.
    """
    explicit = explicit or {}
    train = cfg.train
    values: dict[str, Any] = {}
    if not train.init_heads:
        if not cfg.checkpoint:
            raise ValueError("--schedule finetune needs trained heads: set train.init_heads or the config's checkpoint")
        values["init_heads"] = cfg.resolve_path(cfg.checkpoint)
    batch = int(explicit.get("batch_size", train.batch_size))
    iters = int(explicit.get("max_iters", min(FINETUNE_MAX_ITERS, max(FINETUNE_MIN_ITERS, -(-FINETUNE_EPOCHS * num_images // batch)))))
    values.update(
        max_iters=iters,
        lr=train.lr * FINETUNE_LR_FACTOR,
        warmup_iters=min(20, max(1, iters // 20)),
        lr_steps=[int(0.8 * iters)],
        checkpoint_every=max(1, iters // 10),
        log_every=max(1, min(train.log_every, iters // 20)),
    )
    values = {k: v for k, v in values.items() if k not in explicit}
    for key, value in values.items():
        setattr(train, key, value)
    return values
