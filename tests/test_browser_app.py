"""The FiftyOne App with the ``@possam/review`` plugin, driven in headless Chromium.

Starts ``python -m fiftyone.server.main`` on 127.0.0.1 against a private mongod, with
``FIFTYONE_PLUGINS_DIR=plugins``, opens a dataset whose saved workspace shows the review panel,
checks that the panel renders the dataset's numbers and that the operator browser lists every
operator of the plugin, drives the sample view's one-click "accept" and "next in queue" buttons
(a label clicked on the image, accepted in the dataset and shown as accepted by the open sample
without a page reload; the next queue sample opened), edits a label in FiftyOne's own Annotate tab
(a brush stroke and a class change) and finds the edit in the export, runs a 20-correction session,
checks that stuff labels draw no box, and saves screenshots under ``test-artifacts/browser/`` (or
``$POSSAM_TEST_ARTIFACTS``). Needs Debian's ``chromium`` and ``chromium-driver`` packages
(``apt-get install -y chromium chromium-driver``) and the ``selenium`` package.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import pytest
import yaml

from conftest import import_or_unavailable, private_fiftyone_database, unavailable  # noqa: E402

fo = import_or_unavailable("fiftyone")

from possam_label.fiftyone.convert import label_attr  # noqa: E402
from possam_label.fiftyone.load import load_autolabel_output  # noqa: E402
from possam_label.fiftyone.review import review_summary  # noqa: E402
from possam_label.fiftyone.testing import write_coco_autolabel_output  # noqa: E402

pytestmark = [pytest.mark.fiftyone, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[1]
COCO = REPO / "tests" / "data" / "coco_panoptic_sample"
if not COCO.is_dir():
    COCO = Path("/work/shared/data/coco_panoptic_sample")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("POSSAM_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
PLUGIN = "@possam/review"
DATASET = "browser_review"


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        unavailable(f"chromium not installed ({', '.join(missing)} missing): apt-get install -y chromium chromium-driver")
    import_or_unavailable("selenium")


def _post(url: str, payload: dict) -> tuple[int, dict]:
    """(HTTP status, JSON body); operator errors come back as a 500 whose body says why."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    _need_browser()
    private_fiftyone_database()
    out = tmp_path_factory.mktemp("autolabel") / "out"
    write_coco_autolabel_output(out, COCO, seed=5)
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    load_autolabel_output(out, DATASET, progress=False)
    dataset = fo.load_dataset(DATASET)
    dataset.save_workspace(
        "review",
        fo.Space(children=[fo.Panel(type="Samples", pinned=True), fo.Panel(type="review_panel")], orientation="horizontal"),
        overwrite=True,
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fo.config.plugins_dir = str(REPO / "plugins")
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": str(REPO / "plugins")}
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"FiftyOne server did not start:\n{log.read()[-3000:]}")
                time.sleep(0.2)
        yield base, dataset
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(app):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="possam-chromium-")
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for the session test
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_for_text(driver, texts: list[str], timeout: float = 45.0) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts):
            return body
        time.sleep(0.3)
    raise AssertionError(f"page never showed {texts}; it shows:\n{body[:3000]}")


def _dismiss_popovers(driver) -> None:
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//*[normalize-space(text())='Dismiss']"):
        try:
            button.click()
        except Exception:  # a popover that vanished meanwhile
            pass


def test_operators_endpoint_lists_the_plugin_and_reports_bad_input(app) -> None:
    base, dataset = app
    app_output = dataset.info["possam_label"]["possam"]["runs"][0]["output_dir"]
    manifest = yaml.safe_load((REPO / "plugins" / "possam_review" / "fiftyone.yml").read_text())
    status, listed = _post(base + "/operators", {"dataset_name": DATASET})
    assert status == 200
    uris = {op["uri"] for op in listed["operators"]}
    assert {f"{PLUGIN}/{name}" for name in manifest["operators"] + manifest["panels"]} <= uris
    assert not [e for e in listed.get("errors", []) if "possam" in json.dumps(e)]

    bad_status, bad_dir = _post(base + "/operators/execute", {"dataset_name": DATASET, "operator_uri": f"{PLUGIN}/load_autolabel_output", "params": {"output_dir": str(REPO / "tests")}})
    print("\nbad directory ->", bad_status, json.dumps(bad_dir)[:400])
    # The operator form flags the directory while the user types it, before anything runs.
    status, form = _post(base + "/operators/resolve-type", {"dataset_name": DATASET, "operator_uri": f"{PLUGIN}/load_autolabel_output",
                                                            "target": "inputs", "params": {"output_dir": str(REPO / "tests")}})
    assert status == 200, json.dumps(form)[-1500:]
    form_text = json.dumps(form)
    assert '"invalid": true' in form_text and "Not an autolabel output" in form_text and "run.json is missing" in form_text
    assert "not an autolabel output: run.json is missing" in json.dumps(bad_dir)
    assert bad_status == 500
    status, missing = _post(base + "/operators/execute", {"dataset_name": DATASET, "operator_uri": f"{PLUGIN}/load_autolabel_output",
                                                          "params": {"output_dir": str(COCO), "dataset_name": "no_such_dataset"}})
    assert status == 500
    assert "not an autolabel output" in json.dumps(missing)  # the directory is checked first
    out = _post(base + "/operators/execute", {"dataset_name": DATASET, "operator_uri": f"{PLUGIN}/load_autolabel_output",
                                              "params": {"output_dir": str(app_output), "dataset_name": "no_such_dataset"}})[1]
    assert "FiftyOne dataset 'no_such_dataset' does not exist" in json.dumps(out)
    assert not fo.dataset_exists("no_such_dataset")


