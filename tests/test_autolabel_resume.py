"""Crash safety: SIGKILL the driver midway, refuse a plain rerun, resume (killing a model worker
on the way), and check that every input ends with exactly one row and no debris is left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from possam_label.io.coco_panoptic_validate import validate_coco_panoptic
from possam_label.io.output_store import read_images_table, read_segments_table

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "autolabel"
NUM_IMAGES = 16


def _make_inputs(directory: Path) -> None:
    directory.mkdir()
    sources = [DATA / "photos" / "dog.jpg", DATA / "photos" / "groceries.jpg", DATA / "coco" / "000000142238.jpg", DATA / "coco" / "000000439180.jpg"]
    bases = [Image.open(s).convert("RGB").resize((96, 64)) for s in sources]
    for i in range(NUM_IMAGES):
        # Distinct content per file (a shifted crop), so no two inputs are the same image.
        image = np.roll(np.asarray(bases[i % 4]), shift=i, axis=1)
        Image.fromarray(image).save(directory / f"img_{i:03d}.png")


def _command(inputs: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pipelines.autolabel", "--dataset", str(inputs), "--out", str(out),
        "--config", str(REPO / "configs" / "possam_tiny.yaml"), "--batch-size", "1", "--rows-per-part", "1",
        "--num-cpus", "2", "--no-progress", "--log-level", "WARNING", *extra,
    ]


def _committed_parts(out: Path) -> int:
    images = out / "images"
    return len([n for n in os.listdir(images) if n.startswith("part-")]) if images.exists() else 0


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the job exited (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.timeout(600)
def test_sigkill_then_resume_gives_every_input_exactly_once(tmp_path: Path, process_reaper) -> None:
    inputs, out, log = tmp_path / "inputs", tmp_path / "out", tmp_path / "job.log"
    _make_inputs(inputs)

    # 1. Start a run and SIGKILL its driver right after the first committed part.
    with open(log, "w") as log_file:
        first = subprocess.Popen(_command(inputs, out), cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
        _wait_for(lambda: _committed_parts(out) >= 1, first, 300, "the first committed part")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    process_reaper.kill_all()  # the local Ray's helpers outlive a SIGKILLed driver
    committed_before = read_images_table(out).num_rows
    assert 1 <= committed_before < NUM_IMAGES, "the kill must land midway"
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    # Debris a kill can leave at other instants: a segments part whose images part was never
    # renamed into place, a temporary file, a PNG of an uncommitted image.
    first_part = sorted((out / "segments").iterdir())[0]
    shutil.copyfile(first_part, out / "segments" / "part-99990101T000000-dead00-000000.parquet")
    (out / "images" / ".tmp-part-99990101T000000-dead00-000000.parquet.0a1b2c").write_bytes(b"PAR1 partial")
    (out / "panoptic" / "123456789.png").write_bytes(b"\x89PNG partial")

    # 2. A plain rerun refuses and changes nothing.
    snapshot = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"}
    refused = subprocess.run(_command(inputs, out), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "is not empty" in refused.stderr and "--resume" in refused.stderr and "--overwrite" in refused.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"} == snapshot

    # 3. Resume; SIGKILL the model actor once it has produced a new part: Ray restarts it and retries.
    with open(log, "a") as log_file:
        resumed = subprocess.Popen(_command(inputs, out, "--resume"), cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
        _wait_for(lambda: _committed_parts(out) > committed_before, resumed, 300, "a part committed by the resumed run")
        actors = [
            p for p in psutil.Process(resumed.pid).children(recursive=True)
            if "PanopticModelActor" in " ".join(p.cmdline() if p.is_running() else [])
        ]
        assert actors, "no model actor process found"
        for actor in actors:
            actor.send_signal(signal.SIGKILL)
        assert resumed.wait(timeout=400) == 0, log.read_text()[-3000:]
    process_reaper.kill_all()

    images = read_images_table(out)
    ids = images["image_id"].to_pylist()
    assert len(ids) == len(set(ids)) == NUM_IMAGES
    assert sorted(os.path.basename(p) for p in images["file_path"].to_pylist()) == sorted(f"img_{i:03d}.png" for i in range(NUM_IMAGES))
    assert set(images["status"].to_pylist()) == {"ok"}, images.filter(images["status"] != "ok").to_pylist()
    segments = read_segments_table(out, columns=["image_id", "segment_id"])
    keys = list(zip(segments["image_id"].to_pylist(), segments["segment_id"].to_pylist()))
    assert len(keys) == len(set(keys)) == sum(images["num_segments"].to_pylist())
    assert set(segments["image_id"].to_pylist()) <= set(ids)
    # Debris is gone; parts pair up one to one; one PNG per ok image.
    assert not (out / "segments" / "part-99990101T000000-dead00-000000.parquet").exists()
    assert not [p for p in out.rglob(".tmp-*")]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in (out / "segments").iterdir())
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == sorted(f"{i}.png" for i in ids)
    validate_coco_panoptic(out / "panoptic.json", out / "panoptic")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and len(run["attempts"]) == 2
    assert run["attempts"][1]["summary"]["already_done"] == committed_before
    assert run["attempts"][1]["summary"]["processed"] == NUM_IMAGES - committed_before
    assert len({w["pid"] for w in run["model"]["workers"]}) >= 2  # the killed actor was replaced
