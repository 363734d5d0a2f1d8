"""The model in a child process of its Ray actor, so that a crash on one image costs a restart of
that process, not the actor (and with it Ray Data's retry of the whole batch, forever).

:class:`ModelProcess` starts one long-lived child with the ``spawn`` start method (never ``fork``:
a Ray worker has threads, and CUDA cannot be used in a forked process). The child builds the
predictor once, then serves predict requests over a :func:`multiprocessing.Pipe`::

    parent -> child   (names, images): names = list of file base names (str), images = list of
                      (h, w, 3) uint8 RGB arrays, same length; None asks the child to exit
    child  -> parent  once at start: ("ready", ModelInfo fields as a dict) or ("failed", "Type: message")
                      per request: list, one entry per image, of PanopticPrediction (at the image's
                      size) or PredictionFailed (the model raised on that image alone)

The child is the only process that touches the model and the GPU; the parent (the Ray actor)
never imports CUDA. As with any ``spawn`` child, the parent's ``__main__`` module is imported again
in the child (Ray's worker script guards its entry point; a script of one's own must use
``if __name__ == "__main__":``, or the child dies at start: :class:`ModelProcessDied`). The child dies with its parent: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux,
and it exits when the pipe reaches end-of-file (its parent's end closed).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any, NoReturn, Optional, Sequence, Union

import numpy as np

from ...types import PanopticPrediction

logger = logging.getLogger(__name__)

# Test fault injection: the model process exits at once (os._exit(17), as a native crash or the
# OS killing it would) whenever a request holds a file with this base name
# (tests/test_autolabel_worker_lost.py, tests/test_model_process.py). The variable reaches the
# child through the environment: a local Ray inherits the driver's, a spawned child its actor's.
TEST_KILL_ON_ENV = "POSSAM_TEST_KILL_ON"
TEST_KILL_EXIT_CODE = 17
# Test fault injection: the model process stops answering (sleeps) whenever a request holds a file
# with this base name, as a deadlocked kernel or a stuck driver call would.
TEST_HANG_ON_ENV = "POSSAM_TEST_HANG_ON"
# Building a model reads weight files (GBs for SAM ViT-H) and may compile kernels: generous.
DEFAULT_START_TIMEOUT_S = 1800.0
# A request may take this long per image before its model process counts as hung (killed, then
# retried and bisected like a crash). Generous: a 1024-px image through SAM ViT-H on a slow CPU
# takes about a minute.
DEFAULT_IMAGE_TIMEOUT_S = 600.0
POLL_INTERVAL_S = 0.2
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ModelProcessError(RuntimeError):
    """The model process could not be started (the model failed to build, or start timed out)."""


class ModelProcessDied(RuntimeError):
    """The model process exited while it held a request (or while it started), or it held a
    request past its deadline and was killed as hung.

    Attributes:
        pid: the process that died.
        exitcode: its exit status (negative: killed by that signal; None if unknown).
        hung: it did not answer in time (and was killed), rather than exiting by itself.
    """

    def __init__(self, pid: Optional[int], exitcode: Optional[int], during: str, hung: bool = False) -> None:
        if hung:
            message = f"the model process (pid {pid}) did not answer {during} in time and was killed as hung"
        else:
            message = f"the model process (pid {pid}) died with exit code {exitcode} during {during}"
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.hung = hung


class PredictionFailed(Exception):
    """The model raised on one image (alone): its exception, by type name and message.

    Travels back from the child instead of the exception itself, which may not be picklable.
    ``str()`` is ``"TypeName: message"``.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


@dataclass(frozen=True)
class ModelSpec:
    """How the child builds its predictor (the arguments of ``build_predictor`` and around it).

    Attributes:
        model: a key of :data:`possam_label.predictors.PREDICTOR_REGISTRY`.
        config_path: the YAML config, as the child's filesystem sees it.
        checkpoint: weights overriding the config's (None: the config's).
        config_overrides: nested mapping merged over the YAML.
        vocabulary: ``Vocabulary.to_dict()`` of the labeling vocabulary.
        device: "cpu", "cuda", ...
        batch_size: images per forward pass.
        torch_threads: intra-op threads on CPU (None: torch's default).
    """

    model: str
    config_path: str
    checkpoint: Optional[str]
    config_overrides: Optional[dict[str, Any]]
    vocabulary: dict[str, Any]
    device: str
    batch_size: int
    torch_threads: Optional[int]


