"""Edits made through FiftyOne's own editor endpoint become logged, exported, revertible corrections.

The App's Annotate tab saves with JSON patches on ``/dataset/<id>/sample/<id>[/<field>/<label id>]``
(``fiftyone.server.routes.sample``), guarded by an ``If-Match`` version token. These tests send
the same patches to the same endpoint classes, mounted in a Starlette test client, against a private
``mongod``, then check the corrections log, the derived attributes, the semantic map, the export and
revert.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np
import pytest
from scipy import ndimage

from conftest import fresh_dataset_name, import_or_unavailable  # noqa: E402

fo = import_or_unavailable("fiftyone")
starlette_testclient = import_or_unavailable("starlette.testclient")

import fiftyone.core.utils as fou  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Route  # noqa: E402

from fiftyone.server.routes.sample import SampleRoutes, generate_sample_etag  # noqa: E402
from possam_label.fiftyone import corrections as C  # noqa: E402
from possam_label.fiftyone.convert import detection_mask_placement, label_attr  # noqa: E402
from possam_label.fiftyone.editor_sync import sync_editor_edits  # noqa: E402
from possam_label.fiftyone.export import ExportOptions, check_coco_panoptic, export_from_dataset  # noqa: E402
from possam_label.fiftyone.load import load_autolabel_output  # noqa: E402
from possam_label.io.panoptic_png import read_panoptic_png  # noqa: E402

pytestmark = pytest.mark.fiftyone

@pytest.fixture(scope="module")
def output_dir(coco_autolabel_output) -> Path:
    return coco_autolabel_output(seed=11)


@pytest.fixture(scope="module")
def editor():
    """The App editor's save endpoints, as the FiftyOne server mounts them."""
    app = Starlette(routes=[Route(path, endpoint) for path, endpoint in SampleRoutes])
    return starlette_testclient.TestClient(app)


def _fresh(name: str, output_dir: Path) -> fo.Dataset:
    load_autolabel_output(output_dir, fresh_dataset_name(name), progress=False)
    return fo.load_dataset(name)


def _full(det, height: int, width: int) -> np.ndarray:
    x0, y0, crop = detection_mask_placement(det, height, width)
    full = np.zeros((height, width), dtype=bool)
    full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return full


