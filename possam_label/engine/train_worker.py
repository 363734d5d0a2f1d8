"""The body of every Ray Train worker of a heads training run (:func:`~.train.run_training`)."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

from ..config import config_from_json
from ..train.batches import collate_batch, seed_worker
from ..train.feature_cache import CachedFeatures
from .train_data import build_dataset
from .train_validation import Validator

logger = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Body of every Ray Train worker: build, resume, iterate, checkpoint (rank 0)."""
    import ray.train
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader

    from ..model.possam import PosSAM
    from ..train.trainer import HeadsForward, build_criterion, build_optimizer, freeze_modules, init_heads_from, latest_checkpoint, load_training_checkpoint
    from ..vocab import Vocabulary

    cfg = config_from_json(loop_config["config"])
    cfg.base_dir = loop_config["base_dir"]
    vocabulary = Vocabulary.from_dict(json.loads(loop_config["vocabulary"]))
    out_dir = Path(loop_config["out_dir"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(cfg.train.seed + rank)
    if loop_config.get("num_threads"):
        torch.set_num_threads(int(loop_config["num_threads"]))
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        # Tiny weights and gradients late in training become denormal floats, which the CPU
        # handles an order of magnitude slower (iterations slowed 2x after ~700 steps before this).
        torch.set_flush_denormal(True)

    model = PosSAM.from_config(cfg).to(device)
    model.train()
    freeze_modules(model, cfg.train.frozen_modules)
    text = model.clip.text_classifier(vocabulary)
    criterion = build_criterion(cfg.train, len(vocabulary))
    optimizer = build_optimizer(model, cfg.train)
    start = 0
    resume = latest_checkpoint(out_dir)
    if resume is not None:
        start = load_training_checkpoint(resume, model, optimizer, cfg)
    elif cfg.train.init_heads:
        init_heads_from(model, cfg.train.init_heads)  # made absolute by run_training
    heads = HeadsForward(model, cfg.train.deep_supervision)
    if world > 1:
        heads = ray.train.torch.prepare_model(heads, move_to_device=False)

    data = loop_config["source"]
    validator = None
    val_every = int(loop_config["val_every"]) if loop_config.get("val_source") is not None else None
    if rank == 0 and val_every is not None:
        validator = Validator(
            model, cfg, loop_config["val_source"], Vocabulary.from_dict(json.loads(loop_config["val_vocabulary"])), vocabulary,
            device, out_dir, int(loop_config["val_every"]), loop_config.get("val_limit"),
        )
    per_worker = max(1, cfg.train.batch_size // world)
    if cfg.train.cache_features:
        dataset = build_dataset(cfg, data, vocabulary, seed=0, augment=False)
        shard = list(range(rank, len(dataset), world))
        cache = CachedFeatures(model, dataset, shard, per_worker, device, progress=rank == 0)
        batches = cache.batches(torch.Generator().manual_seed(cfg.train.seed + rank + start))
        train_iterations(model, heads, criterion, optimizer, batches, text, cfg, device, vocabulary, out_dir, rank, start, validator, val_every)
        return
    dataset = build_dataset(cfg, data, vocabulary, seed=cfg.train.seed * 1000 + rank + start)
    loader = DataLoader(
        dataset,
        batch_size=per_worker,
        shuffle=True,
        num_workers=cfg.train.num_workers,
        collate_fn=collate_batch,
        drop_last=True,
        persistent_workers=cfg.train.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.train.seed + start),
        worker_init_fn=functools.partial(seed_worker, base_seed=cfg.train.seed * 1000 + rank + start),
    )
    if world > 1:
        loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)

    def epochs():
        epoch = 0
        while True:
            if world > 1 and hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    train_iterations(model, heads, criterion, optimizer, epochs(), text, cfg, device, vocabulary, out_dir, rank, start, validator, val_every)


def train_iterations(model, heads, criterion, optimizer, batches, text, cfg, device, vocabulary, out_dir: Path, rank: int, start: int,
                      validator: Optional[Validator] = None, val_every: Optional[int] = None) -> None:
    """The iteration loop shared by the image and cached-feature paths (validation by rank 0's
    ``validator`` every ``val_every`` iterations and at the end)."""
    import ray.train
    from tqdm import tqdm

    from ..train.trainer import save_training_checkpoint, set_lr, train_step

    metrics_path = out_dir / "metrics.jsonl"
    started = time.time()
    bar = tqdm(total=cfg.train.max_iters, initial=start, desc="train", disable=rank != 0, mininterval=10)
    for iteration, batch in zip(range(start + 1, cfg.train.max_iters + 1), batches):
        lr = set_lr(optimizer, iteration - 1, cfg.train)
        losses = train_step(model, heads, criterion, optimizer, batch, text, cfg, device)
        bar.update(1)
        metrics = {"iteration": iteration, "lr": lr, "seconds": time.time() - started, **losses}
        is_log = iteration % cfg.train.log_every == 0 or iteration == cfg.train.max_iters
        is_ckpt = iteration % cfg.train.checkpoint_every == 0 or iteration == cfg.train.max_iters
        # Every rank knows when rank 0 validates, so all report to Ray Train the same number of times.
        is_val = val_every is not None and (iteration % val_every == 0 or iteration == cfg.train.max_iters)
        if is_val:
            if validator is not None:
                metrics.update(validator.run(iteration))
            is_log = True
        if rank == 0 and is_log:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
            logger.info("iter %d loss %.4f", iteration, losses["loss"])
        if rank == 0 and is_ckpt:
            save_training_checkpoint(out_dir, model, optimizer, iteration, cfg, vocabulary)
        if is_log or is_ckpt:
            ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    bar.close()
