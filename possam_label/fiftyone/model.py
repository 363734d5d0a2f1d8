"""PosSAM as a FiftyOne ``Model``: ``dataset.apply_model(load_possam_model(...), label_field="possam")``.

The model wraps :class:`possam_label.predictor.PosSAMPredictor` and converts each
``PanopticPrediction`` with :func:`possam_label.fiftyone.convert.prediction_to_labels`, the same
conversion the autolabel loader uses, so both paths give identical labels. ``apply_model`` reads
images as (H, W, 3) uint8 RGB arrays and, with a ``batch_size``, passes lists of them (of any
sizes) to :meth:`PosSAMModel.predict_all`.

Output: an ``fo.Detections`` (one Detection per segment) in ``label_field``; with
``semantic=True`` a dict ``{"detections": ..., "semantic": fo.Segmentation}``, which FiftyOne
stores as ``<label_field>_detections`` and ``<label_field>_semantic``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

import fiftyone.core.models as fom

from ..vocab import Vocabulary
from .convert import prediction_to_labels

logger = logging.getLogger(__name__)


@dataclass
class PosSAMModelConfig:
    """Settings of :class:`PosSAMModel`.

    Attributes:
        config_path: PosSAM YAML config (None: ``possam_label.predictor.DEFAULT_CONFIG``).
        checkpoint: head weights overriding the config's.
        device: "cpu", "cuda", ... (None: CUDA when available).
        vocabulary: "coco", "ade20k", a vocabulary file, "cat,dog,..." or a Vocabulary (None: the config's).
        batch_size: images per forward pass inside :meth:`PosSAMModel.predict_all`.
        min_score: drop segments scored below this (their pixels become void in the semantic map
            too); ``apply_model(confidence_thresh=...)`` sets it through :attr:`confidence_thresh`.
        semantic: also return the category-map Segmentation.
    """

    config_path: Optional[str] = None
    checkpoint: Optional[str] = None
    device: Optional[str] = None
    vocabulary: Any = None
    batch_size: int = 4
    min_score: Optional[float] = None
    semantic: bool = False

    @property
    def confidence_thresh(self) -> Optional[float]:
        """FiftyOne's name for :attr:`min_score`: ``apply_model(confidence_thresh=...)`` sets this
        attribute when a model's config has it, deferring the threshold to the model (so the
        semantic map loses the dropped segments too)."""
        return self.min_score

    @confidence_thresh.setter
    def confidence_thresh(self, value: Optional[float]) -> None:
        self.min_score = value


def _as_rgb_uint8(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB from what FiftyOne may pass: numpy (gray, RGB, RGBA) or a PIL image."""
    if hasattr(image, "convert") and not isinstance(image, np.ndarray):  # PIL
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


class PosSAMModel(fom.Model):
    """A FiftyOne image model around a PosSAM predictor.

    Args:
        config: a :class:`PosSAMModelConfig` (or a dict of its fields).
        predictor: an already built predictor (anything with ``predict(images, vocabulary=None,
            batch_size=...) -> list[PanopticPrediction]``); None builds one from ``config``.
    """

    def __init__(self, config: Union[PosSAMModelConfig, dict, None] = None, predictor: Any = None) -> None:
        if config is None:
            config = PosSAMModelConfig()
        elif isinstance(config, dict):
            config = PosSAMModelConfig(**config)
        self.config = config
        self._preprocess = True
        if predictor is None:
            from ..predictor import DEFAULT_CONFIG, PosSAMPredictor

            predictor = PosSAMPredictor.from_config(config.config_path or DEFAULT_CONFIG, checkpoint=config.checkpoint, device=config.device)
        self.predictor = predictor
        self._vocabulary = None
        if config.vocabulary is not None:
            from ..vocab import load_vocabulary

            self._vocabulary = load_vocabulary(config.vocabulary)

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        # predict_all takes a plain list of differently-sized images, so FiftyOne may batch freely.
        return False

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = value

    @property
    def has_logits(self) -> bool:
        return False

    @property
    def has_embeddings(self) -> bool:
        return False

    def predict(self, arg: Any) -> Any:
        """Labels of one (H, W, 3) uint8 RGB image."""
        return self.predict_all([arg])[0]

    def predict_all(self, args: Sequence[Any]) -> list[Any]:
        """Labels of a list of images (any sizes)."""
        images = [_as_rgb_uint8(a) for a in args]
        predictions = self.predictor.predict(images, vocabulary=self._vocabulary, batch_size=self.config.batch_size)
        outputs = []
        for prediction in predictions:
            detections, semantic = prediction_to_labels(prediction, with_semantic=self.config.semantic, min_score=self.config.min_score)
            outputs.append({"detections": detections, "semantic": semantic} if self.config.semantic else detections)
        return outputs


def load_possam_model(
    config_path: Optional[str] = None,
    checkpoint: Optional[str] = None,
    device: Optional[str] = None,
    vocabulary: Any = None,
    batch_size: int = 4,
    min_score: Optional[float] = None,
    semantic: bool = False,
) -> PosSAMModel:
    """Build a :class:`PosSAMModel` (the zoo-style entry point); arguments as in :class:`PosSAMModelConfig`."""
    return PosSAMModel(PosSAMModelConfig(config_path, checkpoint, device, vocabulary, batch_size, min_score, semantic))


def model_categories(model: PosSAMModel) -> Vocabulary:
    """The class table of the model's vocabulary (for :func:`prepare_review_field`)."""
    from .autolabel_output import check_no_void_class

    vocabulary = model._vocabulary if model._vocabulary is not None else model.predictor.vocabulary
    return check_no_void_class(vocabulary, "model vocabulary")


def prepare_review_field(dataset: Any, label_field: str, model: PosSAMModel) -> None:
    """Make a field filled by ``apply_model`` reviewable and exportable like a loaded run:
    declares the review fields, stores the class table and creates the indexes."""
    from .dataset import set_categories
    from .load import create_indexes, ensure_review_fields

    ensure_review_fields(dataset, label_field)
    set_categories(dataset, label_field, model_categories(model))
    create_indexes(dataset, label_field)
