"""Shared pytest fixtures.

- ``repo_root``, ``tiny_config``: paths.
- ``autolabel_inputs``: ``tests/data/autolabel`` (real photos plus broken and unusual files).
- ``autolabel_run``: one auto-labeling run of the tiny random-weight model over
  ``autolabel_inputs`` (local Ray, 2 CPUs), made once per session (shared by pytest-xdist
  workers); returns the output directory.
  Read-only for tests: copy it before changing anything.
- ``fiftyone_db``: FiftyOne pointed at this test process's own mongod (or :func:`unavailable`).
- ``coco_autolabel_output(**options)``: writes an autolabel output whose masks are the COCO-panoptic
  ground truth of ``tests/data/coco_panoptic_sample`` (options of
  ``possam_label.fiftyone.testing.write_coco_autolabel_output``: seed, error_images,
  images_per_part) into a new temporary directory; returns it.
- ``process_reaper``: kills, by pid, every process a test started (directly or through daemons
  such as ``ray start``), including orphans re-parented to the test process.
- ``unavailable(reason)``, ``import_or_unavailable(module)``, ``private_fiftyone_database()``,
  ``fresh_dataset_name(name)`` (``from conftest import ...``): how a test says that something the README installs is missing
  (mongod, Chromium, a shipped weight file, an extra's package): a skip on a developer's machine,
  a failure under ``CI=true``, so that CI cannot pass by skipping. Under ``CI=true`` any other
  skip fails too.
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib
import os
import shutil
import signal
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, NoReturn

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "possam_tiny.yaml"
AUTOLABEL_INPUTS = REPO_ROOT / "tests" / "data" / "autolabel"
COCO_PANOPTIC_SAMPLE = REPO_ROOT / "tests" / "data" / "coco_panoptic_sample"


def under_ci() -> bool:
    """``CI=true`` (set by CI services and by ``.ci/run``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> NoReturn:
    """Stop a test that lacks something the README installs: a skip, a failure under CI=true."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: a missing requirement fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def import_or_unavailable(module: str, hint: str = "pip install -e '.[dev,fiftyone]'") -> ModuleType:
    """``pytest.importorskip`` through :func:`unavailable`."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        reason = f"{module} not importable ({err}): {hint}"
    unavailable(reason)


def private_fiftyone_database() -> Any:
    """Point FiftyOne at this process's own mongod (``use_private_database``), or :func:`unavailable`."""
    from possam_label.fiftyone.testing import use_private_database

    try:
        return use_private_database()
    except (FileNotFoundError, RuntimeError) as err:
        reason = f"no runnable mongod for FiftyOne: {err}"
    unavailable(reason)


def fresh_dataset_name(name: str) -> str:
    """``name``, after deleting the FiftyOne dataset of that name left by an earlier run."""
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    return name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI=true a skip from anywhere else (a ``skipif``, a library's importorskip) fails too."""
    outcome = yield
    report = outcome.get_result()
    if under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same for a whole module skipped while it is collected."""
    outcome = yield
    report = outcome.get_result()
    if under_ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {report.longrepr}"


# Test modules whose every test starts Ray or needs a run that did (a local instance, a two-node
# cluster, Ray Train, the installed job); elsewhere such a test carries the ``ray`` marker itself.
# ``-m "not ray"`` leaves them out. Under ``pytest -n auto --dist loadfile`` (one module per worker
# at a time, so a module-scoped fixture is built once) they run side by side with the rest,
# so two local Ray instances may start at once: each binds its own ports and temp dir, and on a
# machine that is not oversubscribed both meet Ray's fixed 30 s raylet registration deadline (an
# xdist group running them one after another made the suite's critical path ~860 s instead of
# ~740 s on the 2-core machine).
RAY_TEST_MODULES = frozenset({
    "test_autolabel", "test_autolabel_cluster", "test_autolabel_resume", "test_autolabel_worker_lost",
    "test_evaluate_matching", "test_fiftyone_autolabel_run", "test_install", "test_tools_reports",
})


# The longest modules (minutes each on the 2-core machine), started first: ``--dist loadfile``
# hands out modules in collection order, so a long module collected last would run alone at the
# end while the other worker idles. The rest keep their (alphabetical) order.
LONG_MODULES_FIRST = (
    "test_browser_app", "test_train", "test_train_sources", "test_benchmark_and_precision", "test_bootstrap",
    "test_model_e2e", "test_autolabel_cluster", "test_autolabel_resume", "test_small_sam_prompts",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in RAY_TEST_MODULES:
            item.add_marker(pytest.mark.ray)
    rank = {name: i for i, name in enumerate(LONG_MODULES_FIRST)}
    # A stable sort: tests keep their order inside a module.
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, the workers share the machine's cores: each gets its share of threads
    (torch here, OpenMP in the processes a test starts), so two PyTorch tests side by side do not
    run four spinning threads on two cores."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None:
        return
    threads = max(1, (os.cpu_count() or 1) // int(workers))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    return TINY_CONFIG


@pytest.fixture(scope="session")
def autolabel_inputs() -> Path:
    return AUTOLABEL_INPUTS


@pytest.fixture(scope="module")
def fiftyone_db() -> Any:
    """The private database of the FiftyOne tests (one mongod per test process, stopped at exit)."""
    return private_fiftyone_database()


@pytest.fixture(scope="session")
def coco_autolabel_output(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``coco_autolabel_output(seed=..., error_images=..., images_per_part=...)`` -> a new output
    directory with COCO-panoptic ground-truth masks and seeded made-up scores."""

    def write(**options: Any) -> Path:
        from possam_label.fiftyone.testing import write_coco_autolabel_output

        out = tmp_path_factory.mktemp("autolabel") / "out"
        write_coco_autolabel_output(out, COCO_PANOPTIC_SAMPLE, **options)
        return out

    return write


def _make_autolabel_run(out: Path) -> None:
    from possam_label.engine.autolabel import AutolabelOptions, run_autolabel

    run_autolabel(
        AutolabelOptions(
            dataset=str(AUTOLABEL_INPUTS),
            out_dir=str(out),
            config=str(TINY_CONFIG),
            batch_size=2,
            num_cpus=2,
            rows_per_part=4,
            show_progress=False,
            durable=False,
        )
    )


@pytest.fixture(scope="session")
def autolabel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        out = tmp_path_factory.mktemp("autolabel") / "out"
        _make_autolabel_run(out)
        return out
    # Under pytest-xdist the workers share one run, made by the first worker that needs it
    # (getbasetemp().parent is this session's directory, common to its workers).
    shared = tmp_path_factory.getbasetemp().parent / "autolabel_run"
    shared.mkdir(exist_ok=True)
    out = shared / "out"
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "done").exists():
            shutil.rmtree(out, ignore_errors=True)
            _make_autolabel_run(out)
            (shared / "done").touch()
    return out


_PR_SET_CHILD_SUBREAPER = 36


class ProcessReaper:
    """Tracks and kills the processes a test starts.

    While active, the test process is a Linux child subreaper, so daemons started by a child
    (``ray start`` forks and exits) and orphans of killed processes become its descendants.
    :meth:`kill_all` SIGKILLs every descendant plus any process whose command line contains one
    of the registered markers (e.g. a unique ``--temp-dir``), never this process or its parents.
    """

    def __init__(self) -> None:
        self.markers: list[str] = []
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._preexisting: set[int] = set()

    def start(self) -> None:
        # Processes that were already running (e.g. a session-wide database) are not ours.
        self._preexisting = {p.pid for p in psutil.Process().children(recursive=True)}
        self._libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def add_marker(self, marker: str) -> None:
        self.markers.append(marker)

    def _targets(self) -> set[psutil.Process]:
        me = psutil.Process()
        protected = {me.pid} | {p.pid for p in me.parents()}
        targets = set(me.children(recursive=True))
        if self.markers:
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = proc.info.get("cmdline") or []
                if proc.pid not in protected and any(m in arg for m in self.markers for arg in cmdline):
                    targets.add(proc)
                    try:
                        targets.update(proc.children(recursive=True))
                    except psutil.NoSuchProcess:
                        pass
        return {p for p in targets if p.pid not in protected and p.pid not in self._preexisting}

    def kill_all(self) -> int:
        """SIGKILL every tracked process (repeated until none is left); returns how many."""
        killed = 0
        for _ in range(5):
            targets = self._targets()
            if not targets:
                break
            for proc in targets:
                try:
                    proc.send_signal(signal.SIGKILL)
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(list(targets), timeout=10)
        return killed

    def stop(self) -> None:
        self.kill_all()
        self._libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def process_reaper() -> Iterator[ProcessReaper]:
    reaper = ProcessReaper()
    reaper.start()
    try:
        yield reaper
    finally:
        reaper.stop()