def test_review_panel_and_operator_browser_render(app, browser) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    base, dataset = app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    summary = review_summary(dataset, 0.5)
    browser.get(f"{base}/datasets/{DATASET}?workspace=review")
    body = _wait_for_text(browser, ["Per-class counts", "Show needs review", "Confidence histogram"])
    assert f"{summary.num_labels} labels in {summary.num_samples} samples" in body
    assert f"below 0.50: {summary.num_below}" in body
    assert all(c.label in body for c in summary.per_class)
    _dismiss_popovers(browser)
    time.sleep(1.0)  # let the plot and the grid finish drawing
    panel_png = ARTIFACTS / "review_panel.png"
    browser.save_screenshot(str(panel_png))
    print(f"\nscreenshot: {panel_png}")

    # The panel's buttons act on the App: "Show needs review" loads the review queue as the view.
    from selenium.webdriver.common.by import By

    browser.find_element(By.XPATH, "//button[normalize-space(.)='Show needs review']").click()
    # The panel follows the App's view: only the labels below the threshold are left.
    _wait_for_text(browser, [f"{summary.num_below} labels in", f"below 0.50: {summary.num_below}", "at or above: 0"], timeout=30)
    time.sleep(1.0)
    queue_png = ARTIFACTS / "needs_review_view.png"
    browser.save_screenshot(str(queue_png))
    print(f"screenshot: {queue_png}")

    ActionChains(browser).send_keys("`").perform()  # opens the operator browser
    time.sleep(1.0)
    ActionChains(browser).send_keys("PosSAM").perform()
    manifest = yaml.safe_load((REPO / "plugins" / "possam_review" / "fiftyone.yml").read_text())
    import fiftyone.operators as foo

    labels = [foo.get_operator(f"{PLUGIN}/{name}").config.label for name in manifest["operators"]]
    body = _wait_for_text(browser, labels, timeout=20)
    for name in manifest["operators"]:
        assert name in body  # the browser shows each operator's name next to its label
    operators_png = ARTIFACTS / "operator_browser.png"
    browser.save_screenshot(str(operators_png))
    print(f"screenshot: {operators_png}")
    assert panel_png.stat().st_size > 10_000 and operators_png.stat().st_size > 10_000

    # "Clear view" brings every label back (and leaves the App as the next test expects it).
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    time.sleep(0.5)
    browser.find_element(By.XPATH, "//button[normalize-space(.)='Clear view']").click()
    _wait_for_text(browser, [f"below 0.50: {summary.num_below}", f"at or above: {summary.num_above}"], timeout=30)


def _screenshot_array(driver):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)


def _left_edge_pixels(image, driver, sample, det):
    """(rows, 7) RGB pixels of a screenshot of the open sample around ``det``'s left box edge
    (middle 60 % of its height; the App's stroke is a few pixels wide around the edge)."""
    import numpy as np

    width, height = sample.metadata.width, sample.metadata.height
    x, y, _, h = det.bounding_box
    left, top = _screen_point(driver, sample, x * width, (y + 0.2 * h) * height)
    _, bottom = _screen_point(driver, sample, x * width, (y + 0.8 * h) * height)
    column = int(round(left - 0.5))
    rows = np.arange(int(top), int(bottom))
    return image[rows][:, column - 3 : column + 4]


def _stroke_cover(edge, colour) -> float:
    """The largest fraction of one pixel column of ``edge`` that is ``colour`` (within 8 per channel)."""
    import numpy as np

    return float((np.abs(edge - np.asarray(colour)).max(axis=2) <= 8).mean(axis=0).max())


