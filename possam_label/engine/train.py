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
        from ..data.coco_panoptic import coco_panoptic_layout

        return cls(*(str(p) for p in coco_panoptic_layout(root)))

    def source(self) -> Any:
        """This folder as a :class:`~possam_label.data.sources.TrainingSource`."""
        from ..data.coco_panoptic import CocoPanopticSource

        return CocoPanopticSource(self.json_path, self.image_dir, self.panoptic_dir)


def resolve_training_source(
    spec: Any,
    *,
    min_score: Optional[float] = None,
    workdir: Optional[str | Path] = None,
    label_field: str = "possam",
    reviewed_only: bool = False,
) -> Any:
    """The :class:`~possam_label.data.sources.TrainingSource` of a ``--data`` value: a folder
    (COCO panoptic, autolabel output, review export), ``fiftyone://DATASET[/VIEW]`` (snapshotted
    into ``workdir``), a :class:`TrainData` or a source."""
    from ..data.sources import TrainingSource, open_training_source, source_scheme

    if isinstance(spec, TrainingSource):
        return spec
    if isinstance(spec, TrainData):
        return spec.source()
    if source_scheme(spec) == "fiftyone":
        from ..fiftyone import training_source  # noqa: F401  (registers the scheme; needs FiftyOne)
    return open_training_source(spec, min_score=min_score, workdir=workdir, label_field=label_field, reviewed_only=reviewed_only)


def _with_reference_synonyms(vocabulary: Any, references: list[Any]) -> Any:
    """Classes listed by name only (exports keep no synonyms) take the synonyms of the same class
    in a reference vocabulary (the config's), so their text embeddings are the ones labeling used."""
    from ..vocab import Vocabulary

    synonyms = list(vocabulary.synonyms)
    changed = False
    for i, (name, syns) in enumerate(zip(vocabulary.names, vocabulary.synonyms)):
        if len(syns) > 1:
            continue
        for reference in references:
            try:
                j = reference.index_of(name)
            except KeyError:
                continue
            if reference.names[j].casefold() == name.casefold() and len(reference.synonyms[j]) > 1:
                synonyms[i] = (name,) + tuple(s for s in reference.synonyms[j] if s.casefold() != name.casefold())
                changed = True
                break
    if not changed:
        return vocabulary
    return Vocabulary(names=vocabulary.names, synonyms=tuple(synonyms), isthing=vocabulary.isthing, category_ids=vocabulary.category_ids, colors=vocabulary.colors)


def training_vocabulary(data: Any, spec: Optional[str] = None, references: Optional[list[Any]] = None) -> Any:
    """The vocabulary a run trains on: ``spec`` (``load_vocabulary``) extended with the classes
    reviewers introduced, or (no spec) the source's categories, new classes included.

    Args:
        data: a :class:`TrainData` or a training source.
        references: vocabularies whose synonyms fill in classes the source lists by name only.
    """
    from ..vocab import Vocabulary, load_vocabulary

    source = resolve_training_source(data)
    categories = source.categories()
    if spec is None:
        vocabulary = Vocabulary.from_coco_categories(categories)
        return _with_reference_synonyms(vocabulary, references or [])
    vocabulary = load_vocabulary(spec)
    new = [name for name in source.reviewer_classes() if _index_or_none(vocabulary, name) is None]
    if not new:
        return vocabulary
    by_name = {str(c.get("name")): c for c in categories}
    extra = Vocabulary.from_coco_categories([by_name[n] for n in new if n in by_name])
    logger.info("classes introduced in review extend the training vocabulary: %s", ", ".join(extra.names))
    taken = set(vocabulary.category_ids)
    next_id = max(taken, default=0) + 1
    ids = []
    for cid in extra.category_ids:
        if cid in taken:
            cid, next_id = next_id, next_id + 1
        taken.add(cid)
        ids.append(cid)
    return Vocabulary(
        names=vocabulary.names + extra.names,
        synonyms=vocabulary.synonyms + extra.synonyms,
        isthing=vocabulary.isthing + extra.isthing,
        category_ids=vocabulary.category_ids + tuple(ids),
        colors=vocabulary.colors + extra.colors,
    )