@dataclass(frozen=True)
class ModelInfo:
    """What a started child reports: its pid, the sha256 of its weight files
    (``Predictor.weights_identity()``), its torch threads and the seconds it took to build."""

    pid: int
    weights: dict[str, Optional[str]]
    torch_threads: int
    build_seconds: float


Result = Union[PanopticPrediction, PredictionFailed]


# --------------------------------------------------------------------------------- the child
def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), so that a killed actor
    leaves no orphan holding the model's memory. The signal is tied to the parent *thread* that
    started the child; a Ray actor runs its calls on one thread for its lifetime."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): relying on the pipe's end-of-file", ctypes.get_errno())
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(0)


def predict_isolated(predictor: Any, vocabulary: Any, images: list[np.ndarray], batch_size: int) -> list[Result]:
    """Predict a batch; if the batch raises, image by image so only the culprit fails.

    Returns one entry per image: its :class:`PanopticPrediction`, or :class:`PredictionFailed`
    with the exception the model raised on it alone.
    """
    try:
        return list(predictor.predict(images, vocabulary=vocabulary, batch_size=batch_size))
    except Exception as batch_exc:
        if predictor.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()  # an out-of-memory batch may fit image by image
        if len(images) == 1:
            return [PredictionFailed(type(batch_exc).__name__, str(batch_exc))]
        logger.warning("batch of %d failed (%s); retrying image by image", len(images), batch_exc)
    results: list[Result] = []
    for image in images:
        try:
            results.append(predictor.predict([image], vocabulary=vocabulary, batch_size=1)[0])
        except Exception as exc:
            results.append(PredictionFailed(type(exc).__name__, str(exc)))
    return results


def build_for_child(spec: ModelSpec) -> tuple[Any, Any, ModelInfo]:
    """(predictor, vocabulary, info) built as the model actor always did: torch threads set, and
    seed 0 so parts without weight files (tests, speed runs) are the same in every process."""
    import torch

    from ...predictors import build_predictor
    from ...vocab import Vocabulary

    start = time.perf_counter()
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    torch.manual_seed(0)
    predictor = build_predictor(
        spec.model, spec.config_path, checkpoint=spec.checkpoint, device=spec.device, overrides=spec.config_overrides or None,
    )
    info = ModelInfo(os.getpid(), predictor.weights_identity(), torch.get_num_threads(), time.perf_counter() - start)
    return predictor, Vocabulary.from_dict(spec.vocabulary), info


def serve(conn: Connection, spec: ModelSpec, parent_pid: int) -> None:
    """The child's main function: build the predictor, report, then answer requests until told to
    exit or the parent's end of the pipe closes."""
    die_with_parent(parent_pid)
    try:
        predictor, vocabulary, info = build_for_child(spec)
    except Exception as exc:
        logger.exception("building the %s model failed", spec.model)
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", asdict(info)))
    kill_on, hang_on = os.environ.get(TEST_KILL_ON_ENV), os.environ.get(TEST_HANG_ON_ENV)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        names, images = request
        if kill_on and kill_on in names:
            os._exit(TEST_KILL_EXIT_CODE)  # test fault injection (TEST_KILL_ON_ENV)
        if hang_on and hang_on in names:
            while True:  # test fault injection (TEST_HANG_ON_ENV): never answer
                time.sleep(60)
        conn.send(predict_isolated(predictor, vocabulary, images, spec.batch_size))


