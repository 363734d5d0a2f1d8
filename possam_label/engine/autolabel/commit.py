"""The driver's side of the auto-labeling job: counting results and committing them, part by part.

:class:`PartCommitter` writes each part's files itself (``--writes driver``: results carry PNG bytes
and segment rows); :class:`StagedCommitter` renames what the workers staged (``--writes workers``:
results carry staging tokens). Either way a part's ``images`` file is written last, so a part
without it does not exist (:class:`~possam_label.io.output_store.OutputStore`).
"""

from __future__ import annotations

import abc
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa

from ...io.output_store import OutputStore, check_staged_token, new_part_prefix
from ...io.tables import (
    SEGMENTS_SCHEMA,
    STATUS_ERROR,
    STATUS_OK,
    images_table,
    table_from_ipc,
)
from .options import AutolabelOptions
from .run_record import RunRecord

logger = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    """Counts and wall-clock (``time.time``) stamps of one pipeline execution."""

    processed: int = 0
    identities: set[str] = field(default_factory=set)
    submitted_at: float = 0.0  # wall clock, to compare with the actors' stamps
    first_model_ready_at: Optional[float] = None
    first_result_at: Optional[float] = None
    last_commit_at: Optional[float] = None
    max_result_lag: float = 0.0  # longest model-output -> driver delay seen
    model_seconds: float = 0.0  # summed over actors: time inside the model's predict
    counts: Counter = field(default_factory=Counter)  # ok, error, segments
    reasons: Counter = field(default_factory=Counter)  # error reason -> images
    # CPU seconds of the driver process (all its threads: Ray's included) and of its main thread
    # (taking results and committing them) from the first result handled to the end of the
    # commits, over ``measured_images`` images received in that window: the steady per-image
    # cost, without planning the pipeline and starting the actors.
    driver_cpu_seconds: float = 0.0
    loop_cpu_seconds: float = 0.0
    measured_images: int = 0
    measured_seconds: float = 0.0  # wall length of that window

    def images_per_second(self) -> float:
        if not self.processed or self.last_commit_at is None:
            return 0.0
        return self.processed / max(1e-9, self.last_commit_at - self.submitted_at)

    def steady_images_per_second(self) -> float:
        """Images over the time from the first model actor being ready to the last commit."""
        if self.first_model_ready_at is None or self.last_commit_at is None:
            return self.images_per_second()
        return self.processed / max(1e-9, self.last_commit_at - max(self.first_model_ready_at, self.submitted_at))

    def startup_seconds(self) -> float:
        if self.first_model_ready_at is None:
            return 0.0
        return max(0.0, self.first_model_ready_at - self.submitted_at)

    def see_batch(self, batch: dict[str, Any]) -> None:
        """Stamps of a batch arriving at the driver."""
        now = time.time()
        if self.first_result_at is None:
            self.first_result_at = now
        ready = float(np.min(batch["model_ready_at"]))
        self.first_model_ready_at = ready if self.first_model_ready_at is None else min(self.first_model_ready_at, ready)
        self.max_result_lag = max(self.max_result_lag, now - float(np.min(batch["model_done_at"])))