def _index_or_none(vocabulary: Any, name: str) -> Optional[int]:
    try:
        return vocabulary.index_of(name)
    except KeyError:
        return None


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "images": torch.stack([s["image"] for s in samples]),
        "valid": torch.stack([s["valid"] for s in samples]) if samples[0].get("valid") is not None else None,
        "targets": [{"labels": s["labels"], "masks": s["masks"]} for s in samples],
    }


def build_dataset(cfg: PosSAMConfig, data: Any, vocabulary: Any, seed: int, augment: bool = True):
    """The training dataset of ``data`` (a :class:`TrainData` or a training source): large-scale
    jitter to the SAM input size, or (``augment=False``) SAM's resize-longest-side-and-pad."""
    from ..data.augment import LargeScaleJitter, ResizeLongestSidePad
    from ..data.sources import PanopticTargetDataset

    size = cfg.sam.resolved().img_size
    if augment:
        transform = LargeScaleJitter(size, cfg.train.lsj_min_scale, cfg.train.lsj_max_scale, seed=seed)
    else:
        transform = ResizeLongestSidePad(size)
    return PanopticTargetDataset(resolve_training_source(data), vocabulary=vocabulary, transform=transform)


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
        _train_iterations(model, heads, criterion, optimizer, batches, text, cfg, device, vocabulary, out_dir, rank, start, validator, val_every)
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

    _train_iterations(model, heads, criterion, optimizer, epochs(), text, cfg, device, vocabulary, out_dir, rank, start, validator, val_every)


BEST_HEADS = "best.safetensors"
BEST_METRICS = "best_metrics.json"


class Validator:
    """PQ on a validation source every ``every`` iterations (rank 0); keeps the best heads.

    Writes ``out_dir/best.safetensors`` (a PosSAM head checkpoint) and ``out_dir/best_metrics.json``
    whenever the validation PQ beats the best so far (read back on resume), and returns the
    figures for metrics.jsonl.
    """

    def __init__(self, model: Any, cfg: PosSAMConfig, source: Any, vocabulary: Any, train_vocabulary: Any, device: Any,
                 out_dir: Path, every: int, limit: Optional[int] = None) -> None:
        self.model, self.cfg, self.source = model, cfg, source
        self.vocabulary, self.train_vocabulary = vocabulary, train_vocabulary
        self.device, self.out_dir, self.every, self.limit = device, out_dir, max(1, int(every)), limit
        best = out_dir / BEST_METRICS
        self.best_pq = json.loads(best.read_text())["pq"] if best.is_file() else None

    def run(self, iteration: int) -> dict[str, Any]:
        """Evaluate, keep the heads when best; returns ``{"val_pq", "val_sq", "val_rq", "val_things_pq", "val_stuff_pq", "val_images"}``."""
        from ..eval.model_eval import evaluate_on_source
        from ..model.possam import save_heads
        from ..predictor import PosSAMPredictor
        from ..train.trainer import freeze_modules

        started = time.time()
        training = self.model.training
        predictor = PosSAMPredictor(self.model, self.cfg, self.vocabulary, self.train_vocabulary, self.device)
        try:
            results = evaluate_on_source(predictor, self.source, self.vocabulary, limit=self.limit)
        finally:
            if training:
                self.model.train()
                freeze_modules(self.model, self.cfg.train.frozen_modules)
        metrics = {
            "val_pq": results["All"]["pq"], "val_sq": results["All"]["sq"], "val_rq": results["All"]["rq"],
            "val_things_pq": results["Things"]["pq"], "val_stuff_pq": results["Stuff"]["pq"],
            "val_images": results["num_images"], "val_seconds": time.time() - started,
        }
        if self.best_pq is None or metrics["val_pq"] > self.best_pq:
            self.best_pq = metrics["val_pq"]
            save_heads(self.model, self.out_dir / BEST_HEADS, self.cfg, self.train_vocabulary,
                       extra={"iteration": str(iteration), "val_pq": f"{metrics['val_pq']:.6f}"})
            names = results["class_names"]
            best = {
                "iteration": iteration, "pq": metrics["val_pq"], "sq": metrics["val_sq"], "rq": metrics["val_rq"],
                "things_pq": metrics["val_things_pq"], "stuff_pq": metrics["val_stuff_pq"], "num_images": results["num_images"],
                "validation": self.source.describe(), "heads": str(self.out_dir / BEST_HEADS),
                "per_class_pq": {names[cid]: scores["pq"] for cid, scores in results["per_class"].items()},
            }
            tmp = self.out_dir / f".{BEST_METRICS}.tmp"
            tmp.write_text(json.dumps(best, indent=2) + "\n")
            os.replace(tmp, self.out_dir / BEST_METRICS)
            metrics["val_best"] = True
        logger.info("iter %d validation PQ %.1f (things %.1f, stuff %.1f) on %d images%s", iteration, 100 * metrics["val_pq"],
                    100 * metrics["val_things_pq"], 100 * metrics["val_stuff_pq"], metrics["val_images"], ", best so far" if metrics.get("val_best") else "")
        return metrics