def test_stuff_labels_draw_their_masks_without_boxes(app, browser) -> None:
    """The App draws a stuff label's mask and no box (the loader's drawing hint, possam_label/
    fiftyone/drawing.py): the left edge of a stuff box shows the image, and the same label without
    the hint gets its stroked box back (the control). The Annotate tab still edits such a label: a
    class change to another stuff class is synced as a relabel and the label keeps drawing mask-only."""
    import re

    import numpy as np
    from selenium.webdriver.common.by import By

    from possam_label.fiftyone.corrections import revert_corrections
    from possam_label.fiftyone.drawing import MASK_ONLY_ATTRIBUTE
    from possam_label.fiftyone.editor_sync import sync_editor_edits

    base, dataset = app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get_log("browser")
    # A stuff label whose left box edge lies inside the image (so a stroke there is visible).
    candidates = [
        (d.bounding_box[3], s.id, d.id)
        for s in dataset.iter_samples()
        for d in s["possam"].detections
        if not d["isthing"] and label_attr(d, "review_status") is None and d.bounding_box[0] > 0.05 and d.bounding_box[3] > 0.2
    ]
    assert candidates, "the COCO sample has a stuff segment away from the left border"
    _, sample_id, label_id = max(candidates)
    sample = dataset[sample_id]
    det = next(d for d in sample["possam"].detections if d.id == label_id)
    assert det[MASK_ONLY_ATTRIBUTE] is not None  # the loader's hint

    def show() -> object:
        browser.get(f"{base}/datasets/{DATASET}?id={sample.id}")
        _wait_for_text(browser, ["Explore", "Annotate", "possam"])
        time.sleep(3.0)
        _dismiss_popovers(browser)
        time.sleep(1.0)
        return _screenshot_array(browser)

    # The control first (the hint removed), then the label as loaded, whose page the editor uses.
    hint = det[MASK_ONLY_ATTRIBUTE]
    det[MASK_ONLY_ATTRIBUTE] = None
    sample.save()
    try:
        with_box = _left_edge_pixels(show(), browser, sample, det)
        browser.save_screenshot(str(ARTIFACTS / "stuff_with_box.png"))
    finally:
        det[MASK_ONLY_ATTRIBUTE] = hint
        sample.save()
    masks_only = _left_edge_pixels(show(), browser, sample, det)
    browser.save_screenshot(str(ARTIFACTS / "stuff_mask_only.png"))
    # The control shows the stroke: one column of one solid colour. Without the hint, that colour
    # is not there (the mask is drawn translucent, so the image shows through it).
    modes = []
    for column in with_box.transpose(1, 0, 2):
        colours, counts = np.unique(column, axis=0, return_counts=True)
        modes.append(colours[np.argmax(counts)])
    stroke = max(modes, key=lambda colour: _stroke_cover(with_box, colour))
    cover_box, cover_masks_only = _stroke_cover(with_box, stroke), _stroke_cover(masks_only, stroke)
    print(f"\nstuff label {det.label!r}: its box colour {stroke.tolist()} covers {cover_masks_only:.0%} of a column at its left edge (mask only), {cover_box:.0%} (box drawn)")
    assert cover_box >= 0.9 and cover_masks_only <= 0.2, (cover_masks_only, cover_box)

    # FiftyOne's editor opens and edits such a label: another stuff class, synced as a relabel.
    names = {d.label for d in sample["possam"].detections}
    new_class = next(c for c in ("playingfield", "sand", "dirt-merged", "river") if c not in names)
    _open_annotate_tab(browser)
    entries = browser.find_elements(By.XPATH, f"//*[normalize-space(text())='{det.label}']")
    assert entries, _wait_for_text(browser, ["Annotate"])
    entries[-1].click()
    form = _wait_for_text(browser, ["Edit Detection", "label"])
    assert re.search(r"id:\s*([0-9a-f]{24})", form).group(1) == det.id, form
    _pick_class_in_editor(browser, new_class)

    def stored_label() -> str:
        labels, ids = dataset.select(sample.id).values(["possam.detections.label", "possam.detections.id"])
        return dict(zip(ids[0], labels[0]))[det.id]

    _wait_for_database(browser, lambda: stored_label() == new_class, f"the stuff label {det.id} as {new_class}")
    sync_editor_edits(dataset)
    sample.reload()
    edited = next(d for d in sample["possam"].detections if d.id == det.id)
    assert edited.review_status == "relabeled" and edited["isthing"] is False
    assert edited[MASK_ONLY_ATTRIBUTE] == hint
    revert_corrections(dataset, [sample.id])  # the later tests see this sample as loaded
    # The App remembers the sidebar's mode: back to Explore, where the later tests click labels.
    browser.find_element(By.XPATH, "//*[normalize-space(text())='Explore']").click()
    time.sleep(1.0)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    for entry in errors:
        print("console:", entry["message"][:300])
    assert not [e for e in errors if "possam" in e["message"].lower() or "operator" in e["message"].lower()], errors


