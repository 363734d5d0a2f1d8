"""An autolabel output directory as a training source: pseudo-labels read from its committed parts.

The committed Parquet parts are the output's record (docs/outputs.md): the ``images`` rows give each
labelled image's path and panoptic PNG, the ``segments`` rows each segment's class and MASE score.
Reading them (rather than ``panoptic.json``, written only at the end of a run) also trains on the
committed part of a run still going or one that stopped. Classes come from ``run.json``'s vocabulary
(with its synonyms, so the text embeddings are those the run labelled with). Segments scored below
``min_score`` become void: ignored by training, not background. Images the run could not read are
left out.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from ..io.output_store import read_images_table, read_segments_table
from ..io.panoptic_png import read_panoptic_png
from ..panoptic import keep_ids, score_passes
from .sources import PanopticTarget, TargetSegment, TrainingDataError, TrainingSource, image_size

logger = logging.getLogger(__name__)

_SEGMENT_COLUMNS = ["image_id", "segment_id", "category_id", "category", "isthing", "score"]


def _categories_from_run(root: Path, run: dict[str, Any]) -> Optional[list[dict[str, Any]]]:
    vocab = run.get("vocabulary")
    if isinstance(vocab, dict) and isinstance(vocab.get("classes"), list):  # Vocabulary.to_dict()
        return [
            {"id": int(c["id"]), "name": str(c["name"]), "isthing": int(bool(c.get("isthing", True))),
             "synonyms": list(c.get("synonyms") or [c["name"]]), **({"color": list(c["color"])} if c.get("color") else {})}
            for c in vocab["classes"]
        ]
    if isinstance(vocab, dict) and isinstance(vocab.get("names"), list):  # columnar form
        n = len(vocab["names"])
        ids = vocab.get("category_ids") or list(range(1, n + 1))
        synonyms = vocab.get("synonyms") or [[name] for name in vocab["names"]]
        return [
            {"id": int(ids[i]), "name": str(vocab["names"][i]), "isthing": int(bool(vocab["isthing"][i])), "synonyms": list(synonyms[i])}
            for i in range(n)
        ]
    panoptic_json = root / "panoptic.json"
    if panoptic_json.is_file():
        return json.loads(panoptic_json.read_text(encoding="utf-8")).get("categories")
    return None


class AutolabelOutputSource(TrainingSource):
    """Pseudo-labels of an autolabel output directory.

    Args:
        root: the ``--out`` directory of ``pipelines.autolabel``.
        min_score: segments scored below this become void (None keeps all).
    Raises:
        TrainingDataError: not an autolabel output, or its run.json / tables cannot be read.
    """

    kind = "autolabel_output"
    category_key = "name"

    def __init__(self, root: Union[str, os.PathLike], min_score: Optional[float] = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.location = str(self.root)
        self.min_score = min_score
        run_path = self.root / "run.json"
        try:
            run = json.loads(run_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise TrainingDataError(f"{run_path}: cannot read the run record: {err}") from None
        categories = _categories_from_run(self.root, run)
        if not categories:
            raise TrainingDataError(f"{self.root}: neither run.json's vocabulary nor panoptic.json's categories name the classes")
        self._categories = categories
        try:
            images = read_images_table(self.root, columns=["image_id", "file_path", "status", "panoptic_file"]).to_pylist()
            segments = read_segments_table(self.root, columns=_SEGMENT_COLUMNS).to_pylist()
        except Exception as err:  # pyarrow raises several types for a damaged part
            raise TrainingDataError(f"{self.root}: cannot read the output's Parquet parts: {err}") from None
        by_image: dict[int, list[dict[str, Any]]] = {}
        for row in segments:
            by_image.setdefault(int(row["image_id"]), []).append(row)
        self._records: list[dict[str, Any]] = []
        num_voided = 0
        for row in images:
            if row["status"] != "ok" or not row["panoptic_file"]:
                continue
            rows = sorted(by_image.get(int(row["image_id"]), []), key=lambda r: r["segment_id"])
            passes = score_passes(np.array([r["score"] for r in rows], dtype=np.float64), min_score)
            kept = [r for r, ok in zip(rows, passes) if ok]
            num_voided += len(rows) - len(kept)
            self._records.append(
                {
                    "image_id": int(row["image_id"]),
                    "image_path": Path(row["file_path"]),
                    "png_path": self.root / row["panoptic_file"],
                    "segments": [
                        TargetSegment(int(r["segment_id"]), int(r["category_id"]), str(r["category"]), bool(r["isthing"])) for r in kept
                    ],
                    "listed_ids": {int(r["segment_id"]) for r in rows},
                }
            )
        self.num_errors = sum(1 for row in images if row["status"] != "ok")
        if num_voided:
            logger.info("%s: %d segments scored below %s become void", self.root, num_voided, min_score)

    def categories(self) -> list[dict[str, Any]]:
        return [dict(c) for c in self._categories]

    def __len__(self) -> int:
        return len(self._records)

    def target(self, index: int) -> PanopticTarget:
        rec = self._records[index]
        path = rec["png_path"]
        try:
            ids = read_panoptic_png(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read panoptic PNG: {err}") from None
        present = set(np.unique(ids).tolist()) - {0}
        if present != rec["listed_ids"]:
            raise ValueError(f"{path}: PNG ids {sorted(present)[:10]} differ from the segments table's {sorted(rec['listed_ids'])[:10]}")
        if len(rec["segments"]) != len(rec["listed_ids"]):
            ids = keep_ids(ids, [s.id for s in rec["segments"]])
        return PanopticTarget(
            image_path=rec["image_path"], image_id=rec["image_id"], file_name=str(rec["image_path"]),
            id_map=ids.astype(np.int32, copy=False), segments=list(rec["segments"]), label_path=path, exif_oriented=True,
        )

    def segment_classes(self, index: int) -> list[tuple[str, int, bool]]:
        return [(s.category, s.category_id, s.iscrowd) for s in self._records[index]["segments"]]

    def check_files(self, index: int) -> None:
        rec = self._records[index]
        sizes = [image_size(rec["image_path"], exif_oriented=True), image_size(rec["png_path"], what="panoptic PNG")]
        if sizes[0] != sizes[1]:
            raise ValueError(f"{rec['png_path']}: PNG is {sizes[1][0]}x{sizes[1][1]} but image {rec['image_path']} is {sizes[0][0]}x{sizes[0][1]}")
