"""Worker writes without Ray (``--writes workers``): the encode stage stages a batch's files, the
driver's :class:`StagedCommitter` promotes them exactly once, and resume removes staged debris."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from possam_label.engine.autolabel import AutolabelOptions, EncodeOutputs
from possam_label.engine.autolabel.commit import PipelineStats, StagedCommitter, iter_rows
from possam_label.io.coco_panoptic_writer import panoptic_png_bytes
from possam_label.io.output_store import (
    OutputStore,
    new_staged_token,
    read_images_table,
    read_segments_table,
)
from possam_label.io.tables import SEGMENTS_SCHEMA, predicted_segments_table, table_to_ipc
from test_panoptic import three_segments


def _model_batch(image_ids: list[int], errors: tuple[int, ...] = ()) -> dict[str, Any]:
    """What the model stage hands to the encode stage: a (32, 48) prediction per ok image."""
    id_map, segments = three_segments()
    ok = [i not in errors for i in image_ids]
    return {
        "image_id": np.array(image_ids),
        "file_path": np.array([f"/data/{i}.jpg" for i in image_ids]),
        "status": np.array(["ok" if k else "error" for k in ok]),
        "error": np.array(["" if k else "truncated: x" for k in ok]),
        "width": np.array([96 if k else 0 for k in ok]),
        "height": np.array([64 if k else 0 for k in ok]),
        "id_map": [id_map if k else np.zeros((1, 1), np.int32) for k in ok],
        "predicted_segments": np.array([table_to_ipc(predicted_segments_table(segments)) if k else b"" for k in ok], dtype=object),
        "seconds": np.array([0.5] * len(ok)),
        "model_identity": np.array([""] * len(ok)),
        "model_ready_at": np.array([1.0] * len(ok)),
        "model_done_at": np.array([2.0] * len(ok)),
        "model_seconds": np.array([0.25] * len(ok)),
    }


def _staged_names(store: OutputStore) -> list[str]:
    return sorted(n for d in (store.segments_dir, store.panoptic_dir) for n in os.listdir(d) if n.startswith(".staged-"))


def _committer(store: OutputStore) -> StagedCommitter:
    record = SimpleNamespace(run_id="run-x", check_weights=lambda identity: None)
    options = AutolabelOptions(dataset="d", out_dir=str(store.root), show_progress=False)
    return StagedCommitter(store, record, PipelineStats(), options, total=0)


def test_encode_stage_stages_files_and_returns_small_rows(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out", durable=True)
    store.prepare("new")
    out = EncodeOutputs(min_score=0.5, run_id="run-x", out_dir=str(store.root), durable=True)(_model_batch([11, 12, 13], errors=(12,)))
    assert "png" not in out and "segments" not in out and "id_map" not in out  # nothing heavy goes to the driver
    token = out["staged"][0]
    assert set(out["staged"].tolist()) == {token} and out["staged_rows"].tolist() == [3, 3, 3]
    assert out["status"].tolist() == ["ok", "error", "ok"] and out["num_segments"].tolist() == [2, 0, 2]
    assert _staged_names(store) == sorted([f".staged-{token}.segments", f".staged-{token}.11.png", f".staged-{token}.13.png"])
    # The same bytes the driver-writes path would write.
    driver = EncodeOutputs(min_score=0.5, run_id="run-x")(_model_batch([11]))
    assert store.staged_png_path(token, 11).read_bytes() == driver["png"][0]
    assert store.committed_parts() == [] and read_segments_table(store.root).num_rows == 0  # staged is not committed
    store.release()


def test_a_batch_delivered_twice_is_committed_once(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out", durable=False)
    store.prepare("new")
    encode = EncodeOutputs(min_score=0.0, run_id="run-x", out_dir=str(store.root), durable=False)
    first = encode(_model_batch([1, 2, 3], errors=(2,)))
    again = encode(_model_batch([1, 2, 3], errors=(2,)))  # Ray ran the task again: staged a second time
    overlapping = encode(_model_batch([3, 4]))  # a re-run cut differently: 3 is committed, 4 is new
    assert len({first["staged"][0], again["staged"][0], overlapping["staged"][0]}) == 3
    committer = _committer(store)
    for batch in (first, again, first, overlapping):  # the first result even arrives twice
        for row in iter_rows(batch):
            committer.add(row)
    committer.commit()
    store.release()

    images = read_images_table(store.root)
    assert sorted(images["image_id"].to_pylist()) == [1, 2, 3, 4]
    assert committer.stats.processed == 4 and committer.stats.counts == {"ok": 3, "error": 1, "segments": 9}
    segments = read_segments_table(store.root, columns=["image_id", "segment_id"])
    keys = list(zip(segments["image_id"].to_pylist(), segments["segment_id"].to_pylist()))
    assert len(keys) == len(set(keys)) == 9 and sorted(set(segments["image_id"].to_pylist())) == [1, 3, 4]
    assert sorted(os.listdir(store.panoptic_dir)) == ["1.png", "3.png", "4.png"]
    assert _staged_names(store) == []
    # Parts pair up one to one: two parts (first, and 4 alone from the overlapping batch).
    assert sorted(os.listdir(store.images_dir)) == sorted(os.listdir(store.segments_dir)) and len(store.committed_parts()) == 2


def test_resume_removes_staged_files_and_never_reads_them(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out", durable=False)
    store.prepare("new")
    encode = EncodeOutputs(min_score=0.0, run_id="run-x", out_dir=str(store.root), durable=False)
    committer = _committer(store)
    for row in iter_rows(encode(_model_batch([1, 2]))):
        committer.add(row)
    # A crash leaves: a batch staged but never returned; a batch promoted (segments part renamed,
    # PNG renamed) whose images part was never written.
    encode(_model_batch([5, 6]))
    dead = new_staged_token()
    store.write_staged(dead, [(7, panoptic_png_bytes(np.ones((2, 2), np.int32)))], SEGMENTS_SCHEMA.empty_table())
    store.staged_segments_path(dead).rename(store.segments_part_path("99990101T000000-dead00-000000"))
    store.staged_png_path(dead, 7).rename(store.panoptic_png_path(7))
    assert len(_staged_names(store)) == 3
    # Never read as data: the readers see the committed part alone.
    assert sorted(set(read_segments_table(store.root)["image_id"].to_pylist())) == [1, 2]
    assert sorted(read_images_table(store.root)["image_id"].to_pylist()) == [1, 2]
    store.release()

    resumed = OutputStore(tmp_path / "out", durable=False)
    resumed.prepare("resume")  # runs recover()
    assert _staged_names(resumed) == []
    assert sorted(os.listdir(resumed.panoptic_dir)) == ["1.png", "2.png"]
    assert sorted(os.listdir(resumed.images_dir)) == sorted(os.listdir(resumed.segments_dir))
    resumed.release()


def test_staged_paths_stay_inside_the_output_directory(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out")
    for bad in ("../../etc", "a/b", "", "ABCDEF0123456789", "0" * 8):
        with pytest.raises(ValueError, match="bad staging token"):
            store.staged_segments_path(bad)
    token = new_staged_token()
    assert store.staged_png_path(token, 5).parent == store.panoptic_dir
    assert store.staged_segments_path(token).parent == store.segments_dir