def _plugin_buttons(driver) -> dict[str, object]:
    """The plugin's buttons in the sample viewer's action bar, by the label their tooltip shows."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    icons = driver.find_elements(By.XPATH, "//img[contains(@src, 'possam_review/assets/icon.svg')]")
    if len(_BUTTON_ORDER) == len(icons):  # the action bar keeps its order: read the tooltips once
        return {label: icons[i].find_element(By.XPATH, "..") for label, i in _BUTTON_ORDER.items()}
    found = {}
    for index, icon in enumerate(icons):
        button = icon.find_element(By.XPATH, "..")
        ActionChains(driver).move_to_element(button).perform()
        time.sleep(0.6)
        shown = [line for line in driver.find_element(By.TAG_NAME, "body").text.splitlines() if line.startswith("PosSAM: ")]
        if shown:
            found[shown[-1]] = button
            _BUTTON_ORDER[shown[-1]] = index
    if len(_BUTTON_ORDER) != len(icons):
        _BUTTON_ORDER.clear()
    return found


_BUTTON_ORDER: dict[str, int] = {}


def _screen_point(driver, sample, x: float, y: float) -> tuple[float, float]:
    """Viewport coordinates of the centre of image pixel (``x``, ``y``) of the open sample.

    The Annotate tab draws the sample with its own renderer, whose image element says where the
    image is (its sidebar covers the canvas's right part and the image is fitted into what is
    left). The Explore tab's viewer has no such element: there the image is fitted and centred in
    its (largest) canvas."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    width, height = sample.metadata.width, sample.metadata.height
    for attempt in range(5):
        try:  # the sample view may re-render (after a refresh) while we measure it
            image = driver.find_elements(By.CSS_SELECTOR, "[data-cy=lighter-sample-image]")
            if image:
                box = image[0].rect
                return box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height
            box = max(driver.find_elements(By.TAG_NAME, "canvas"), key=lambda c: c.rect["width"] * c.rect["height"]).rect
            break
        except StaleElementReferenceException:
            time.sleep(0.3)
    else:
        raise AssertionError("the sample view kept re-rendering")
    scale = min(box["width"] / width, box["height"] / height)
    return (box["x"] + (box["width"] - width * scale) / 2 + (x + 0.5) * scale,
            box["y"] + (box["height"] - height * scale) / 2 + (y + 0.5) * scale)


def _move_pointer(driver, *points: tuple[float, float]) -> None:
    """Move the pointer through viewport ``points`` (no button pressed)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    for point in points:
        actions.pointer_action.move_to_location(round(point[0]), round(point[1]))
        actions.pointer_action.pause(0.3)
    actions.perform()


def _interior_point(sample, det) -> tuple[int, int]:
    """(x, y) image pixel of ``det``'s mask farthest from its border."""
    import numpy as np
    from scipy import ndimage

    from possam_label.fiftyone.convert import detection_mask_placement

    x0, y0, crop = detection_mask_placement(det, sample.metadata.height, sample.metadata.width)
    # Padded: a mask cut by the image border has its border there too (else the farthest pixel may
    # lie on the image's edge).
    padded = np.pad(crop, 1)
    cy, cx = np.unravel_index(np.argmax(ndimage.distance_transform_edt(padded)), padded.shape)
    return int(x0 + cx - 1), int(y0 + cy - 1)


def _hover_label(driver, sample, det) -> str:
    """Point at the most interior pixel of ``det`` in the open sample; returns the tooltip's text."""
    from selenium.webdriver.common.by import By

    # Off every label first (the image's top-left pixel), so the tooltip is the target's.
    _move_pointer(driver, _screen_point(driver, sample, 0, 0), _screen_point(driver, sample, *_interior_point(sample, det)))
    # Until the tooltip of a label is complete (it ends with the label's id), at most 2 s.
    deadline = time.monotonic() + 2.0
    time.sleep(0.3)
    text = driver.find_element(By.TAG_NAME, "body").text
    while _hovered_label_id(text) is None and time.monotonic() < deadline:
        time.sleep(0.2)
        text = driver.find_element(By.TAG_NAME, "body").text
    return text


