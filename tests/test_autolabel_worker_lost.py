"""Bounded retries: a model worker that dies on one image every time it sees it.

The test fault-injection hook of the model stage (``POSSAM_TEST_KILL_ON``, read by the model
actor; the local Ray started by the run inherits the environment) makes the worker process exit
whenever its batch holds that file. The run must end, that image must be ``worker_lost``, and
every other image ``ok`` exactly once: its batch was retried, then bisected down to the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from possam_label.engine.autolabel import AutolabelOptions, run_autolabel
from possam_label.engine.autolabel.stages import TEST_KILL_ON_ENV
from possam_label.io.coco_panoptic_validate import validate_coco_panoptic
from possam_label.io.tables import image_id_for_path, read_images_table

EDGE_CASES = Path(__file__).resolve().parent / "data" / "autolabel" / "edge_cases"
TINY = str(Path(__file__).resolve().parents[1] / "configs" / "possam_tiny.yaml")
NAMES = ["cmyk.jpg", "grayscale.png", "palette.png", "plain.bmp", "plain.tiff", "rgba.png"]
POISON = "palette.png"  # third of the first batch of 4: its neighbours share every batch until bisection


# Known bug, not run: in the final CI check of 2026-12-07 (quiet machine) this run hung after the
# worker died on the poisoned image twice (Ray Data waited on the dropped block, no image was
# committed in 5 minutes); it had passed once on a loaded machine. Bounded retries are therefore
# opt-in (AutolabelOptions.max_worker_retries defaults to None: Ray Data's unbounded retries).
@pytest.mark.xfail(run=False, strict=True, reason="bounded retries + bisection hang in Ray Data 2.60 (issue 26 part 4 open)")
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
    assert lost["status"] == "error" and lost["error"].startswith("worker_lost: "), lost
    assert lost["panoptic_file"] is None and lost["num_segments"] == 0 and lost["width"] is None
    for name, row in by_name.items():
        assert row["status"] == "ok" and row["error"] is None, row
        assert (out / row["panoptic_file"]).is_file()

    validate_coco_panoptic(out / "panoptic.json", out / "panoptic")
    coco = json.loads((out / "panoptic.json").read_text())
    assert sorted(os.path.basename(i["file_name"]) for i in coco["images"]) == sorted(by_name)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["options"]["max_worker_retries"] == 1
    assert run["counts"]["ok"] == len(NAMES) - 1 and run["counts"]["error"] == 1
    # The poisoned batch killed its worker: the replacements show up as more than one actor.
    assert len({w["pid"] for w in run["model"]["workers"]}) >= 2
