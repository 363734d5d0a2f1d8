"""Bounded retries: the model process dies on one image every time it sees it.

The test fault-injection hook (``POSSAM_TEST_KILL_ON``, read by the model process that each model
actor runs its model in; the local Ray started by the run inherits the environment, and the
actor's spawned child inherits the actor's) makes the model process exit whenever its request
holds that file. The run must end, that image must be ``worker_lost``, and every other image
``ok`` exactly once: its batch was retried in a new model process, then bisected down to the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from possam_label.engine.autolabel import AutolabelOptions, run_autolabel
from possam_label.engine.autolabel.model_process import TEST_KILL_ON_ENV
from possam_label.io.coco_panoptic_validate import validate_coco_panoptic
from possam_label.io.output_store import read_images_table
from possam_label.io.tables import image_id_for_path

EDGE_CASES = Path(__file__).resolve().parent / "data" / "autolabel" / "edge_cases"
TINY = str(Path(__file__).resolve().parents[1] / "configs" / "possam_tiny.yaml")
NAMES = ["cmyk.jpg", "grayscale.png", "palette.png", "plain.bmp", "plain.tiff", "rgba.png"]
POISON = "palette.png"  # third of the first batch of 4: its neighbours share every batch until bisection


@pytest.mark.timeout(300)
def test_worker_killed_on_one_image_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    assert not ray.is_initialized(), "the run must start its own Ray so its workers inherit the fault-injection variable"
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{EDGE_CASES / name}\n" for name in NAMES))
    monkeypatch.setenv(TEST_KILL_ON_ENV, POISON)
    out = tmp_path / "out"
    summary = run_autolabel(
        AutolabelOptions(
            dataset=str(listing), out_dir=str(out), config=TINY, batch_size=4, num_cpus=2, max_worker_retries=1,
            rows_per_part=2, show_progress=False, durable=False,
        )
    )
    assert summary.complete and summary.processed == len(NAMES)
    assert (summary.ok, summary.errors) == (len(NAMES) - 1, 1)
    assert summary.error_reasons == {"worker_lost": 1}

    images = read_images_table(out).to_pylist()
    assert sorted(r["image_id"] for r in images) == sorted(image_id_for_path(EDGE_CASES / n) for n in NAMES)  # exactly once
    by_name = {os.path.basename(r["file_path"]): r for r in images}
    lost = by_name.pop(POISON)
    assert lost["status"] == "error" and lost["error"].startswith("worker_lost: the model worker process died (or hung) on this image alone 2 time(s)"), lost
    # Decoded before the model stage: its size is known (null only for files that cannot be read).
    assert lost["panoptic_file"] is None and lost["num_segments"] == 0 and lost["width"] > 0
    for name, row in by_name.items():
        assert row["status"] == "ok" and row["error"] is None, row
        assert (out / row["panoptic_file"]).is_file()

    validate_coco_panoptic(out / "panoptic.json", out / "panoptic")
    coco = json.loads((out / "panoptic.json").read_text())
    assert sorted(os.path.basename(i["file_name"]) for i in coco["images"]) == sorted(by_name)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["options"]["max_worker_retries"] == 1
    assert run["counts"]["ok"] == len(NAMES) - 1 and run["counts"]["error"] == 1
    # The actor survived (one actor pid); its model process was replaced after each death, and
    # the images were labeled by more than one of them (before and after the poisoned image).
    workers = run["model"]["workers"]
    assert len({w["pid"] for w in workers}) == 1
    assert len({w["model_pid"] for w in workers}) >= 2 and all(w["model_pid"] != w["pid"] for w in workers)
