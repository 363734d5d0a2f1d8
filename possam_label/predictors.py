"""The :class:`Predictor` protocol and the registry of predictor builders.

A predictor turns images and a vocabulary into :class:`~possam_label.types.PanopticPrediction`
objects at each image's size. :data:`PREDICTOR_REGISTRY` maps a model name to its builder, as
segment_anything's ``sam_model_registry`` does::

    predictor = build_predictor("possam", "configs/possam_small.yaml", device="cpu")
    predictions = predictor.predict(images, vocabulary="cat,dog,grass [stuff]")

Builders import their model lazily, so listing the registry does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence, Union

import numpy as np

from .types import PanopticPrediction

if TYPE_CHECKING:
    import torch

    from .vocab import Vocabulary


class Predictor(Protocol):
    """What the auto-labeling engine, the benchmarks and the FiftyOne model need of a predictor."""

    device: "torch.device"
    vocabulary: "Vocabulary"

    def predict(
        self, images: Sequence[np.ndarray], vocabulary: Union["Vocabulary", str, None] = None, batch_size: int = 8
    ) -> list[PanopticPrediction]:
        """One prediction per (H, W, 3) uint8 RGB image, at that image's size."""

    def weights_identity(self) -> dict[str, Optional[str]]:
        """sha256 of each weight file (None for random or hub weights); recorded per model actor."""


ConfigSource = Union[str, Path, Any]  # a YAML path or a loaded PosSAMConfig


def build_possam_predictor(config: ConfigSource, checkpoint: Optional[str] = None, **kwargs: Any) -> Predictor:
    """PosSAM (one pass of each encoder per image, trained heads); see ``PosSAMPredictor.from_config``."""
    from .predictor import PosSAMPredictor

    return PosSAMPredictor.from_config(config, checkpoint=checkpoint, **kwargs)


def build_sam_clip_predictor(config: ConfigSource, checkpoint: Optional[str] = None, **kwargs: Any) -> Predictor:
    """The training-free two-stage baseline (SAM masks, then CLIP); see ``SamClipPredictor.from_config``."""
    from .baselines.sam_clip import SamClipPredictor

    return SamClipPredictor.from_config(config, checkpoint=checkpoint, **kwargs)


PREDICTOR_REGISTRY: dict[str, Callable[..., Predictor]] = {
    "possam": build_possam_predictor,
    "sam-clip": build_sam_clip_predictor,
}


def build_predictor(name: str, config: ConfigSource, checkpoint: Optional[str] = None, **kwargs: Any) -> Predictor:
    """Build the registered predictor ``name`` from a config.

    Args:
        name: a key of :data:`PREDICTOR_REGISTRY`.
        config: YAML path or loaded config.
        checkpoint: weights overriding the config's (PosSAM heads; a full SAM for "sam-clip").
        kwargs: the builder's options (``device``, ``overrides``, ``load_backbones``, ...).
    Raises:
        ValueError: an unknown name (the message lists the registered ones).
    """
    if name not in PREDICTOR_REGISTRY:
        raise ValueError(f"model must be one of {', '.join(PREDICTOR_REGISTRY)}, got {name!r}")
    return PREDICTOR_REGISTRY[name](config, checkpoint=checkpoint, **kwargs)