def _train_iterations(model, heads, criterion, optimizer, batches, text, cfg, device, vocabulary, out_dir: Path, rank: int, start: int,
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


def run_training(
    config_path: str | Path,
    data_dir: Any,
    out_dir: str | Path,
    vocabulary: Optional[str] = None,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: int = 1,
    ray_address: Optional[str] = None,
    max_failures: int = 0,
    overrides: Optional[dict[str, Any]] = None,
    min_score: Optional[float] = None,
    label_field: str = "possam",
    reviewed_only: bool = False,
    val_data: Any = None,
    val_every: Optional[int] = None,
    val_limit: Optional[int] = None,
    schedule: str = "config",
) -> dict[str, Any]:
    """Train PosSAM heads; resumes from ``out_dir``'s last checkpoint.

    Args:
        config_path: YAML config (backbone weights and head sizes; ``train`` section for the recipe).
        data_dir: a COCO-panoptic folder (panoptic.json, images/, panoptic/), an autolabel output,
            a review export, ``fiftyone://DATASET[/VIEW]`` (snapshotted into ``out_dir/train_data``),
            or a training source (see :mod:`possam_label.data.sources`).
        out_dir: checkpoints, metrics.jsonl and the final ``heads.safetensors``; with validation
            also ``best.safetensors`` and ``best_metrics.json``.
        vocabulary: training vocabulary spec; default: the dataset's categories. Classes reviewers
            introduced are added to a given vocabulary.
        num_workers: Ray Train workers (data-parallel).
        use_gpu: one GPU per worker.
        cpus_per_worker: CPUs reserved per worker (also its torch thread count on CPU).
        ray_address: an existing cluster; default a local Ray.
        max_failures: worker failures Ray Train retries (each retry resumes from the last checkpoint).
        min_score: segments scored below this are void (autolabel outputs; unreviewed FiftyOne labels).
        label_field, reviewed_only: for ``fiftyone://`` data: the labels field; only samples marked reviewed.
        val_data: a validation source (any ``data_dir`` form); PQ every ``val_every`` iterations
            (default: ``checkpoint_every``) on its first ``val_limit`` images, best heads kept.
        schedule: "config" (the config's recipe) or "finetune" (:func:`finetune_schedule`).
    Returns:
        {"iterations", "checkpoint", "heads", "metrics", "data", "best"}.
    Raises:
        TrainingDataError (a ValueError): data or validation data that cannot train, before any
        worker starts; FileNotFoundError / ValueError for a bad config or init_heads.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from ..data.sources import source_scheme
    from ..train.trainer import latest_checkpoint
    from ..vocab import Vocabulary, load_vocabulary

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    cfg = load_config(config_path, overrides)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    resuming = latest_checkpoint(out) is not None
    snapshot = out / "train_data"
    if resuming and source_scheme(data_dir) == "fiftyone" and (snapshot / "panoptic.json").is_file():
        logger.info("resuming: training on the snapshot %s taken when the run started", snapshot)
        source = resolve_training_source(snapshot)
    else:
        source = resolve_training_source(data_dir, min_score=min_score, workdir=snapshot, label_field=label_field, reviewed_only=reviewed_only)
    from ..predictor import _resolve_vocab

    # The config's vocabularies: their synonyms complete classes a source lists by name only.
    references = [load_vocabulary(_resolve_vocab(cfg, spec)) for spec in dict.fromkeys((cfg.vocabulary, cfg.train_vocabulary)) if spec]
    previous = out / "train_config.json"
    if resuming and previous.is_file():
        vocab = Vocabulary.from_dict(json.loads(previous.read_text())["vocabulary"])  # the checkpoint's classes
    else:
        vocab = training_vocabulary(source, vocabulary, references)
    summary = source.check(vocab)
    logger.info("training data: %s: %d images, %d segments of %d classes", source.describe(), summary.num_images, summary.num_segments, len(summary.per_class))

    val_source, val_vocab = None, None
    if val_data is not None:
        val_source = resolve_training_source(val_data, workdir=out / "val_data", label_field=label_field)
        val_vocab = _with_reference_synonyms(Vocabulary.from_coco_categories(val_source.categories()), [vocab] + references)
        val_source.check(val_vocab)
    if schedule == "finetune":
        explicit = dict((overrides or {}).get("train") or {})
        chosen = finetune_schedule(cfg, summary.num_images, explicit)
        logger.info("finetune schedule: %s", chosen)
    if val_every is None:
        val_every = cfg.train.checkpoint_every
    if cfg.train.init_heads:
        # Workers may run elsewhere (another cwd): hand them an absolute path checked here.
        init_heads = Path(cfg.resolve_path(cfg.train.init_heads)).resolve()
        if not init_heads.is_file():
            raise FileNotFoundError(f"train.init_heads: {init_heads} does not exist")
        cfg.train.init_heads = str(init_heads)
    record = {
        "config": cfg.to_dict(), "vocabulary": vocab.to_dict(), "data": str(data_dir), "source": source.describe(),
        "data_summary": {"images": summary.num_images, "segments": summary.num_segments, "per_class": summary.per_class},
        "reviewer_classes": source.reviewer_classes(), "min_score": min_score, "schedule": schedule,
        "validation": {"data": str(val_data), "source": val_source.describe(), "every": val_every, "limit": val_limit} if val_source is not None else None,
    }
    previous.write_text(json.dumps(record, indent=2))
    loop_config = {
        "config": json.dumps(cfg.to_dict()),
        "base_dir": cfg.base_dir,
        "vocabulary": json.dumps(vocab.to_dict()),
        "out_dir": str(out),
        "source": source.for_workers(),
        "val_source": val_source.for_workers() if val_source is not None else None,
        "val_vocabulary": json.dumps(val_vocab.to_dict()) if val_vocab is not None else None,
        "val_every": val_every,
        "val_limit": val_limit,
        "num_threads": cpus_per_worker if not use_gpu else None,
    }
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address)
        else:
            # A local Ray bound to loopback only.
            # No dashboard: a local training run needs none, and Ray starts faster without it.
            ray.init(num_cpus=max(num_workers * cpus_per_worker, 1) + 1, _node_ip_address="127.0.0.1", include_dashboard=False)
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
    best = out / BEST_METRICS
    return {
        "iterations": cfg.train.max_iters,
        "checkpoint": str(last) if last else None,
        "heads": str(heads) if last else None,
        "metrics": str(out / "metrics.jsonl"),
        "data": source.describe(),
        "best": json.loads(best.read_text()) if val_source is not None and best.is_file() else None,
    }