class ResultCommitter(abc.ABC):
    """The driver's side of the commit protocol, common part: accounting for committed results
    (counts, error reasons, model identities, progress bar) and the part names of this attempt.

    Subclasses decide what a result carries and when a part is committed; :meth:`add` takes one
    result row (a dict of :func:`iter_rows`), :meth:`commit_if_due` and :meth:`commit` commit
    what is ready, :meth:`close` ends.
    """

    def __init__(self, store: OutputStore, record: RunRecord, stats: PipelineStats, options: AutolabelOptions, total: int) -> None:
        self.store = store
        self.record = record
        self.stats = stats
        self.rows_per_part = options.rows_per_part
        self.commit_interval_s = options.commit_interval_s
        self.prefix = new_part_prefix()
        self.part_index = 0
        self.seen: set[int] = set()  # images committed (or, driver writes: buffered) by this attempt
        self.progress = None
        if options.show_progress:
            from tqdm import tqdm

            self.progress = tqdm(total=total, unit="img", desc="autolabel", dynamic_ncols=True, smoothing=0.1)

    def next_part_id(self) -> str:
        part_id = f"{self.prefix}-{self.part_index:06d}"
        self.part_index += 1
        return part_id

    def account(self, row: dict[str, Any], ok: bool, num_segments: int) -> None:
        """Count one image's result (once per image: the caller dropped repeats)."""
        stats = self.stats
        stats.model_seconds += float(row["model_seconds"])
        identity = str(row["model_identity"])
        if identity and identity not in stats.identities:
            stats.identities.add(identity)
            self.record.check_weights(identity)
        if ok:
            stats.counts["segments"] += num_segments
        else:
            stats.reasons[str(row["error"]).split(":", 1)[0]] += 1
            logger.warning("%s: %s", row["file_path"], row["error"])
        stats.counts["ok" if ok else "error"] += 1
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(ok=stats.counts["ok"], errors=stats.counts["error"], segments=stats.counts["segments"], refresh=False)

    def committed(self, images: int) -> None:
        """Stamp a committed part of ``images`` images."""
        self.stats.processed += images
        self.stats.last_commit_at = time.time()

    @abc.abstractmethod
    def add(self, row: dict[str, Any]) -> None:
        """Take one result row."""

    def commit_if_due(self) -> None:
        """Commit what a time limit says is due (nothing by default)."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Commit everything still held (the end of the stream)."""

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


class PartCommitter(ResultCommitter):
    """Driver writes: finished images buffered, then committed as one part (PNGs, then the
    segments part, then the images part) every ``rows_per_part`` images or ``commit_interval_s``
    seconds."""

    def __init__(self, store: OutputStore, record: RunRecord, stats: PipelineStats, options: AutolabelOptions, total: int) -> None:
        super().__init__(store, record, stats, options, total)
        self.images: list[dict[str, Any]] = []
        self.segments: list[pa.Table] = []
        self.pngs: list[tuple[int, bytes]] = []
        self.last_commit = time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        """Buffer one image's result (a repeated result of a retried Ray task is dropped)."""
        image_id = int(row["image_id"])
        if image_id in self.seen:
            logger.warning("dropping a repeated result for %s (Ray retried its task)", row["file_path"])
            return
        self.seen.add(image_id)
        ok = row["status"] == STATUS_OK
        num_segments = 0
        if ok:
            self.pngs.append((image_id, bytes(row["png"])))
            segments = table_from_ipc(bytes(row["segments"]))
            self.segments.append(segments)
            num_segments = segments.num_rows
        self.account(row, ok, num_segments)
        self.images.append(image_row(row, ok, self.record.run_id))
        if len(self.images) >= self.rows_per_part:
            self.commit()

    def commit_if_due(self) -> None:
        if self.images and time.monotonic() - self.last_commit >= self.commit_interval_s:
            self.commit()

    def commit(self) -> None:
        """Commit the buffered images as one part (nothing when the buffer is empty)."""
        if not self.images:
            return
        for image_id, png in self.pngs:
            self.store.write_png(image_id, png)
        segments = segments_part_table(self.segments)
        self.store.commit_part(self.next_part_id(), images_table(self.images), segments)
        self.committed(len(self.images))
        self.images, self.segments, self.pngs = [], [], []
        self.last_commit = time.monotonic()