def test_one_click_accept_and_next_in_queue_in_the_sample_view(app, browser) -> None:
    """In the sample view: click a label, click "PosSAM: accept" in the action bar: the label is
    accepted in the dataset and the open sample shows it without a page reload; then "PosSAM: next
    in queue" opens the sample the library says is next. The console holds no plugin error."""
    from selenium.webdriver.common.action_chains import ActionChains

    from possam_label.fiftyone.review_queue import next_in_queue

    base, dataset = app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get_log("browser")  # drop what earlier tests logged
    sample = dataset.sort_by("filepath").first()
    browser.get(f"{base}/datasets/{DATASET}?id={sample.id}")
    _wait_for_text(browser, ["Explore", "Annotate", "possam"])
    time.sleep(2.0)
    _dismiss_popovers(browser)
    buttons = _plugin_buttons(browser)
    assert {"PosSAM: accept", "PosSAM: reject", "PosSAM: delete", "PosSAM: next in queue"} <= set(buttons), sorted(buttons)
    browser.execute_script("window.__possam_no_reload = true;")

    # Point at the largest thing; the App picks the label under the pointer (its tooltip names it).
    det = max((d for d in sample["possam"].detections if d["isthing"]), key=lambda d: d["area"])
    tooltip = _hover_label(browser, sample, det)
    names = {d.label for d in sample["possam"].detections}
    hovered = next(line for line in tooltip.splitlines() if line in names)
    assert "accepted" not in tooltip.splitlines()
    ActionChains(browser).click().perform()
    time.sleep(0.5)
    started = time.monotonic()
    buttons["PosSAM: accept"].click()
    accepted = []
    while time.monotonic() - started < 30 and not accepted:
        # values() reads the database (a Sample object here is this process's cached copy).
        labels, statuses = dataset.select(sample.id).values(["possam.detections.label", "possam.detections.review_status"])
        accepted = [name for name, status in zip(labels[0], statuses[0] or []) if status == "accepted"]
        time.sleep(0.2)
    correction_s = time.monotonic() - started
    assert accepted == [hovered], (hovered, accepted)
    assert browser.execute_script("return window.__possam_no_reload === true;")  # no page reload
    time.sleep(1.0)
    browser.save_screenshot(str(ARTIFACTS / "one_click_accept.png"))
    # The open sample shows the new state (the plugin's refresh_open_sample refetched it): the
    # tooltip lists the label's review_status.
    assert "accepted" in _hover_label(browser, sample, det).splitlines()

    expected = next_in_queue(dataset, 0.5, sample.id)
    assert expected is not None and expected != sample.id
    buttons = _plugin_buttons(browser)
    started = time.monotonic()
    buttons["PosSAM: next in queue"].click()
    while time.monotonic() - started < 30 and f"id={expected}" not in browser.current_url:
        time.sleep(0.2)
    queue_step_s = time.monotonic() - started
    assert f"id={expected}" in browser.current_url, browser.current_url
    time.sleep(1.0)
    browser.save_screenshot(str(ARTIFACTS / "next_in_queue.png"))
    print(f"\none-click accept: {correction_s:.2f} s from the click to the database; next in queue: {queue_step_s:.2f} s from the click to the new sample's URL")

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    for entry in errors:
        print("console:", entry["message"][:300])
    assert not [e for e in errors if "possam" in e["message"].lower() or "operator" in e["message"].lower()], errors



def _hovered_label_id(tooltip: str) -> Optional[str]:
    """The id of the label the App's tooltip describes (it lists ``value`` then ``name`` lines and
    ends with the label's id)."""
    lines = tooltip.splitlines()
    return lines[-2] if len(lines) >= 2 and lines[-1] == "id" and len(lines[-2]) == 24 else None


