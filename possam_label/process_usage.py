"""What a piece of work costs this process and its descendants (workers, a private ``mongod``):
wall seconds, CPU seconds and peak resident memory.

On a machine shared with other jobs the CPU seconds are the figure that compares between runs;
the benchmarks (``pipelines/benchmark*.py``) report both. Uses ``psutil`` (imported on use).
"""

from __future__ import annotations

import threading
import time
from typing import Any


def process_tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its descendants, live or reaped."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me] + me.children(recursive=True):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class PeakTreeRss:
    """Samples the summed resident set of this process and its descendants in a thread."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me] + me.children(recursive=True):
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakTreeRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


class Stopwatch:
    """Wall seconds and process-tree CPU seconds of a ``with`` block (``seconds``, ``cpu_seconds``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def __enter__(self) -> "Stopwatch":
        self._cpu_start = process_tree_cpu_seconds()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = process_tree_cpu_seconds() - self._cpu_start
