"""Training PosSAM heads with Ray Train (TorchTrainer): one CPU worker locally, N GPU workers on a cluster.

Modules, one concern each: :mod:`.train_data` (the training source, its vocabulary and dataset),
:mod:`.train_worker` (the body of every Ray Train worker), :mod:`.train_validation` (PQ on a
validation source, best heads kept); the Ray-free pieces live in :mod:`possam_label.train`.
This module is the driver: it checks the data before any worker starts, records the run and
starts the trainer.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from ..config import PosSAMConfig, load_config
from ..train.finetune import SCHEDULES, finetune_schedule
from .train_data import resolve_training_source, training_vocabulary, with_reference_synonyms
from .train_validation import BEST_METRICS
from .train_worker import train_loop_per_worker

logger = logging.getLogger(__name__)


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
    from ..train.trainer import latest_checkpoint

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    cfg = load_config(config_path, overrides)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    resuming = latest_checkpoint(out) is not None
    source = _run_source(data_dir, out / "train_data", resuming, min_score, label_field, reviewed_only)
    vocab, references = _run_vocabulary(cfg, source, vocabulary, out / "train_config.json", resuming)
    summary = source.check(vocab)
    logger.info("training data: %s: %d images, %d segments of %d classes", source.describe(), summary.num_images, summary.num_segments, len(summary.per_class))
    val_source, val_vocab = _validation_source(val_data, out / "val_data", label_field, vocab, references)
    if schedule == "finetune":
        explicit = dict((overrides or {}).get("train") or {})
        chosen = finetune_schedule(cfg, summary.num_images, explicit)
        logger.info("finetune schedule: %s", chosen)
    if val_every is None:
        val_every = cfg.train.checkpoint_every
    _make_init_heads_absolute(cfg)
    if not resuming:
        # A run without train.init_heads starts from no heads at all (the bootstrap of docs/bootstrap.md).
        logger.info("heads start from %s", cfg.train.init_heads or "random initialisation (no train.init_heads)")
    record = {
        "config": cfg.to_dict(), "vocabulary": vocab.to_dict(), "data": str(data_dir), "source": source.describe(),
        "data_summary": {"images": summary.num_images, "segments": summary.num_segments, "per_class": summary.per_class},
        "reviewer_classes": source.reviewer_classes(), "min_score": min_score, "schedule": schedule,
        "validation": {"data": str(val_data), "source": val_source.describe(), "every": val_every, "limit": val_limit} if val_source is not None else None,
    }
    (out / "train_config.json").write_text(json.dumps(record, indent=2))
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
    _fit(loop_config, out, num_workers, use_gpu, cpus_per_worker, ray_address, max_failures)
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


def _run_source(data_dir: Any, snapshot: Path, resuming: bool, min_score: Optional[float], label_field: str, reviewed_only: bool) -> Any:
    """The run's training source; a resumed ``fiftyone://`` run trains on the snapshot it took."""
    from ..data.sources import source_scheme

    if resuming and source_scheme(data_dir) == "fiftyone" and (snapshot / "panoptic.json").is_file():
        logger.info("resuming: training on the snapshot %s taken when the run started", snapshot)
        return resolve_training_source(snapshot)
    return resolve_training_source(data_dir, min_score=min_score, workdir=snapshot, label_field=label_field, reviewed_only=reviewed_only)


def _run_vocabulary(cfg: PosSAMConfig, source: Any, spec: Optional[str], previous: Path, resuming: bool) -> tuple[Any, list[Any]]:
    """(the vocabulary the run trains on, the config's vocabularies); a resumed run keeps its checkpoint's classes."""
    from ..vocab import Vocabulary, load_vocabulary, resolve_vocabulary_spec

    # The config's vocabularies: their synonyms complete classes a source lists by name only.
    references = [load_vocabulary(resolve_vocabulary_spec(name, cfg.resolve_path)) for name in dict.fromkeys((cfg.vocabulary, cfg.train_vocabulary)) if name]
    if resuming and previous.is_file():
        return Vocabulary.from_dict(json.loads(previous.read_text())["vocabulary"]), references  # the checkpoint's classes
    return training_vocabulary(source, spec, references), references


def _validation_source(val_data: Any, workdir: Path, label_field: str, vocab: Any, references: list[Any]) -> tuple[Any, Any]:
    """(validation source, its vocabulary), checked; (None, None) without ``val_data``."""
    from ..vocab import Vocabulary

    if val_data is None:
        return None, None
    val_source = resolve_training_source(val_data, workdir=workdir, label_field=label_field)
    val_vocab = with_reference_synonyms(Vocabulary.from_coco_categories(val_source.categories()), [vocab] + references)
    val_source.check(val_vocab)
    return val_source, val_vocab


def _make_init_heads_absolute(cfg: PosSAMConfig) -> None:
    """Workers may run elsewhere (another cwd): hand them an absolute ``train.init_heads`` checked here."""
    if cfg.train.init_heads:
        init_heads = Path(cfg.resolve_path(cfg.train.init_heads)).resolve()
        if not init_heads.is_file():
            raise FileNotFoundError(f"train.init_heads: {init_heads} does not exist")
        cfg.train.init_heads = str(init_heads)


def _fit(loop_config: dict[str, Any], out: Path, num_workers: int, use_gpu: bool, cpus_per_worker: int,
         ray_address: Optional[str], max_failures: int) -> None:
    """Start Ray (unless running) and run the TorchTrainer to its end; a worker error is raised here."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

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
