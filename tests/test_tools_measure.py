"""The measuring tools, run for real at toy scale: tools/measure_auto_accept.py (shipped small PosSAM
on a few synthetic images, a private FiftyOne database), tools/measure_review_sam.py and
tools/plot_sam_prompts.py (the shipped small SAMs on one or two scenes) and tools/measure_flywheel.py
(``--tabulate-only`` over a run directory whose evaluations ``pipelines.evaluate`` writes here)."""

from __future__ import annotations

import os

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import import_or_unavailable, private_fiftyone_database

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
SAM_PROMPT_CHECKPOINT = REPO / "possam_label" / "assets" / "small" / "sam_small_prompt.safetensors"


def _load(name: str):
    """The tool ``tools/{name}.py`` as a module (imported once)."""
    if str(TOOLS) not in sys.path:
        sys.path.append(str(TOOLS))
    return importlib.import_module(name)


@pytest.mark.fiftyone
def test_measure_auto_accept_report_is_consistent(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fo = import_or_unavailable("fiftyone")
    private_fiftyone_database()  # the tool's --private-db would start the same (once per process) server
    tool = _load("measure_auto_accept")
    world, report_path, name = tmp_path / "world", tmp_path / "report.json", "test-tools-measure-auto-accept"
    argv = ["--world", str(world), "--num-images", "3", "--reviewed", "2", "--draws", "2", "--bootstrap", "20",
            "--dataset", name, "--json", str(report_path)]
    assert tool.main(argv) == 0
    assert (world / "panoptic.json").is_file() and len(list((world / "images").glob("*.png"))) == 3  # rendered when missing
    report = json.loads(report_path.read_text())
    assert report["num_images"] == 3 and report["reviewed_images"] == 2 and report["num_labels"] > 0
    assert 0 <= report["overall_true_precision"] <= 1
    assert not fo.dataset_exists(name) and not any(fo.dataset_exists(f"{name}-draw{d}") for d in range(2))  # cleaned up
    assert [d["draw"] for d in report["draws"]] == [0, 1]
    errors, covered = [], []
    for draw in report["draws"]:
        rows = draw["rows"]
        assert [r["threshold"] for r in rows] == list(tool.THRESHOLDS)
        counts = [r["num_labels"] for r in rows]
        assert counts == sorted(counts, reverse=True)  # fewer labels above a higher threshold
        # reviewed labels and the rest's labels above the lowest threshold are disjoint subsets of all labels
        assert 0 < draw["num_reviewed_labels"] and draw["num_reviewed_labels"] + counts[0] <= report["num_labels"]
        for r in rows:
            assert 0 <= r["low"] <= r["estimated"] <= r["high"] <= 1
            if r["num_labels"] == 0:
                assert r["true"] is None and r["error"] is None and r["full_truth_calibration_error"] is None
                continue
            assert 0 <= r["true"] <= 1 and r["true"] * r["num_labels"] == pytest.approx(round(r["true"] * r["num_labels"]))
            assert r["error"] == pytest.approx(r["estimated"] - r["true"])
            assert -1 <= r["full_truth_calibration_error"] <= 1
            if r["reviewed_precision"] is not None:
                assert r["reviewed_precision_error"] == pytest.approx(r["reviewed_precision"] - r["true"])
            errors.append(abs(r["error"]))
            covered.append(r["low"] <= r["true"] <= r["high"])
    assert errors, "no threshold had labels in the unreviewed rest"
    assert report["within_3_points"] == [sum(e <= 0.03 for e in errors), len(errors)]
    assert report["max_abs_error"] == pytest.approx(max(errors)) and report["mean_abs_error"] == pytest.approx(np.mean(errors))
    assert report["interval_coverage"] == pytest.approx(np.mean(covered))
    assert 0 <= report["draws_all_within_3_points"] <= 2
    assert report["full_truth_calibration_within_3_points"][1] == len(errors)
    out = capsys.readouterr().out
    assert f"3 images, {report['num_labels']} labels" in out and out.count("draw ") >= 2


def test_measure_review_sam_figures_on_one_scene(capsys: pytest.CaptureFixture) -> None:
    from possam_label.synthetic.world import render_scene, scene_rng

    tool = _load("measure_review_sam")
    tool.main(["--scenes", "1", "--seed", "4242"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["seed"] == 4242 and printed["scenes"] == 1
    figures = printed["figures"]
    _, _, segments = render_scene(scene_rng(4242, 0), size=256)
    # new box: one SAM mask and one class per ground-truth segment, things and stuff apart
    for figure in ("mask IoU", "class correct"):
        assert figures[f"new box (all): {figure}"]["n"] == len(segments)
        assert sum(figures[f"new box ({g}): {figure}"]["n"] for g in ("thing", "stuff") if f"new box ({g}): {figure}" in figures) == len(segments)
    for damage in ("eroded", "middle cut"):
        counts = {figures[f"refine {damage}: {step}"]["n"] for step in ("before", "SAM box alone", "SAM box + mask prompt", "refine_mask")}
        assert len(counts) == 1 and 0 < counts.pop() <= len(segments)  # every damaged mask measured at each step
        assert figures[f"refine {damage}: before"]["mean"] < 1  # the damage removed pixels
    assert all(0 <= f["mean"] <= 1 for f in figures.values())
    assert figures["new box (all): mask IoU"]["mean"] > 0.5  # a tight box prompt finds most of the segment


@pytest.mark.parametrize("scenes", [1, 2])
def test_plot_sam_prompts_writes_one_row_per_scene(tmp_path: Path, scenes: int) -> None:
    from PIL import Image

    assert SAM_PROMPT_CHECKPOINT.is_file()
    tool = _load("plot_sam_prompts")
    out = tmp_path / "sub" / "prompts.png"
    tool.main(["--checkpoint", str(SAM_PROMPT_CHECKPOINT), "--out", str(out), "--scenes", str(scenes)])
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (900, 300 * scenes)  # figsize (9, 3 per scene) at 100 dpi
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 1000  # scenes and coloured masks drawn, not a blank canvas


def test_measure_flywheel_tabulates_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipelines.evaluate import main as evaluate
    from possam_label.synthetic.world import generate_dataset

    tool = _load("measure_flywheel")
    work = tmp_path / "work"
    assert tool.main(["--work", str(work), "--tabulate-only"]) == 1  # nothing to tabulate yet
    heldout = generate_dataset(work / "world_eval", num_images=3, seed=7)
    # The baseline "predicts" other scenes under the same file names (PQ 0); the fine-tune the held-out truth itself (PQ 100).
    other = generate_dataset(tmp_path / "other", num_images=3, seed=7, exclude_classes=["star", "heart", "sky"])
    for pred, out in ((other, "eval_baseline.json"), (heldout, "eval_ft_2.json")):
        assert evaluate(["--gt-json", str(heldout / "panoptic.json"), "--pred-json", str(pred / "panoptic.json"),
                         "--match", "file_name", "--no-progress", "--out", str(work / out)]) == 0
    (work / "review_2").mkdir()
    (work / "review_2" / "summary.json").write_text(json.dumps(
        {"images_reviewed": 2, "labels_seen": 14, "actions": {"accept": 9, "reject": 3, "relabel": 2}, "num_actions": 14, "new_classes": []}))
    (work / "review_10").mkdir()  # reviewed but not fine-tuned yet: a row without PQ
    (work / "review_10" / "summary.json").write_text(json.dumps(
        {"images_reviewed": 10, "labels_seen": 60, "actions": {"accept": 50}, "num_actions": 50, "new_classes": ["unicorn"]}))
    (work / "times.json").write_text(json.dumps({"review_2": 1.5, "eval_ft_2": 0.4}))
    plot = tmp_path / "plot.png"
    capsys.readouterr()  # pipelines.evaluate's tables
    assert tool.main(["--work", str(work), "--tabulate-only", "--plot", str(plot)]) == 0
    figures = json.loads((work / "flywheel.json").read_text())
    assert json.loads(capsys.readouterr().out) == figures
    assert figures["baseline"]["all"] == 0 and figures["target"]["base_not_lower_than"] == figures["baseline"]["base"]
    two, ten = figures["rows"]  # sorted by K as a number, not as text
    assert two["k"] == 2 and ten["k"] == 10 and ten["new_classes"] == ["unicorn"] and "pq" not in ten
    assert two["pq"]["all"] == two["pq"]["things"] == two["pq"]["stuff"] == 100
    assert two["delta"]["all"] == 100 and two["actions_per_pq_point"]["all"] == round(14 / 100, 1)
    assert two["wall_seconds"] == {"review": 1.5, "finetune": None, "label_eval_ft": None, "eval_ft": 0.4}
    from PIL import Image

    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == (768, 600)  # figsize (6.4, 5.0) at 120 dpi
