"""Training PosSAM heads with Ray Train (TorchTrainer): one CPU worker locally, N GPU workers on a cluster."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import PosSAMConfig, config_from_json, load_config

logger = logging.getLogger(__name__)


@dataclass
class TrainData:
    """A COCO-panoptic training set (detectron2 layout)."""

    json_path: str
    image_dir: str
    panoptic_dir: str

    @classmethod
    def from_dir(cls, root: str | Path) -> "TrainData":
        """``root/panoptic.json``, ``root/images/``, ``root/panoptic/`` (the layout of our writers)."""
        root = Path(root)
        json_path = root / "panoptic.json"
        if not json_path.is_file():
            candidates = sorted(root.glob("panoptic*.json")) + sorted((root / "annotations").glob("panoptic*.json"))
            if not candidates:
                raise FileNotFoundError(f"{root}: no panoptic.json (COCO-panoptic layout: panoptic.json, images/, panoptic/)")
            json_path = candidates[0]
        stem = json_path.with_suffix("")
        panoptic_dir = root / "panoptic" if (root / "panoptic").is_dir() else stem
        image_dir = root / "images"
        for path in (panoptic_dir, image_dir):
            if not path.is_dir():
                raise FileNotFoundError(f"{root}: missing folder {path}")
        return cls(str(json_path), str(image_dir), str(panoptic_dir))


def training_vocabulary(data: TrainData, spec: Optional[str] = None) -> Any:
    """The vocabulary a run trains on: ``spec`` (``load_vocabulary``) or the dataset's categories."""
    from ..vocab import Vocabulary, load_vocabulary

    if spec is not None:
        return load_vocabulary(spec)
    with open(data.json_path) as fh:
        return Vocabulary.from_coco_categories(json.load(fh)["categories"])


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "images": torch.stack([s["image"] for s in samples]),
        "valid": torch.stack([s["valid"] for s in samples]) if samples[0].get("valid") is not None else None,
        "targets": [{"labels": s["labels"], "masks": s["masks"]} for s in samples],
    }


def build_dataset(cfg: PosSAMConfig, data: TrainData, vocabulary: Any, seed: int, augment: bool = True):
    """The training dataset: large-scale jitter to the SAM input size, or (``augment=False``)
    SAM's resize-longest-side-and-pad."""
    from ..data.augment import LargeScaleJitter, ResizeLongestSidePad
    from ..data.coco_panoptic import CocoPanopticDataset

    size = cfg.sam.resolved().img_size
    if augment:
        transform = LargeScaleJitter(size, cfg.train.lsj_min_scale, cfg.train.lsj_max_scale, seed=seed)
    else:
        transform = ResizeLongestSidePad(size)
    return CocoPanopticDataset(data.json_path, data.image_dir, data.panoptic_dir, vocabulary=vocabulary, transform=transform)


class CachedFeatures:
    """Frozen-encoder features of a dataset shard, kept in memory (fp16) with their targets.

    Iterating yields batches shaped like the regular loader's, plus "features" = (sam, clip).
    """

    def __init__(self, model: Any, dataset: Any, indices: list[int], batch_size: int, device: Any, progress: bool) -> None:
        import torch
        from tqdm import tqdm

        from ..train.trainer import fill_padding

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
            batch = _collate(samples)
            images = fill_padding(batch["images"].to(device), batch["valid"], pad)
            with torch.no_grad():
                sam_features, clip_features = model.encode(images)
            self.sam.extend(sam_features.half().cpu())
            self.clip.extend(clip_features.half().cpu())
            self.targets.extend({"labels": t["labels"], "masks": t["masks"]} for t in batch["targets"])
            if self.pixels is not None:
                self.pixels.extend(batch["images"])
                self.valid.extend(batch["valid"] if batch["valid"] is not None else [None] * len(samples))

    def __len__(self) -> int:
        return len(self.targets)

    def _pixels(self, idx: list[int]) -> Any:
        """(B, 3, S, S) float32 inputs of the cached images, padding filled as at encoding."""
        import torch

        from ..train.trainer import fill_padding

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


