"""The model in a child process (possam_label.engine.autolabel.model_process): same predictions as
in-process, a death raises ModelProcessDied and a new child works, the child dies with its parent,
a model that cannot be built fails start() clearly; and the actor's retry budget and bisection
(stages.predict_with_retries) against a stand-in model process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from possam_label.engine.autolabel.model_process import (
    TEST_KILL_EXIT_CODE,
    TEST_HANG_ON_ENV,
    TEST_KILL_ON_ENV,
    ModelInfo,
    ModelProcess,
    ModelProcessDied,
    ModelProcessError,
    ModelSpec,
    PredictionFailed,
    predict_isolated,
)
from possam_label.engine.autolabel.stages import WorkerLost, predict_with_retries
from possam_label.predictors import build_predictor
from possam_label.types import PanopticPrediction
from possam_label.vocab import load_vocabulary

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "possam_tiny.yaml")
PHOTOS = REPO / "tests" / "data" / "autolabel" / "photos"
POISON = "poison.png"


def _spec(config_path: str = TINY) -> ModelSpec:
    # The test process's thread count: the child's numbers must match an in-process predictor's.
    return ModelSpec(
        model="possam", config_path=config_path, checkpoint=None, config_overrides=None,
        vocabulary=load_vocabulary("cat,dog,grass [stuff]").to_dict(), device="cpu", batch_size=4, torch_threads=torch.get_num_threads(),
    )


def _images() -> list[np.ndarray]:
    dog = np.asarray(Image.open(PHOTOS / "dog.jpg").convert("RGB").resize((160, 112)))
    truck = np.asarray(Image.open(PHOTOS / "truck.jpg").convert("RGB").resize((96, 64)))
    return [dog, truck]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def model_process() -> Iterator[ModelProcess]:
    """A started child whose environment holds the kill hook for POISON (read when it starts)."""
    saved = os.environ.get(TEST_KILL_ON_ENV)
    os.environ[TEST_KILL_ON_ENV] = POISON
    process = ModelProcess(_spec())
    try:
        process.start()
    finally:
        if saved is None:
            del os.environ[TEST_KILL_ON_ENV]
        else:
            os.environ[TEST_KILL_ON_ENV] = saved
    yield process
    process.close()


@pytest.mark.timeout(300)
def test_predictions_equal_the_in_process_predictor(model_process: ModelProcess) -> None:
    images = _images()
    torch.manual_seed(0)  # as the child does before building: the tiny model's weights are random
    local = build_predictor("possam", TINY, device="cpu")
    vocabulary = load_vocabulary("cat,dog,grass [stuff]")
    expected = local.predict(images, vocabulary=vocabulary, batch_size=4)
    got = model_process.predict(["dog.jpg", "truck.jpg"], images)
    assert len(got) == 2
    for mine, theirs, image in zip(got, expected, images):
        assert mine.panoptic_map.shape == image.shape[:2]
        assert np.array_equal(mine.panoptic_map, theirs.panoptic_map)
        assert mine.segments == theirs.segments
    assert model_process.info is not None and model_process.info.weights == local.weights_identity()


@pytest.mark.timeout(300)
def test_a_killed_child_raises_and_a_new_one_works(model_process: ModelProcess) -> None:
    images = _images()
    first = model_process.pid
    assert first is not None and _alive(first)
    with pytest.raises(ModelProcessDied) as died:
        model_process.predict(["dog.jpg", POISON], images)
    assert (died.value.pid, died.value.exitcode) == (first, TEST_KILL_EXIT_CODE)
    assert model_process.pid is None and not _alive(first)
    info = model_process.start()
    assert info.pid == model_process.pid != first
    got = model_process.predict(["dog.jpg"], images[:1])
    assert isinstance(got[0], PanopticPrediction) and got[0].panoptic_map.shape == images[0].shape[:2]


@pytest.mark.timeout(300)
def test_a_hung_child_is_killed_at_its_deadline_and_a_new_one_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_HANG_ON_ENV, "hang.png")  # read by the child when it starts
    process = ModelProcess(_spec(), image_timeout_s=10.0)
    try:
        first = process.start().pid
        images = _images()
        started = time.monotonic()
        with pytest.raises(ModelProcessDied, match="did not answer a request of 2 image") as died:
            process.predict(["dog.jpg", "hang.png"], images)
        waited = time.monotonic() - started
        assert died.value.hung and died.value.pid == first
        assert 20.0 <= waited < 60.0  # 10 s per image, then killed
        assert process.pid is None and _wait_gone(first, 10)
        second = process.start().pid
        assert second != first
        got = process.predict(["dog.jpg"], images[:1])
        assert isinstance(got[0], PanopticPrediction)
    finally:
        process.close()


@pytest.mark.timeout(120)
def test_a_model_that_cannot_be_built_fails_start_clearly() -> None:
    missing = str(REPO / "configs" / "no_such_config.yaml")
    process = ModelProcess(_spec(missing), start_timeout_s=100)
    start = time.monotonic()
    with pytest.raises(ModelProcessError, match="no_such_config.yaml"):
        process.start()
    assert time.monotonic() - start < 100
    assert process.pid is None


HELPER = """
import sys
import torch
from possam_label.engine.autolabel.model_process import ModelProcess, ModelSpec
from possam_label.vocab import load_vocabulary
spec = ModelSpec("possam", sys.argv[1], None, None, load_vocabulary("cat,dog").to_dict(), "cpu", 2, 1)
process = ModelProcess(spec)
process.start()
print(process.pid, flush=True)
sys.stdin.read()  # until the test kills this helper
"""


def _children(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children() if "spawn_main" in " ".join(p.cmdline())]


@pytest.mark.timeout(300)
def test_the_child_dies_with_its_parent(process_reaper) -> None:
    # 1. A ready child (waiting on the pipe).
    helper = subprocess.Popen([sys.executable, "-c", HELPER, TINY], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child = int(helper.stdout.readline())
        assert _alive(child) and [p.pid for p in _children(helper.pid)] == [child]
        os.kill(helper.pid, signal.SIGKILL)
        helper.wait()
        assert _wait_gone(child, timeout=5), "the model process outlived its SIGKILLed parent"

        # 2. A child still building its model (not reading the pipe): killed with its parent by
        # PR_SET_PDEATHSIG, long before the build (several seconds here) could notice the pipe.
        helper = subprocess.Popen([sys.executable, "-c", HELPER, TINY], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not _children(helper.pid):
            assert time.monotonic() < deadline and helper.poll() is None, "no model process appeared"
            time.sleep(0.02)
        building = _children(helper.pid)[0].pid
        time.sleep(1.0)  # past the child's start-up code
        os.kill(helper.pid, signal.SIGKILL)
        helper.wait()
        killed_at = time.monotonic()
        assert _wait_gone(building, timeout=5), "the building model process outlived its SIGKILLed parent"
        assert time.monotonic() - killed_at < 5
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        process_reaper.kill_all()


def test_predict_isolated_fails_only_the_culprit(monkeypatch: pytest.MonkeyPatch) -> None:
    """One image that makes the model raise fails alone (the child's per-image isolation)."""
    torch.manual_seed(0)
    predictor = build_predictor("possam", TINY, device="cpu")
    real_predict = predictor.predict

    def predict(images, vocabulary=None, batch_size=8):
        if any(image.shape[1] == 77 for image in images):
            raise RuntimeError("poisoned image")
        return real_predict(images, vocabulary=vocabulary, batch_size=batch_size)

    monkeypatch.setattr(predictor, "predict", predict)
    base = _images()[1]
    results = predict_isolated(predictor, load_vocabulary("cat,dog"), [base, np.ascontiguousarray(base[:, :77]), base[::-1].copy()], 4)
    assert isinstance(results[1], PredictionFailed) and str(results[1]) == "RuntimeError: poisoned image"
    assert [r.panoptic_map.shape for r in (results[0], results[2])] == [(64, 96), (64, 96)]
    assert isinstance(predict_isolated(predictor, load_vocabulary("cat,dog"), [base[:, :77]], 4)[0], PredictionFailed)


class StandInModelProcess:
    """A ModelProcess without a child: "dies" on every request holding a poisoned name, and
    counts starts and the images it answered, to check the retry budget exactly."""

    def __init__(self, poisoned: set[str]) -> None:
        self.poisoned = poisoned
        self.pid = 0
        self.alive = False
        self.starts = 0
        self.answered: list[str] = []

    def start(self) -> ModelInfo:
        if not self.alive:
            self.pid, self.alive, self.starts = self.pid + 1, True, self.starts + 1
        return ModelInfo(self.pid, {}, 1, 0.0)

    def predict(self, names: list[str], images: list[np.ndarray]) -> list[str]:
        if self.poisoned & set(names):
            self.alive = False
            raise ModelProcessDied(self.pid, TEST_KILL_EXIT_CODE, "a request")
        self.answered.extend(names)
        return [f"prediction of {name}" for name in names]


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_retry_budget_and_bisection(retries: int) -> None:
    names = [f"img{i}" for i in range(6)]
    model = StandInModelProcess({"img2"})
    results = predict_with_retries(model, names, [np.zeros((1, 1, 3), np.uint8)] * 6, retries)  # type: ignore[arg-type]
    assert [r for r, _ in results[:2] + results[3:]] == [f"prediction of {n}" for n in names if n != "img2"]
    lost, pid = results[2]
    assert isinstance(lost, WorkerLost) and str(lost).startswith(f"worker_lost: the model worker process died (or hung) on this image alone {retries + 1} time(s)")
    assert sorted(model.answered) == sorted(n for n in names if n != "img2")  # exactly once each
    # Groups holding img2: [0..5], [0..2], [2] (halves of 6 then 3, the first half rounded up)
    # each die 1 + retries times, and every death is followed by a start (the next attempt, or
    # the next group, needs a process).
    deaths = 3 * (1 + retries)
    assert pid == deaths and model.starts == deaths + 1  # the stand-in's pids count its starts
    # A batch without a poisoned image is answered by the first process, once.
    clean = StandInModelProcess(set())
    assert [pid for _, pid in predict_with_retries(clean, ["a", "b"], [np.zeros((1, 1, 3), np.uint8)] * 2, retries)] == [1, 1]  # type: ignore[arg-type]
    assert clean.starts == 1