def _run_from_operator_browser(driver, label: str) -> None:
    """Open the operator browser (the backtick key), pick the operator by its label, and execute its form."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).send_keys("`").perform()
    time.sleep(0.8)
    ActionChains(driver).send_keys(label).perform()
    _wait_for_text(driver, [label], timeout=10)
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    deadline = time.monotonic() + 30
    clicked = False
    while time.monotonic() < deadline:
        try:  # the form re-renders while it resolves its inputs; a click during that may be lost
            buttons = [b for b in driver.find_elements(By.XPATH, "//button[normalize-space(.)='Execute']") if b.is_displayed()]
            if not buttons and clicked:
                return  # the form closed: the operator runs
            if buttons:
                time.sleep(0.5)
                buttons[0].click()
                clicked = True
                time.sleep(1.0)
        except StaleElementReferenceException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the form of {label!r} never showed an Execute button:\n{driver.find_element(By.TAG_NAME, 'body').text[:2000]}")


def _wait_for_database(driver, check, what: str, timeout: float = 60.0) -> float:
    """Seconds until ``check()`` is true (it reads the database), or fail with a screenshot."""
    from selenium.webdriver.common.by import By

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    driver.save_screenshot(str(ARTIFACTS / "session_failure.png"))
    raise AssertionError(f"the database never showed {what}; the page shows:\n{driver.find_element(By.TAG_NAME, 'body').text[-1500:]}")


def test_review_session_of_twenty_corrections(app, browser) -> None:
    """A reviewer's session in the sample view: 20 corrections (one-click accept, reject and delete
    on labels clicked on the image, SAM refine of a selected label and segment-and-classify of a
    drawn box from the operator browser), moving on with "next in queue" when a sample is done.
    Each correction lands in the database and the open sample shows it without a reload; the
    console shows no error caused by the plugin. Timings are printed, screenshots saved."""
    from selenium.webdriver.common.action_chains import ActionChains

    base, dataset = app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get_log("browser")
    first = dataset.sort_by("filepath").first()
    browser.get(f"{base}/datasets/{DATASET}?id={first.id}")
    _wait_for_text(browser, ["Explore", "Annotate", "possam"])
    time.sleep(2.0)
    _dismiss_popovers(browser)
    browser.execute_script("window.__possam_no_reload = true;")

    def labels_of(sample_id: str) -> dict[str, tuple]:
        ids, names, statuses = dataset.select(sample_id).values(
            ["possam.detections.id", "possam.detections.label", "possam.detections.review_status"])
        return {i: (n, s) for i, n, s in zip(ids[0], names[0], statuses[0] or [None] * len(ids[0]))}

    timings: dict[str, list[float]] = {"accept": [], "reject": [], "delete": [], "refine": [], "segment box": [], "next in queue": []}
    done: list[tuple[str, str]] = []
    one_click = ["accept", "reject", "delete"]
    refined = boxed = False
    tried: set[str] = set()
    idle_steps = 0  # "next in queue" steps since the last correction
    while len(done) < 20:
        sample_id = browser.current_url.split("id=")[-1].split("&")[0]
        sample = dataset[sample_id]
        sample.reload()
        undecided = sorted(
            (d for d in sample["possam"].detections
             if label_attr(d, "review_status") is None and d.mask is not None and (d["area"] or 0) >= 1000 and d.id not in tried),
            key=lambda d: -d["area"])
        if not boxed and refined:
            # A box drawn in the Annotate tab has no mask (written here as the editor writes it).
            target = undecided[0]
            sample["possam"].detections.append(fo.Detection(label=target.label, bounding_box=list(target.bounding_box)))
            sample.save()
            box_id = sample["possam"].detections[-1].id
            started = time.monotonic()
            _run_from_operator_browser(browser, "PosSAM: segment and classify drawn boxes")
            _wait_for_database(browser, lambda: labels_of(sample_id).get(box_id, (None, None))[1] == "added", f"box {box_id} segmented")
            timings["segment box"].append(time.monotonic() - started)  # from opening the operator browser
            done.append(("segment box", box_id))
            boxed = True
            browser.save_screenshot(str(ARTIFACTS / "session_segment_box.png"))
            continue
        if not undecided:
            idle_steps += 1
            assert idle_steps <= 2, f"no label left to correct after {len(done)} corrections: {done}"
            started = time.monotonic()
            _plugin_buttons(browser)["PosSAM: next in queue"].click()
            _wait_for_database(browser, lambda: f"id={sample_id}" not in browser.current_url, "the next sample opened", timeout=30)
            timings["next in queue"].append(time.monotonic() - started)
            time.sleep(1.0)
            continue
        det = undecided[0]
        tried.add(det.id)
        label_id = _hovered_label_id(_hover_label(browser, sample, det))
        if label_id is None or labels_of(sample_id).get(label_id, (None, "x"))[1] is not None:
            continue  # the pointer is on a decided label or on no label: try the next one
        ActionChains(browser).click().perform()
        time.sleep(0.3)
        action = "refine" if not refined and len(done) >= 3 else one_click[len(done) % 3]
        started = time.monotonic()
        if action == "refine":
            _run_from_operator_browser(browser, "PosSAM: refine selected labels with SAM")
            expected = "edited"
        else:
            _plugin_buttons(browser)[f"PosSAM: {action}"].click()
            expected = {"accept": "accepted", "reject": "rejected", "delete": None}[action]
        if expected is None:
            _wait_for_database(browser, lambda: label_id not in labels_of(sample_id), f"label {label_id} deleted")
        else:
            _wait_for_database(browser, lambda: labels_of(sample_id).get(label_id, (None, None))[1] == expected, f"{action} of label {label_id}")
        timings[action].append(time.monotonic() - started)
        idle_steps = 0
        refined = refined or action == "refine"
        done.append((action, label_id))
        if expected in ("accepted", "rejected"):
            # The open sample shows the decision (the tooltip lists the label's review_status).
            deadline = time.monotonic() + 10
            while expected not in (shown := _hover_label(browser, sample, det)).splitlines() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert expected in shown.splitlines(), (action, label_id, _hovered_label_id(shown), shown[-600:])
        if len(done) in (1, 10, 20):
            browser.save_screenshot(str(ARTIFACTS / f"session_{len(done):02d}.png"))

    assert browser.execute_script("return window.__possam_no_reload === true;")  # no page reload in 20 corrections
    logged = [entry["action"] for s in dataset.select_fields("possam_corrections") for entry in (s["possam_corrections"] or [])]
    for kind in ("accept", "reject", "delete", "refine", "segment_boxes"):
        assert kind in logged, (kind, logged)
    print("\nsession: " + "; ".join(
        f"{name} x{len(values)} median {sorted(values)[len(values) // 2]:.2f} s" for name, values in timings.items() if values))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    causes = sorted({e["message"].split(" ", 2)[-1][:120] for e in errors})
    print("console errors (FiftyOne's own):", causes)
    assert not [e for e in errors if "possam" in e["message"].lower() or "operator" in e["message"].lower()], errors


def _open_annotate_tab(driver) -> None:
    """Switch the open sample's sidebar to FiftyOne's Annotate tab (its editor)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.XPATH, "//*[normalize-space(text())='Annotate']").click()
    time.sleep(2.0)
    # FiftyOne shows an "Explore Enterprise" popover there that takes the focus; its Dismiss click
    # is intercepted, Escape on the popover closes it.
    for paper in driver.find_elements(By.CSS_SELECTOR, ".MuiPopover-paper"):
        try:
            paper.send_keys(Keys.ESCAPE)
        except Exception:  # gone meanwhile
            pass
    time.sleep(0.5)


