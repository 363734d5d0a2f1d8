"""What the predictors share: vocabulary handling, the batch loop and the weight-file identity.

Subclasses (``PosSAMPredictor``, the SAM + CLIP baseline) set ``vocabulary``, ``device`` and
``weight_files`` and implement :meth:`BatchPredictor.text_classifier` and
:meth:`BatchPredictor.predict_batch`; they satisfy :class:`possam_label.predictors.Predictor`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .model.weights import sha256_file
from .types import PanopticPrediction
from .vocab import Vocabulary, load_vocabulary


class BatchPredictor:
    """Images + vocabulary -> one :class:`PanopticPrediction` per image, a batch at a time."""

    vocabulary: Vocabulary
    device: torch.device
    weight_files: dict[str, Optional[str]]

    def text_classifier(self, vocabulary: Vocabulary) -> Any:
        """The CLIP text classifier of a vocabulary."""
        raise NotImplementedError

    def predict_batch(self, images: Sequence[np.ndarray], vocab: Vocabulary, text: Any) -> list[PanopticPrediction]:
        """Predictions of one batch of images."""
        raise NotImplementedError

    def vocabulary_for(self, vocabulary: Union[Vocabulary, str, None]) -> Vocabulary:
        """A Vocabulary, a spec for ``load_vocabulary``, or None for the predictor's default."""
        if vocabulary is None:
            return self.vocabulary
        if isinstance(vocabulary, Vocabulary):
            return vocabulary
        return load_vocabulary(vocabulary)

    @torch.inference_mode()
    def predict(
        self,
        images: Sequence[np.ndarray],
        vocabulary: Union[Vocabulary, str, None] = None,
        batch_size: int = 8,
    ) -> list[PanopticPrediction]:
        """Panoptic segmentation of a list of images.

        Args:
            images: (H, W, 3) uint8 RGB arrays, any sizes.
            vocabulary: a Vocabulary, a spec for ``load_vocabulary``, or None for the default.
            batch_size: images per model pass.
        Returns:
            One :class:`PanopticPrediction` per image at its size.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        vocab = self.vocabulary_for(vocabulary)
        text = self.text_classifier(vocab)
        results: list[PanopticPrediction] = []
        for start in range(0, len(images), batch_size):
            results.extend(self.predict_batch(images[start : start + batch_size], vocab, text))
        return results

    def weights_identity(self) -> dict[str, Optional[str]]:
        """sha256 of each weight file (None for parts with random or hub weights), computed once."""
        cached = getattr(self, "_weight_hashes", None)
        if cached is None:
            cached = {k: sha256_file(v) if v and Path(v).is_file() else None for k, v in self.weight_files.items()}
            self._weight_hashes = cached
        return dict(cached)
