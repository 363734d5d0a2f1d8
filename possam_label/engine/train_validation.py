"""Validation during a heads training run: PQ on a validation source, the best heads kept."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from ..config import PosSAMConfig

logger = logging.getLogger(__name__)


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