def _pick_class_in_editor(driver, new_class: str) -> None:
    """In the Annotate tab's open label form, pick ``new_class`` in the class dropdown (a combobox
    of the label schema's classes; the App saves the change at once)."""
    from selenium.webdriver.common.by import By

    combo = next(c for c in driver.find_elements(By.CSS_SELECTOR, "input[role=combobox]")
                 if "headlessui" in (c.get_attribute("id") or ""))
    combo.click()
    option = driver.find_element(By.XPATH, f"//*[@role='option'][normalize-space(.)='{new_class}']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", option)
    time.sleep(0.5)
    option.click()


def _brush_stroke(driver, sample, points: list[tuple[int, int]], steps: int = 20) -> None:
    """With the Annotate tab's label form open: pick the brush (its toolbar button) and paint one
    stroke through image pixels ``points`` (pointer down at the first, moves, up at the last)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "button[aria-label=Brush]").click()
    time.sleep(0.5)

    screen = [_screen_point(driver, sample, x, y) for x, y in points]  # the mapping is affine: interpolate on screen
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(round(screen[0][0]), round(screen[0][1]))
    actions.pointer_action.pointer_down()
    for (ax, ay), (bx, by) in zip(screen, screen[1:]):
        for k in range(1, steps + 1):
            actions.pointer_action.move_to_location(round(ax + (bx - ax) * k / steps), round(ay + (by - ay) * k / steps))
            actions.pointer_action.pause(0.03)
    actions.pointer_action.pointer_up()
    actions.perform()


def test_annotate_tab_edit_is_a_correction_and_reaches_the_export(app, browser, tmp_path) -> None:
    """In FiftyOne's own editor (sample view → Annotate): open a label of ours, paint a brush stroke
    from inside its mask up past its box, and pick another class in its class dropdown. The App
    writes both straight to the dataset; the export then records them as one correction (an edit
    that also relabeled, source "editor", category_id from the new class, semantic map repainted)
    and carries the label as reviewer-verified: its new class and all its pixels, the painted ones
    included, above a confidence floor that would otherwise drop it."""
    import re

    import numpy as np
    from selenium.webdriver.common.by import By

    from possam_label.fiftyone.convert import detection_mask_placement
    from possam_label.fiftyone.export import ExportOptions, check_coco_panoptic, export_from_dataset
    from possam_label.io.panoptic_png import read_panoptic_png

    base, dataset = app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get_log("browser")
    sample = dataset.sort_by("filepath").last()  # one the session tests did not touch
    names = [d.label for d in sample["possam"].detections]
    thing = max((d for d in sample["possam"].detections if d["isthing"] and label_attr(d, "review_status") is None),
                key=lambda d: d["area"])
    new_class = next(c for c in ("dog", "cat", "horse", "bench") if c not in names)
    height, width = sample.metadata.height, sample.metadata.width
    browser.get(f"{base}/datasets/{DATASET}?id={sample.id}")
    _wait_for_text(browser, ["Explore", "Annotate", "possam"])
    time.sleep(2.0)
    _dismiss_popovers(browser)
    _open_annotate_tab(browser)

    # The Annotate tab lists the sample's labels by class; open one of the thing's class.
    entries = browser.find_elements(By.XPATH, f"//*[normalize-space(text())='{thing.label}']")
    assert entries, _wait_for_text(browser, ["Annotate"])
    entries[-1].click()
    form = _wait_for_text(browser, ["Edit Detection", "label"])
    label_id = re.search(r"id:\s*([0-9a-f]{24})", form).group(1)
    det = next(d for d in sample["possam"].detections if d.id == label_id)
    browser.save_screenshot(str(ARTIFACTS / "annotate_edit_form.png"))

    def stored() -> dict:
        ids, labels, boxes = dataset.select(sample.id).values(
            ["possam.detections.id", "possam.detections.label", "possam.detections.bounding_box"])
        return {i: (n, b) for i, n, b in zip(ids[0], labels[0], boxes[0])}

    def placed_mask(label) -> np.ndarray:
        left, top, crop = detection_mask_placement(label, height, width)
        mask = np.zeros((height, width), dtype=bool)
        mask[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
        return mask

    # A brush stroke from the label's most interior pixel straight up, 30 pixels past its box.
    before = placed_mask(det)
    x, y = _interior_point(sample, det)
    top = int(np.flatnonzero(before.any(axis=1))[0])
    _brush_stroke(browser, sample, [(x, y), (x, max(2, top - 30))])
    brush_s = _wait_for_database(browser, lambda: stored()[label_id][1] != list(det.bounding_box), f"the label {label_id} painted")
    browser.save_screenshot(str(ARTIFACTS / "annotate_brushed.png"))
    print(f"\nAnnotate tab: brush stroke in the database after {brush_s:.2f} s")

    _pick_class_in_editor(browser, new_class)
    relabel_s = _wait_for_database(browser, lambda: stored()[label_id][0] == new_class, f"the label {label_id} as {new_class}")
    time.sleep(1.0)
    browser.save_screenshot(str(ARTIFACTS / "annotate_edited.png"))
    print(f"Annotate tab: class change in the database after {relabel_s:.2f} s")

    # The export records the editor's edits first (sync), then keeps the label as reviewer-verified.
    floor = min(0.99, float(det.confidence) + 0.01)
    out = tmp_path / "export"
    export_from_dataset(dataset, out, options=ExportOptions(formats=["panoptic"], min_score=floor), progress=False)
    sample.reload()
    edited = next(d for d in sample["possam"].detections if d.id == label_id)
    log = [e for e in sample["possam_corrections"] if e.get("label_id") == label_id]  # a revert entry has none
    assert [(e["action"], e["source"], e["relabeled"]) for e in log] == [("edit", "editor", True)], log
    assert edited.label == new_class and edited.review_status == "edited" and edited.original_label == det.label
    check_coco_panoptic(out / "panoptic.json")
    data = json.loads((out / "panoptic.json").read_text())
    category = next(c for c in data["categories"] if c["name"] == new_class)
    assert edited.category_id == category["id"] != det.category_id
    ann = next(a for a in data["annotations"] if a["image_id"] == sample["possam_image_id"])
    segment = next(s for s in ann["segments_info"] if s["id"] == edited.segment_id)
    assert segment["category_id"] == category["id"]
    mask = placed_mask(edited)
    painted = mask & ~before
    kept = before & mask
    print(f"brush stroke: {int(painted.sum())} pixels added above row {top}, {int(before.sum() - kept.sum())} of the "
          f"mask's edge lost to the App's re-encoding (mask {det.area} -> {edited.area} pixels)")
    assert painted.sum() >= 100 and painted[: top].any()
    assert kept.sum() >= 0.99 * before.sum()  # the App resamples the mask to its new box: a few edge pixels move
    assert int(mask.sum()) == edited.area
    id_map = read_panoptic_png(out / "panoptic" / ann["file_name"])
    assert np.array_equal(id_map == edited.segment_id, mask)  # all its pixels, painted ones too: verified labels fill first
    # The semantic map was repainted with the new class.
    assert (sample["possam_semantic"].mask[mask] == category["id"]).all()

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    for entry in errors:
        print("console:", entry["message"][:300])
    assert not [e for e in errors if "possam" in e["message"].lower() or "operator" in e["message"].lower()], errors

