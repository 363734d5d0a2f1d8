"""Files a training run writes and reads: its output folder, fp16 safetensors checkpoints with
metadata, and loading a checkpoint into a model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.weights import WeightsError, load_state_dict

logger = logging.getLogger(__name__)


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create the run's output folder (parents included) and return it.

    Raises:
        NotADirectoryError: ``out_dir`` exists and is not a folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output directory {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_fp16_checkpoint(model: nn.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``model``'s state dict as fp16 safetensors with string metadata.

    Floating-point tensors are cast to fp16 (the fp32 master weights stay in ``model``); other
    dtypes are kept. Non-string metadata values are JSON-encoded.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()}
    save_file(state, str(path), metadata=meta)
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty dict when it has none)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises several error types for bad headers
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_checkpoint_into(model: nn.Module, path: str | Path, what: str) -> nn.Module:
    """Load a state dict file into ``model`` strictly, as float32 (the fp16 checkpoints of
    :func:`save_fp16_checkpoint` included); returns ``model``.

    Args:
        path: ``.safetensors``, or a torch file read with ``weights_only=True``
            (:func:`~possam_label.model.weights.load_state_dict`).
        what: the model in messages, e.g. "the small SAM architecture".
    Raises:
        WeightsError: the file is missing, unreadable or does not fit ``model``.
    """
    state = load_state_dict(path)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: does not fit {what} ({exc})") from exc
    logger.info("loaded %s into %s", path, what)
    return model