# -------------------------------------------------------------------------------- the parent
class ModelProcess:
    """The parent's handle on one model child process; :meth:`start` again after a death.

    Args:
        spec: how the child builds its predictor.
        start_timeout_s: how long building the model may take before :meth:`start` gives up.
        image_timeout_s: how long a request may take per image before the child counts as hung
            (None: no limit).
    """

    def __init__(
        self, spec: ModelSpec, start_timeout_s: float = DEFAULT_START_TIMEOUT_S, image_timeout_s: Optional[float] = DEFAULT_IMAGE_TIMEOUT_S,
    ) -> None:
        self.spec = spec
        self.start_timeout_s = start_timeout_s
        self.image_timeout_s = image_timeout_s
        self.process: Optional[multiprocessing.process.BaseProcess] = None
        self.conn: Optional[Connection] = None
        self.info: Optional[ModelInfo] = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def pid(self) -> Optional[int]:
        """The current child's pid (None before start and after a death)."""
        return self.process.pid if self.process is not None else None

    def start(self) -> ModelInfo:
        """Start a child and wait until its model is built (no-op while one runs).

        Raises:
            ModelProcessError: the model failed to build (the message carries the child's
                exception), or building took longer than ``start_timeout_s``.
            ModelProcessDied: the child exited while building.
        """
        if self.running and self.info is not None:
            return self.info
        self.discard()
        context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe(duplex=True)
        process = context.Process(target=serve, args=(child_conn, self.spec, os.getpid()), name="possam-model", daemon=True)
        process.start()
        child_conn.close()  # the child holds the only other end: its death reads as end-of-file here
        self.process, self.conn = process, parent_conn
        kind, payload = self.receive("start", deadline=time.monotonic() + self.start_timeout_s)
        if kind == "failed":
            self.discard()
            raise ModelProcessError(f"building the {self.spec.model} model (config {self.spec.config_path}) failed in the model process: {payload}")
        self.info = ModelInfo(**payload)
        logger.info("model process %d ready in %.1fs (%s)", self.info.pid, self.info.build_seconds, self.spec.device)
        return self.info

    def predict(self, names: Sequence[str], images: Sequence[np.ndarray]) -> list[Result]:
        """Predict ``images`` (each (h, w, 3) uint8 RGB; ``names`` their file base names, for the
        test hook and logs) in the child.

        Returns:
            one entry per image: a :class:`PanopticPrediction` at the image's size, or
            :class:`PredictionFailed` when the model raised on that image alone.
        Raises:
            ModelProcessDied: the child exited before answering, or did not answer within
                ``image_timeout_s`` per image and was killed (``hung``); it is not restarted here.
        """
        if self.conn is None:
            raise ModelProcessError("the model process is not started")
        try:
            self.conn.send((list(names), list(images)))
        except OSError:  # BrokenPipeError, ConnectionResetError: the child is gone
            self.died("a request")
        timeout = None if self.image_timeout_s is None else self.image_timeout_s * len(images)
        during = f"a request of {len(images)} image(s)"
        results = self.receive(during, deadline=None if timeout is None else time.monotonic() + timeout, hung_after=timeout)
        if len(results) != len(images):
            raise ModelProcessError(f"the model process answered {len(results)} results for {len(images)} images")
        return results

    def receive(self, during: str, deadline: Optional[float], hung_after: Optional[float] = None) -> Any:
        """The child's next message; polls so that a child that dies without closing the pipe
        (a zombie held by a grandchild) is noticed too. Raises ModelProcessDied; past
        ``deadline`` (``time.monotonic``) the child is killed and the error is ModelProcessDied
        (``hung``) when ``hung_after`` (the seconds allowed) is given, else ModelProcessError."""
        assert self.conn is not None and self.process is not None
        while not self.conn.poll(POLL_INTERVAL_S):
            if not self.process.is_alive():
                self.died(during)
            if deadline is not None and time.monotonic() > deadline:
                pid = self.pid
                self.discard()
                if hung_after is not None:
                    raise ModelProcessDied(pid, None, f"{during} ({hung_after:.0f}s)", hung=True)
                raise ModelProcessError(f"the model process did not finish {during} in {self.start_timeout_s:.0f}s")
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.died(during)

    def died(self, during: str) -> NoReturn:
        """Reap the dead child and raise ModelProcessDied."""
        pid = self.pid
        exitcode = None
        if self.process is not None:
            self.process.join(timeout=5.0)
            exitcode = self.process.exitcode
        self.discard()
        raise ModelProcessDied(pid, exitcode, during)

    def discard(self) -> None:
        """Forget the current child, killing it if it still runs (no graceful exit)."""
        if self.conn is not None:
            self.conn.close()
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5.0)
        self.process, self.conn, self.info = None, None, None

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask the child to exit and wait for it (killed after ``timeout_s``)."""
        if self.conn is not None and self.running:
            try:
                self.conn.send(None)
            except OSError:
                pass
            assert self.process is not None
            self.process.join(timeout=timeout_s)
        self.discard()