class StagedCommitter(ResultCommitter):
    """Workers write: each result row names the staged batch (``staged`` token, ``staged_rows``
    rows) whose files an encode task already wrote; once every row of a batch has arrived, the
    batch is committed as one part (:meth:`OutputStore.commit_staged`: rename its PNGs and its
    segments file into place, then write the images part). The driver reads no PNG and no
    segment row.

    Exactly once: Ray may run a batch's tasks again, which stages the same images a second time
    under another token. A batch whose images are all committed already is discarded (its
    staged files deleted); one that overlaps committed images only in part (a re-run whose
    batches were cut differently) is committed for its other images alone. Staged files of
    batches whose rows never came back are removed by :meth:`close` and by resume.
    """

    def __init__(self, store: OutputStore, record: RunRecord, stats: PipelineStats, options: AutolabelOptions, total: int) -> None:
        super().__init__(store, record, stats, options, total)
        self.batches: dict[str, list[dict[str, Any]]] = {}  # token -> rows arrived so far

    def add(self, row: dict[str, Any]) -> None:
        token = check_staged_token(str(row["staged"]))
        rows = self.batches.setdefault(token, [])
        rows.append(row)
        if len(rows) >= int(row["staged_rows"]):
            self.commit_batch(token, complete=True)

    def commit_batch(self, token: str, complete: bool) -> None:
        """Commit the arrived rows of batch ``token`` that are not committed yet as one part;
        ``complete``: every row of the batch arrived (else only those that did are committed)."""
        rows = self.batches.pop(token)
        fresh = [row for row in rows if int(row["image_id"]) not in self.seen]
        ok_ids = [int(row["image_id"]) for row in rows if row["status"] == STATUS_OK]
        if not fresh:
            logger.warning("dropping a repeated batch of %d result(s) (Ray ran its task again)", len(rows))
            self.store.discard_staged(token, ok_ids)
            return
        images = [image_row(row, row["status"] == STATUS_OK, self.record.run_id) for row in fresh]
        subset = len(fresh) < len(rows) or not complete
        if subset:
            logger.warning("committing %d of the %d result(s) of a staged batch (the others are committed already or missing)", len(fresh), len(rows))
        self.store.commit_staged(self.next_part_id(), token, images_table(images), subset=subset)
        if subset:
            self.store.discard_staged(token, ok_ids)  # the staged PNGs of the images left out
        for row in fresh:
            self.seen.add(int(row["image_id"]))
            self.account(row, row["status"] == STATUS_OK, int(row["num_segments"]))
        self.committed(len(fresh))

    def commit(self) -> None:
        """At the end of the stream: commit the rows of batches that arrived in part (should not
        happen: a task's rows come back together), then sweep staged files no commit took."""
        for token in list(self.batches):
            self.commit_batch(token, complete=False)
        removed = self.store.remove_staged()
        if removed:
            logger.info("removed %d staged file(s) of batches that Ray ran again or that never came back", removed)


def segments_part_table(tables: list[pa.Table]) -> pa.Table:
    """The segments tables of a part's images as one table (one chunk per column)."""
    if not tables:
        return SEGMENTS_SCHEMA.empty_table()
    return pa.concat_tables(tables).combine_chunks()


def image_row(row: dict[str, Any], ok: bool, run_id: str) -> dict[str, Any]:
    """The ``images`` table row of one result."""
    image_id = int(row["image_id"])
    return {
        "image_id": image_id,
        "file_path": str(row["file_path"]),
        "width": int(row["width"]) if ok or int(row["width"]) > 0 else None,
        "height": int(row["height"]) if ok or int(row["height"]) > 0 else None,
        "status": STATUS_OK if ok else STATUS_ERROR,
        "error": None if ok else str(row["error"]),
        "num_segments": int(row["num_segments"]),
        "seconds": float(row["seconds"]),
        "panoptic_file": f"panoptic/{image_id}.png" if ok else None,
        "run_id": run_id,
    }


def iter_rows(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The rows of a numpy batch with Python scalars."""
    names = list(batch)
    columns = {name: list(batch[name]) for name in names}
    for i in range(len(columns[names[0]])):
        yield {name: value.item() if isinstance(value, np.generic) else value for name, value in ((n, columns[n][i]) for n in names)}


# ------------------------------------------------------------------------------------ the end
def committed_counts(store: OutputStore) -> tuple[int, int]:
    """(ok, error) images over every committed part."""
    ok = err = 0
    for _, images, _ in store.iter_committed(images_columns=["status"], segments_columns=["image_id"]):
        statuses = images["status"].to_pylist()
        ok += sum(1 for s in statuses if s == STATUS_OK)
        err += sum(1 for s in statuses if s != STATUS_OK)
    return ok, err
