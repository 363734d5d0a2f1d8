"""The flywheel from the App: fine-tune PosSAM heads on the reviewed samples, then relabel with them.

Both run as delegated operations (a worker started with ``fiftyone delegated launch`` runs them)
and only call the library: :func:`possam_label.engine.train.run_training` on
``fiftyone://<this dataset>`` (reviewed samples, the labels as reviewed) and
:func:`possam_label.fiftyone.run.autolabel_samples` with the new heads. Samples a reviewer marked
reviewed keep their labels when the new ones are loaded.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import fiftyone.operators.types as types

from .operator_support import DelegatedOperator, chosen_label_field, delegated_operator_config, progress_reporter

POLL_SECONDS = 5.0


def _last_metrics(path: Path) -> dict:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def train_with_progress(report, max_iters_hint, **kwargs) -> dict:
    """Run :func:`run_training` in a thread, reporting ``(fraction, message)`` from its metrics.jsonl."""
    from possam_label.engine.train import run_training

    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = run_training(**kwargs)
        except BaseException as err:  # re-raised in the operator's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="possam-train", daemon=True)
    thread.start()
    metrics = Path(kwargs["out_dir"]) / "metrics.jsonl"
    config = Path(kwargs["out_dir"]) / "train_config.json"
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        last = _last_metrics(metrics)
        total = max_iters_hint
        if config.is_file():
            try:
                total = json.loads(config.read_text())["config"]["train"]["max_iters"]
            except (OSError, ValueError, KeyError):
                pass
        if last and report is not None:
            message = f"iteration {last['iteration']}/{total}, loss {last.get('loss', float('nan')):.3f}"
            if "val_pq" in last:
                message += f", validation PQ {100 * last['val_pq']:.1f}"
            report(min(1.0, last["iteration"] / max(total or 1, 1)), message)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class TrainOnReviewed(DelegatedOperator):
    @property
    def config(self):
        return delegated_operator_config(
            "train_on_reviewed",
            "PosSAM: train on reviewed samples",
            "Fine-tune PosSAM heads from the current ones on the samples marked reviewed (delegated)",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("out_dir", required=True, label="Output directory", description="Checkpoints, metrics.jsonl, heads.safetensors (and best.safetensors with validation)")
        inputs.str("config", required=True, label="PosSAM config (YAML)", description="The config the dataset was labelled with; its heads are the starting point")
        inputs.str("init_heads", required=False, label="Start from heads", description="Empty: the config's checkpoint")
        inputs.float("min_score", required=False, min=0.0, max=1.0, label="Void unreviewed labels below", description="Unreviewed labels scored below this are ignored in training (empty: keep all)")
        inputs.str("val_data", required=False, label="Validation data", description="A COCO-panoptic folder, autolabel output, export or fiftyone://DATASET scored with PQ during training")
        inputs.int("max_iters", required=False, min=1, label="Iterations", description="Empty: the finetune schedule (40 passes over the reviewed images, 100-2000)")
        inputs.int("cpus", default=2, min=1, label="CPUs for the trainer")
        inputs.str("label_field", default=chosen_label_field(ctx), required=False, label="Label field")
        inputs.view("delegated", types.Notice(label="Runs as a delegated operation: start a worker with `fiftyone delegated launch`"))
        return types.Property(inputs, view=types.View(label="Train on reviewed samples"))

    def execute(self, ctx):
        overrides: dict = {"train": {}}
        if ctx.params.get("init_heads"):
            overrides["train"]["init_heads"] = ctx.params["init_heads"]
        if ctx.params.get("max_iters"):
            overrides["train"]["max_iters"] = int(ctx.params["max_iters"])
        report = progress_reporter(ctx) or None
        result = train_with_progress(
            report,
            ctx.params.get("max_iters"),
            config_path=ctx.params["config"],
            data_dir=f"fiftyone://{ctx.dataset.name}",
            out_dir=ctx.params["out_dir"],
            cpus_per_worker=int(ctx.params.get("cpus") or 2),
            overrides=overrides,
            min_score=ctx.params.get("min_score"),
            label_field=chosen_label_field(ctx),
            reviewed_only=True,
            val_data=ctx.params.get("val_data") or None,
            schedule="finetune",
        )
        heads = (result.get("best") or {}).get("heads") or result.get("heads")
        return {**{k: v for k, v in result.items() if k != "best"}, "use_heads": heads,
                "best_pq": (result.get("best") or {}).get("pq")}


class RelabelWithHeads(DelegatedOperator):
    @property
    def config(self):
        return delegated_operator_config(
            "relabel_with_heads",
            "PosSAM: relabel with these heads",
            "Label the current view again with trained heads (delegated); reviewed samples keep their labels",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("heads", required=True, label="Head checkpoint", description="e.g. OUT/best.safetensors of 'train on reviewed samples'")
        inputs.str("config", required=True, label="PosSAM config (YAML)", description="The config the heads were trained with")
        inputs.str("out_dir", required=True, label="Output directory", description="A new autolabel output directory")
        inputs.int("batch_size", default=4, min=1, label="Batch size")
        inputs.int("num_cpus", required=False, min=1, label="CPUs for a local Ray (empty: all)")
        inputs.str("label_field", default=chosen_label_field(ctx), required=False, label="Label field")
        ctx.target_view()
        return types.Property(inputs, view=types.View(label="Relabel with these heads"))

    def execute(self, ctx):
        from possam_label.fiftyone.run import autolabel_samples

        heads = Path(ctx.params["heads"])
        if not heads.is_file():
            raise ValueError(f"head checkpoint {heads} does not exist")
        result = autolabel_samples(
            ctx.target_view(),
            ctx.params["out_dir"],
            label_field=chosen_label_field(ctx),
            config=ctx.params["config"],
            checkpoint=str(heads),
            batch_size=int(ctx.params.get("batch_size") or 4),
            num_cpus=ctx.params.get("num_cpus") or None,
            progress=progress_reporter(ctx) or None,
        )
        return result.to_dict()


OPERATORS = (TrainOnReviewed, RelabelWithHeads)
