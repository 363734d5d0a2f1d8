"""Weight files: official downloads into a cache, safe loading, and hashing.

Only safetensors or ``torch.load(..., weights_only=True)`` are used to read weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}


class WeightsError(RuntimeError):
    """A weight file that cannot be found, downloaded or read."""


def cache_dir() -> Path:
    """Download cache: ``$POSSAM_CACHE`` or ``~/.cache/possam_label``."""
    return Path(os.environ.get("POSSAM_CACHE", Path.home() / ".cache" / "possam_label"))


def download(url: str, config_key: str, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into the cache (once) and return the local path.

    Raises:
        WeightsError: offline or failed download; the message names the file and the config
            key through which a local path can be given instead.
    """
    target = cache_dir() / Path(url).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    logger.info("downloading %s to %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"could not download {Path(url).name} from {url} ({exc}). This machine may be offline: "
            f"download the file elsewhere and pass its local path with `{config_key}: /path/to/{Path(url).name}` "
            f"in the config (or the matching command-line flag), or place it at {target}."
        ) from exc
    os.replace(tmp, target)
    return target


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors have many types
        raise WeightsError(f"{path}: not a readable weights file ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def sha256_file(path: Optional[str | Path]) -> Optional[str]:
    """Hex sha256 of a file, or None for no file."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
