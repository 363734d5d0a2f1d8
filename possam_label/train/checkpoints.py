"""Files a training run writes: its output folder and fp16 safetensors checkpoints with metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.weights import WeightsError


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