def _box_and_crop(full: np.ndarray) -> tuple[list[float], np.ndarray]:
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    height, width = full.shape
    crop = full[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return [cols[0] / width, rows[0] / height, crop.shape[1] / width, crop.shape[0] / height], crop


def _encoded(mask: np.ndarray) -> str:
    """A mask as the App sends it: base64 of FiftyOne's compressed .npy bytes."""
    return base64.b64encode(fou.serialize_numpy_array(mask.astype(np.uint8))).decode("ascii")


def _patch_label(editor, ds, sample, label_id: str, patch: list[dict]):
    sample.reload()
    url = f"/dataset/{ds._doc.id}/sample/{sample.id}/possam.detections/{label_id}"
    return editor.patch(url, content=json.dumps(patch), headers={
        "Content-Type": "application/json-patch+json", "If-Match": generate_sample_etag(sample)})


def _patch_sample(editor, ds, sample, patch: list[dict]):
    sample.reload()
    url = f"/dataset/{ds._doc.id}/sample/{sample.id}"
    return editor.patch(url, content=json.dumps(patch), headers={
        "Content-Type": "application/json-patch+json", "If-Match": generate_sample_etag(sample)})


def _labeled_sample(ds):
    return max(ds.match(fo.ViewField("possam").exists()), key=lambda s: len(s.possam.detections))


def test_loader_readies_the_annotate_tab(fiftyone_db, output_dir: Path) -> None:
    ds = _fresh("editor_schema", output_dir)
    schema = ds.label_schemas["possam"]
    assert ds.active_label_schemas[0] == "possam"
    assert schema["type"] == "detections" and schema["component"] == "dropdown"
    assert "person" in schema["classes"] and len(schema["classes"]) == len(C.get_categories(ds, "possam"))
    read_only = {a["name"] for a in schema["attributes"] if a.get("read_only")}
    assert {"confidence", "category_id", "area", "segment_id", "review_status"} <= read_only
    entry = next(f for f in ds.app_config.color_scheme.fields if f["path"] == "possam")
    assert entry["colorByAttribute"] == "review_status"
    assert {v["value"] for v in entry["valueColors"]} >= {"accepted", "rejected", "edited"}
    sample = _labeled_sample(ds)
    assert [e["label_id"] for e in sample.possam_original] == [d.id for d in sample.possam.detections]


def test_painted_mask_extension_reaches_the_export(fiftyone_db, output_dir: Path, editor, tmp_path: Path) -> None:
    ds = _fresh("editor_paint", output_dir)
    sample = _labeled_sample(ds)
    height, width = sample.possam_semantic.mask.shape
    dets = {d.id: d for d in sample.possam.detections}
    fulls = {i: _full(d, height, width) for i, d in dets.items()}
    # A thing whose dilation reaches into a neighbour: the brushed extension takes neighbour pixels.
    target = next(d for d in dets.values() if d.isthing and any(
        (ndimage.binary_dilation(fulls[d.id], iterations=6) & fulls[o]).any() for o in dets if o != d.id))
    painted = ndimage.binary_dilation(fulls[target.id], iterations=6)
    extension = painted & ~fulls[target.id]
    neighbours = [o for o in dets if o != target.id and (fulls[o] & extension).any()]
    box, crop = _box_and_crop(painted)

    response = _patch_label(editor, ds, sample, target.id, [
        {"op": "replace", "path": "/mask", "value": _encoded(crop)},
        {"op": "replace", "path": "/bounding_box", "value": box},
    ])
    assert response.status_code == 200, response.text
    sample.reload()
    assert not sample.possam_corrections  # the editor bypassed the plugin

    result = sync_editor_edits(ds)
    assert result.edited == 1 and result.trimmed == len(neighbours) and result.num_samples_changed == 1
    sample.reload()
    now = {d.id: d for d in sample.possam.detections}
    edited = now[target.id]
    assert edited.review_status == "edited" and "edited" in edited.tags
    assert np.array_equal(_full(edited, height, width), painted) and edited.area == int(painted.sum())
    for other in neighbours:  # panoptic again: neighbours gave up the painted pixels
        if other in now:
            assert not (_full(now[other], height, width) & painted).any()
            assert now[other].area == int((fulls[other] & ~painted).sum())
    assert (sample.possam_semantic.mask[painted] == target.category_id).all()
    log = sample.possam_corrections
    assert log[0]["action"] == "edit" and log[0]["label_id"] == target.id and log[0]["source"] == "editor"
    assert {e["label_id"] for e in log if e["action"] == "trim"} == {o for o in neighbours if o in now}
    assert sync_editor_edits(ds).num_edits == 0  # seen once, logged once

    # Exported with a confidence floor above the label's score: kept (reviewer-verified), extension included.
    floor = min(0.99, float(edited.confidence) + 0.01)
    export_from_dataset(ds, tmp_path / "export", options=ExportOptions(min_score=floor), progress=False)
    check_coco_panoptic(tmp_path / "export" / "panoptic.json")
    data = json.loads((tmp_path / "export" / "panoptic.json").read_text())
    ann = next(a for a in data["annotations"] if a["image_id"] == sample.possam_image_id)
    id_map = read_panoptic_png(tmp_path / "export" / "panoptic" / ann["file_name"])
    assert np.array_equal(id_map == edited.segment_id, painted)

    # Revert brings back the mask, the neighbours and the semantic map as loaded.
    assert C.revert_corrections(ds, [sample.id]) == 1
    sample.reload()
    assert {d.id: _full(d, height, width).sum() for d in sample.possam.detections} == {i: m.sum() for i, m in fulls.items()}
    assert np.array_equal(_full(next(d for d in sample.possam.detections if d.id == target.id), height, width), fulls[target.id])
    assert all(label_attr(d, "review_status") is None for d in sample.possam.detections)
    assert sync_editor_edits(ds, full=True).num_edits == 0


def test_export_alone_finds_an_unsynced_edit(fiftyone_db, output_dir: Path, editor, tmp_path: Path) -> None:
    ds = _fresh("editor_export_only", output_dir)
    sample = _labeled_sample(ds)
    height, width = sample.possam_semantic.mask.shape
    target = max((d for d in sample.possam.detections if d.isthing), key=lambda d: d.confidence)
    grown = ndimage.binary_dilation(_full(target, height, width), iterations=3)
    box, crop = _box_and_crop(grown)
    assert _patch_label(editor, ds, sample, target.id, [
        {"op": "replace", "path": "/mask", "value": _encoded(crop)},
        {"op": "replace", "path": "/bounding_box", "value": box},
    ]).status_code == 200
    export_from_dataset(ds, tmp_path / "export", options=ExportOptions(formats=["panoptic"]), progress=False)
    data = json.loads((tmp_path / "export" / "panoptic.json").read_text())
    ann = next(a for a in data["annotations"] if a["image_id"] == sample.possam_image_id)
    id_map = read_panoptic_png(tmp_path / "export" / "panoptic" / ann["file_name"])
    assert np.array_equal(id_map == target.segment_id, grown)


def test_class_change_added_and_deleted_labels(fiftyone_db, output_dir: Path, editor) -> None:
    ds = _fresh("editor_kinds", output_dir)
    sample = _labeled_sample(ds)
    height, width = sample.possam_semantic.mask.shape
    dets = sorted(sample.possam.detections, key=lambda d: d.segment_id)
    relabeled, removed = dets[0], dets[1]
    categories = C.get_categories(ds, "possam")
    new_class = next(n for n in categories.names if n != relabeled.label and categories.by_name(n).isthing == relabeled.isthing)

    assert _patch_label(editor, ds, sample, relabeled.id, [{"op": "replace", "path": "/label", "value": new_class}]).status_code == 200
    assert _patch_label(editor, ds, sample, removed.id, [{"op": "remove", "path": "/"}]).status_code == 200
    drawn = np.zeros((height, width), dtype=bool)
    drawn[2:12, 3:15] = True
    box, crop = _box_and_crop(drawn)
    response = _patch_sample(editor, ds, sample, [{"op": "add", "path": "/possam/detections/-", "value": {
        "_cls": "Detection", "label": "Scarecrow", "bounding_box": box, "mask": _encoded(crop)}}])
    assert response.status_code == 200, response.text

    result = sync_editor_edits(ds)
    assert (result.relabeled, result.deleted, result.added) == (1, 1, 1) and result.new_classes == ["Scarecrow"]
    sample.reload()
    now = {d.id: d for d in sample.possam.detections}
    moved = now[relabeled.id]
    assert moved.label == new_class and moved.category_id == categories.by_name(new_class).id
    assert moved.original_label == relabeled.label and moved.original_category_id == relabeled.category_id
    assert moved.review_status == "relabeled"
    assert removed.id not in now and [d.id for d in sample.possam_deleted.detections] == [removed.id]
    added = next(d for d in now.values() if d.label == "Scarecrow")
    assert added.review_status == "added" and added.segment_id == max(d.segment_id for d in dets) + 1
    assert added.category_id == C.get_categories(ds, "possam").by_name("Scarecrow").id and added.area == int(drawn.sum())
    assert (sample.possam_semantic.mask[drawn] == added.category_id).all()
    assert "Scarecrow" in ds.label_schemas["possam"]["classes"]  # the Annotate tab offers the new class
    assert sorted(e["action"] for e in sample.possam_corrections if e["action"] != "trim") == ["add", "delete", "relabel"]
    assert all(not (_full(d, height, width) & drawn).any() for d in now.values() if d.id != added.id)  # the drawn label took its pixels

    # A plugin correction made before any sync still logs the editor edit first, as the editor's.
    other = next(d for d in now.values() if d.id not in {relabeled.id, added.id} and d.label != relabeled.label)
    assert _patch_label(editor, ds, sample, other.id, [{"op": "replace", "path": "/label", "value": relabeled.label}]).status_code == 200
    C.accept_labels(ds, [(sample.id, moved.id)])
    sample.reload()
    assert [(e["action"], e["source"]) for e in sample.possam_corrections[-2:]] == [("relabel", "editor"), ("accept", "plugin")]

    C.revert_corrections(ds)  # all samples: the loaded predictions, the drawn label gone
    sample.reload()
    assert sorted((d.id, d.label) for d in sample.possam.detections) == sorted((d.id, d.label) for d in dets)
    assert sample.possam_deleted is None