def _seed_worker(worker_id: int, base_seed: int) -> None:
    """DataLoader workers draw different augmentation streams."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset.transform, "reseed"):
        info.dataset.transform.reseed(base_seed + 7919 * (worker_id + 1))


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

    data = TrainData(**loop_config["data"])
    per_worker = max(1, cfg.train.batch_size // world)
    if cfg.train.cache_features:
        dataset = build_dataset(cfg, data, vocabulary, seed=0, augment=False)
        shard = list(range(rank, len(dataset), world))
        cache = CachedFeatures(model, dataset, shard, per_worker, device, progress=rank == 0)
        batches = cache.batches(torch.Generator().manual_seed(cfg.train.seed + rank + start))
        _train_iterations(model, heads, criterion, optimizer, batches, text, cfg, device, vocabulary, out_dir, rank, start)
        return
    dataset = build_dataset(cfg, data, vocabulary, seed=cfg.train.seed * 1000 + rank + start)
    loader = DataLoader(
        dataset,
        batch_size=per_worker,
        shuffle=True,
        num_workers=cfg.train.num_workers,
        collate_fn=_collate,
        drop_last=True,
        persistent_workers=cfg.train.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.train.seed + start),
        worker_init_fn=functools.partial(_seed_worker, base_seed=cfg.train.seed * 1000 + rank + start),
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

    _train_iterations(model, heads, criterion, optimizer, epochs(), text, cfg, device, vocabulary, out_dir, rank, start)


def _train_iterations(model, heads, criterion, optimizer, batches, text, cfg, device, vocabulary, out_dir: Path, rank: int, start: int) -> None:
    """The iteration loop shared by the image and cached-feature paths."""
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
        if rank == 0 and is_log:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
            logger.info("iter %d loss %.4f", iteration, losses["loss"])
        if rank == 0 and is_ckpt:
            save_training_checkpoint(out_dir, model, optimizer, iteration, cfg, vocabulary)
        if is_log or is_ckpt:
            ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    bar.close()


def run_training(
    config_path: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    vocabulary: Optional[str] = None,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: int = 1,
    ray_address: Optional[str] = None,
    max_failures: int = 0,
    overrides: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Train PosSAM heads on a COCO-panoptic dataset; resumes from ``out_dir``'s last checkpoint.

    Args:
        config_path: YAML config (backbone weights and head sizes; ``train`` section for the recipe).
        data_dir: COCO-panoptic folder (panoptic.json, images/, panoptic/).
        out_dir: checkpoints, metrics.jsonl and the final ``heads.safetensors``.
        vocabulary: training vocabulary spec; default: the dataset's categories.
        num_workers: Ray Train workers (data-parallel).
        use_gpu: one GPU per worker.
        cpus_per_worker: CPUs reserved per worker (also its torch thread count on CPU).
        ray_address: an existing cluster; default a local Ray.
        max_failures: worker failures Ray Train retries (each retry resumes from the last checkpoint).
    Returns:
        {"iterations", "checkpoint", "heads", "metrics"}.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from ..train.trainer import latest_checkpoint

    cfg = load_config(config_path, overrides)
    if cfg.train.init_heads:
        # Workers may run elsewhere (another cwd): hand them an absolute path checked here.
        init_heads = Path(cfg.resolve_path(cfg.train.init_heads)).resolve()
        if not init_heads.is_file():
            raise FileNotFoundError(f"train.init_heads: {init_heads} does not exist")
        cfg.train.init_heads = str(init_heads)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = TrainData.from_dir(data_dir)
    vocab = training_vocabulary(data, vocabulary)
    (out / "train_config.json").write_text(json.dumps({"config": cfg.to_dict(), "vocabulary": vocab.to_dict(), "data": str(data_dir)}, indent=2))
    loop_config = {
        "config": json.dumps(cfg.to_dict()),
        "base_dir": cfg.base_dir,
        "vocabulary": json.dumps(vocab.to_dict()),
        "out_dir": str(out),
        "data": {k: str(Path(v).resolve()) for k, v in data.__dict__.items()},
        "num_threads": cpus_per_worker if not use_gpu else None,
    }
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address)
        else:
            # A local Ray bound to loopback only.
            ray.init(num_cpus=max(num_workers * cpus_per_worker, 1) + 1, _node_ip_address="127.0.0.1")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name="possam_train",
            storage_path=str(out / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    last = latest_checkpoint(out)
    heads = out / "heads.safetensors"
    if last is not None:
        tmp = heads.with_suffix(".tmp")
        tmp.write_bytes((last / "heads.safetensors").read_bytes())
        os.replace(tmp, heads)
    return {
        "iterations": cfg.train.max_iters,
        "checkpoint": str(last) if last else None,
        "heads": str(heads) if last else None,
        "metrics": str(out / "metrics.jsonl"),
    }
