"""run.json: the provenance of a run, the check that a resume continues the same run, and its updates.

:class:`RunRecord` is the only writer of ``run.json``; it rewrites the file atomically whenever
the record changes (start, execution plan, first weights seen, end).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import socket
from importlib import metadata as importlib_metadata
from typing import Any, Optional, Sequence

from ...config import PosSAMConfig
from ...config_mapping import with_current_keys
from ...io.atomic_files import atomic_write_json
from ...io.output_store import OutputStore, new_part_prefix, utc_now
from .inputs import FIFTYONE_PREFIX
from .options import AutolabelError, AutolabelOptions, AutolabelSummary

# Config sections that do not change a model kind's labels (training recipe; the baseline's
# settings for PosSAM).
NON_INFERENCE_CONFIG_SECTIONS = {"possam": ("train", "baseline"), "sam-clip": ("train",)}
PACKAGES = ("possam-label", "torch", "torchvision", "ray", "pyarrow", "numpy", "pillow", "pycocotools", "open_clip_torch", "segment_anything", "scipy", "timm")


def package_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist in PACKAGES:
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def read_previous_run(store: OutputStore) -> Optional[dict[str, Any]]:
    """The run.json of the run a resume continues (None when there is none and nothing was committed)."""
    if not store.run_json.exists():
        if store.committed_parts():
            raise AutolabelError(f"{store.root} has committed parts but no run.json; cannot check it was made by the same model")
        return None
    try:
        return json.loads(store.run_json.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AutolabelError(f"cannot read {store.run_json}: {exc}") from exc


def config_differences(before: Any, after: Any, prefix: str = "", skip: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ; keys present on one side only are not differences
    (a newer code version may add sections with defaults); top-level sections in ``skip`` are ignored."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) & set(after)):
            if not prefix and key in skip:
                continue
            out.extend(config_differences(before[key], after[key], f"{prefix}{key}."))
        return out
    return [] if before == after else [prefix.rstrip(".")]


def check_resume_compatible(previous: dict[str, Any], model: dict[str, Any], settings: dict[str, Any], store: OutputStore) -> None:
    """Refuse to resume a run made with another model, config, checkpoint, vocabulary or output settings."""
    before = previous.get("model", {})
    problems = []
    # Runs written before model kinds existed were PosSAM runs.
    if before.get("kind", "possam") != model["kind"]:
        problems.append(f"the model differs ({before.get('kind', 'possam')} vs {model['kind']})")
    # A run written before a config key was renamed recorded it under its old name.
    before_config = with_current_keys(PosSAMConfig, before.get("config", {}))
    changed = config_differences(before_config, model["config"], skip=NON_INFERENCE_CONFIG_SECTIONS.get(model["kind"], ("train",)))
    if changed:
        problems.append(f"the model config differs in {', '.join(changed[:8])}")
    if before.get("checkpoint") != model["checkpoint"]:
        problems.append(f"the checkpoint differs ({before.get('checkpoint')} vs {model['checkpoint']})")
    if before.get("vocabulary_identity") != model["vocabulary_identity"]:
        problems.append("the vocabulary differs")
    if previous.get("output_settings") != settings:
        problems.append(f"the output settings differ ({previous.get('output_settings')} vs {settings})")
    if problems:
        raise AutolabelError(
            f"cannot --resume in {store.root}: {'; '.join(problems)} from the run that wrote it. "
            "Resume with the same settings, or use --overwrite / another --out."
        )


class RunRecord:
    """The run.json of one run, kept in memory and rewritten atomically on every change.

    Args:
        store: the output directory.
        durable: fsync on write.
        data: the record (see :meth:`start`).
    """

    def __init__(self, store: OutputStore, durable: bool, data: dict[str, Any]) -> None:
        self.store = store
        self.durable = durable
        self.data = data

    @classmethod
    def start(
        cls,
        store: OutputStore,
        options: AutolabelOptions,
        model: dict[str, Any],
        vocabulary: Any,
        max_side: Optional[int],
        pending: int,
        previous: Optional[dict[str, Any]],
    ) -> "RunRecord":
        """The record of a new attempt (continuing ``previous`` on resume), written at once."""
        started_at = utc_now()
        prev = previous or {}
        data = {
            "run_id": prev["run_id"] if previous else f"run-{new_part_prefix()}",
            "status": "running",
            "source": options.dataset if options.dataset.startswith(FIFTYONE_PREFIX) else os.path.abspath(options.dataset),
            "out_dir": str(store.root),
            "options": dataclasses.asdict(options),
            "output_settings": options.output_settings(),
            "effective_max_side": max_side,
            "model": model | {
                "weights_sha256": prev.get("model", {}).get("weights_sha256"),
                "workers": prev.get("model", {}).get("workers", []),
            },
            "vocabulary": vocabulary.to_dict(),
            "packages": package_versions(),
            "host": {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count()},
            "started_at": prev.get("started_at", started_at),
            "attempts": prev.get("attempts", []) + [{"started_at": started_at, "mode": options.mode, "pending": pending}],
        }
        record = cls(store, options.durable, data)
        record.write()
        return record

    @property
    def run_id(self) -> str:
        return str(self.data["run_id"])

    @property
    def expected_weights(self) -> Optional[dict[str, Any]]:
        return self.data["model"].get("weights_sha256")

    def write(self) -> None:
        atomic_write_json(self.store.run_json, self.data, durable=self.durable)

    def update(self, **entries: Any) -> None:
        """Set top-level entries (``ray``, ``execution``, ...) and write."""
        self.data.update(entries)
        self.write()

    def check_weights(self, identity: str) -> None:
        """Record the weights of the first model actor; refuse an actor with other weights."""
        weights = json.loads(identity)["weights"]
        expected = self.expected_weights
        if expected is None:
            self.data["model"]["weights_sha256"] = weights
            self.write()
        elif weights != expected:
            raise AutolabelError(
                f"a worker loaded different weights ({weights}) than the run's ({expected}); "
                "check that every node sees the same weight files"
            )

    def finish(self, summary: AutolabelSummary, counts: dict[str, Any], identities: set[str]) -> None:
        """Status, end time, this attempt's summary, committed counts and the actors seen; written."""
        self.data["status"] = "complete" if summary.complete else "incomplete"
        self.data["ended_at"] = utc_now()
        self.data["attempts"][-1].update({"ended_at": self.data["ended_at"], "summary": summary.to_dict()})
        self.data["counts"] = counts
        self.data["model"]["workers"].extend(json.loads(i) for i in sorted(identities))
        self.write()
