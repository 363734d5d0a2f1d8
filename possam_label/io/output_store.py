"""The auto-labeling output directory: its layout, lock, commit protocol, recovery and readers.

Layout of an output directory (see docs/outputs.md for every column)::

    DIR/
      run.json                    provenance; rewritten atomically at start and end
      images/part-<P>.parquet     one row per input image (status ok|error): the commit record
      segments/part-<P>.parquet   one row per segment of the images of part <P>
      panoptic/<image_id>.png     COCO-panoptic id PNG per ok image
      panoptic.json               COCO-panoptic JSON, assembled at the end of a run
      .lock                       held (flock) by the running job
      segments/.staged-<T>.segments, panoptic/.staged-<T>.<image_id>.png
                                  written by a worker for its batch <T> (``--writes workers``),
                                  renamed into place by the driver's commit; never read as data

Commit protocol (what makes a SIGKILL at any instant recoverable): a part is written as
PNGs first, then ``segments/part-P``, then ``images/part-P`` -- each file through a temporary
name and ``os.replace``. The images part is the commit record: an image counts as done iff its
row is in a committed images part. :meth:`OutputStore.recover` deletes temporary files, segment
parts without their images part, and PNGs of images that are not committed ok, so a resumed run
reprocesses exactly the images without a committed row.

With ``--writes workers`` the encode tasks write their batch's PNGs and segment rows under
staged names (:meth:`OutputStore.write_staged`, token ``T`` chosen by the task); the driver's
commit renames them into the same final names (:meth:`OutputStore.commit_staged`), then writes
the images part last, so the order on disk and the rule above are unchanged. Staged files that
no commit took (a batch re-run by Ray, a crash) are deleted at the end of the run and by
:meth:`OutputStore.recover`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic_files import TMP_PREFIX, atomic_write_bytes, fsync_directory, fsync_file
from .tables import IMAGES_SCHEMA, SEGMENTS_SCHEMA, STATUS_OK, write_parquet, write_parquet_atomic

logger = logging.getLogger(__name__)

_PART_RE = re.compile(r"^part-([0-9A-Za-z_-]+)\.parquet$")
STAGED_PREFIX = ".staged-"
# A staging token is chosen by a worker and travels back to the driver, which builds paths from
# it: only this shape is accepted, so a path built from it stays inside the output directory.
_STAGED_TOKEN_RE = re.compile(r"^[0-9a-f]{16,64}$")
_KNOWN_ENTRIES = {"run.json", "images", "segments", "panoptic", "panoptic.json", ".lock"}


class OutputDirError(RuntimeError):
    """An output directory that cannot be used as asked (not empty, locked, foreign files, ...)."""


def new_staged_token() -> str:
    """A fresh token naming one worker batch's staged files (unique per task attempt)."""
    return secrets.token_hex(12)


def check_staged_token(token: str) -> str:
    """``token`` when it has the shape of :func:`new_staged_token`; ValueError otherwise."""
    if not isinstance(token, str) or not _STAGED_TOKEN_RE.match(token):
        raise ValueError(f"bad staging token {token!r}")
    return token


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_part_prefix() -> str:
    """A unique, time-sortable prefix for the parts of one job attempt: ``YYYYmmddTHHMMSS-<hex>``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


class OutputStore:
    """One auto-labeling output directory: layout, locking, commit protocol and recovery.

    Args:
        out_dir: the directory (created when missing). Every path the store writes is inside it.
        durable: fsync files and directories on commit.
    """

    def __init__(self, out_dir: Union[str, Path], durable: bool = True) -> None:
        self.root = Path(os.path.abspath(os.fspath(out_dir)))
        self.durable = durable
        self.images_dir = self.root / "images"
        self.segments_dir = self.root / "segments"
        self.panoptic_dir = self.root / "panoptic"
        self.run_json = self.root / "run.json"
        self.panoptic_json = self.root / "panoptic.json"
        self._lock_fd: Optional[int] = None

    # ----------------------------------------------------------------------------- lifecycle
    def existing_entries(self) -> list[str]:
        """Names in the directory (empty list when it does not exist)."""
        if not self.root.exists():
            return []
        if not self.root.is_dir():
            raise OutputDirError(f"output path {self.root} exists and is not a directory")
        return sorted(os.listdir(self.root))

    def prepare(self, mode: str) -> None:
        """Get the directory ready for a run and take the lock.

        Args:
            mode: ``"new"`` (the directory must be missing or empty), ``"resume"`` (keep committed
                work, clean up the rest: :meth:`recover`) or ``"overwrite"`` (delete previous
                outputs; refuses when the directory holds anything an autolabel run does not write).

        Raises:
            OutputDirError: a non-empty directory without resume/overwrite, foreign files on
                overwrite, or another job holding the lock.
        """
        if mode not in ("new", "resume", "overwrite"):
            raise ValueError(f"mode must be new, resume or overwrite, got {mode!r}")
        entries = [e for e in self.existing_entries() if e != ".lock"]
        if mode == "new" and entries:
            raise OutputDirError(
                f"output directory {self.root} is not empty ({', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}); "
                "pass --resume to finish a previous run there, or --overwrite to delete its outputs and start again"
            )
        if mode == "overwrite" and entries:
            foreign = [e for e in entries if e not in _KNOWN_ENTRIES and not e.startswith(TMP_PREFIX)]
            if foreign:
                raise OutputDirError(
                    f"refusing to overwrite {self.root}: it holds files an autolabel run does not write "
                    f"({', '.join(foreign[:5])}); choose another --out or remove them yourself"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        if mode == "overwrite":
            for entry in entries:
                target = self.root / entry
                logger.info("overwrite: deleting %s", target)
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
        for directory in (self.images_dir, self.segments_dir, self.panoptic_dir):
            directory.mkdir(exist_ok=True)
        if mode == "resume":
            self.recover()

    def _acquire_lock(self) -> None:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputDirError(f"another autolabel job is writing to {self.root} (its .lock is held)") from exc
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def release(self) -> None:
        """Release the directory lock (also released by the OS when the process dies)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------------------- parts
    def committed_parts(self) -> list[str]:
        """Part ids P with a committed ``images/part-P.parquet``, sorted."""
        return sorted(m.group(1) for m in (_PART_RE.match(n) for n in _listdir(self.images_dir)) if m)

    def segment_parts(self) -> list[str]:
        return sorted(m.group(1) for m in (_PART_RE.match(n) for n in _listdir(self.segments_dir)) if m)

    def images_part_path(self, part_id: str) -> Path:
        return self.images_dir / f"part-{part_id}.parquet"

    def segments_part_path(self, part_id: str) -> Path:
        return self.segments_dir / f"part-{part_id}.parquet"

    def panoptic_png_path(self, image_id: int) -> Path:
        return self.panoptic_dir / f"{int(image_id)}.png"

    def write_png(self, image_id: int, png_bytes: bytes) -> str:
        """Write one panoptic PNG atomically; returns its path relative to the root."""
        path = self.panoptic_png_path(image_id)
        atomic_write_bytes(path, png_bytes, durable=self.durable)
        return f"panoptic/{path.name}"

    def commit_part(self, part_id: str, images: pa.Table, segments: pa.Table) -> None:
        """Write ``segments/part-P`` then ``images/part-P`` (the commit record), each atomically.

        PNGs of the part's ok images must already be written (:meth:`write_png`).
        """
        self._check_part(part_id, images)
        if segments.schema.remove_metadata() != SEGMENTS_SCHEMA.remove_metadata():
            raise ValueError("segments table does not have SEGMENTS_SCHEMA")
        write_parquet_atomic(segments, self.segments_part_path(part_id), durable=self.durable)
        write_parquet_atomic(images, self.images_part_path(part_id), durable=self.durable)

    def _check_part(self, part_id: str, images: pa.Table) -> None:
        if not _PART_RE.match(f"part-{part_id}.parquet"):
            raise ValueError(f"bad part id {part_id!r}")
        if images.schema.remove_metadata() != IMAGES_SCHEMA.remove_metadata():
            raise ValueError("images table does not have IMAGES_SCHEMA")
        if self.images_part_path(part_id).exists():
            raise OutputDirError(f"part {part_id} is already committed in {self.root}")

    # ------------------------------------------------------------------- staged (worker) writes
    def staged_segments_path(self, token: str) -> Path:
        """Where the worker batch ``token`` stages its segment rows (not a ``part-*.parquet`` name,
        so no reader takes it for a part)."""
        return self.segments_dir / f"{STAGED_PREFIX}{check_staged_token(token)}.segments"

    def staged_png_path(self, token: str, image_id: int) -> Path:
        """Where the worker batch ``token`` stages the PNG of ``image_id``."""
        return self.panoptic_dir / f"{STAGED_PREFIX}{check_staged_token(token)}.{int(image_id)}.png"

    def write_staged(self, token: str, pngs: Sequence[tuple[int, bytes]], segments: pa.Table) -> None:
        """Worker side of a commit: stage one batch's PNGs (``(image_id, png bytes)``) and its
        segment rows (:data:`SEGMENTS_SCHEMA`, possibly empty) as one Parquet file.

        Files are written straight to their staged names: a task that dies half way never
        returns its rows, so the driver never renames its files (they are swept as debris).
        With ``durable`` each file's data is fsync'ed here; the driver fsyncs the directories
        after renaming, which makes the final names durable.
        """
        if segments.schema.remove_metadata() != SEGMENTS_SCHEMA.remove_metadata():
            raise ValueError("segments table does not have SEGMENTS_SCHEMA")
        for image_id, png in pngs:
            path = self.staged_png_path(token, image_id)
            with open(path, "wb") as fh:
                fh.write(png)
                if self.durable:
                    fh.flush()
                    os.fsync(fh.fileno())
        path = self.staged_segments_path(token)
        write_parquet(segments, path)
        if self.durable:
            fsync_file(path)

    def commit_staged(self, part_id: str, token: str, images: pa.Table, subset: bool = False) -> None:
        """Driver side of a commit: promote the staged files of batch ``token`` into part P.

        Renames the staged PNG of every ok image of ``images`` to ``panoptic/<image_id>.png``,
        the staged segments file to ``segments/part-P.parquet``, then writes ``images/part-P``
        (the commit record) -- the order of :meth:`commit_part`. With ``subset`` (``images``
        holds only some of the batch's images, the others being committed already) the segment
        rows of those images are copied into the part instead and the staged file is deleted;
        the staged PNGs of the others stay for :meth:`discard_staged`.
        """
        self._check_part(part_id, images)
        ok_ids = images.filter(pc.equal(images["status"], STATUS_OK))["image_id"].to_pylist()
        for image_id in ok_ids:
            os.replace(self.staged_png_path(token, image_id), self.panoptic_png_path(image_id))
        staged = self.staged_segments_path(token)
        if subset:
            table = pq.read_table(staged)
            table = table.filter(pc.is_in(table["image_id"], value_set=pa.array(ok_ids, type=pa.int64())))
            write_parquet_atomic(table.replace_schema_metadata(SEGMENTS_SCHEMA.metadata), self.segments_part_path(part_id), durable=self.durable)
            staged.unlink()
        else:
            os.replace(staged, self.segments_part_path(part_id))
        if self.durable:
            fsync_directory(self.panoptic_dir)
            fsync_directory(self.segments_dir)
        write_parquet_atomic(images, self.images_part_path(part_id), durable=self.durable)

    def discard_staged(self, token: str, image_ids: Sequence[int]) -> None:
        """Delete what batch ``token`` staged for ``image_ids`` and its segments file (those that
        are left: a promoted file is gone already)."""
        for path in [self.staged_png_path(token, i) for i in image_ids] + [self.staged_segments_path(token)]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def remove_staged(self) -> int:
        """Delete every staged file (a run's end, and resume: none of them is committed data)."""
        removed = 0
        for directory in (self.segments_dir, self.panoptic_dir):
            for name in _listdir(directory):
                if name.startswith(STAGED_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        (directory / name).unlink()
                        removed += 1
        return removed

    # ---------------------------------------------------------------------------- recovery
    def recover(self) -> dict[str, int]:
        """Make the directory consistent after a crash; returns what was removed.

        Removes temporary files, staged files of worker batches (never committed: a commit
        renames them), segment parts whose images part is missing (their images were never
        committed), and PNGs that belong to no committed ok image.
        """
        removed = {"tmp_files": 0, "staged_files": 0, "orphan_segment_parts": 0, "orphan_pngs": 0}
        for directory in (self.root, self.images_dir, self.segments_dir, self.panoptic_dir):
            for name in _listdir(directory):
                if name.startswith(TMP_PREFIX):
                    (directory / name).unlink()
                    removed["tmp_files"] += 1
        removed["staged_files"] = self.remove_staged()
        committed = set(self.committed_parts())
        for part_id in self.segment_parts():
            if part_id not in committed:
                logger.info("resume: removing segments part %s (its images part was never committed)", part_id)
                self.segments_part_path(part_id).unlink()
                removed["orphan_segment_parts"] += 1
        ok_pngs = {f"{image_id}.png" for image_id in self.committed_image_ids(status=STATUS_OK)}
        for name in _listdir(self.panoptic_dir):
            if name.endswith(".png") and name not in ok_pngs:
                (self.panoptic_dir / name).unlink()
                removed["orphan_pngs"] += 1
        if any(removed.values()):
            logger.info("resume cleanup in %s: %s", self.root, removed)
        return removed

    def drop_error_rows(self) -> int:
        """Un-commit images whose row has status error, so a resumed run retries them.

        Each affected images part is rewritten atomically without its error rows (error rows
        have no segments, no PNG); returns the number of rows dropped.
        """
        dropped = 0
        for part_id in self.committed_parts():
            path = self.images_part_path(part_id)
            table = pq.read_table(path)
            keep = pc.equal(table["status"], STATUS_OK)
            kept = table.filter(keep)
            if kept.num_rows != table.num_rows:
                write_parquet_atomic(kept.replace_schema_metadata(IMAGES_SCHEMA.metadata), path, durable=self.durable)
                dropped += table.num_rows - kept.num_rows
        if dropped:
            logger.info("retry errors: %d image(s) with status error will be labeled again", dropped)
        return dropped

    # ----------------------------------------------------------------------------- readers
    def committed_image_ids(self, status: Optional[str] = None) -> set[int]:
        """Ids of images with a committed row (optionally only those with ``status``)."""
        ids: set[int] = set()
        for part_id in self.committed_parts():
            table = pq.read_table(self.images_part_path(part_id), columns=["image_id", "status"])
            if status is not None:
                table = table.filter(pc.equal(table["status"], status))
            ids.update(table["image_id"].to_pylist())
        return ids

    def iter_committed(self, images_columns: Optional[list[str]] = None, segments_columns: Optional[list[str]] = None) -> Iterator[tuple[str, pa.Table, pa.Table]]:
        """(part_id, images table, segments table) for each committed part, one part in memory at a time."""
        for part_id in self.committed_parts():
            images = pq.read_table(self.images_part_path(part_id), columns=images_columns)
            seg_path = self.segments_part_path(part_id)
            if seg_path.exists():
                segments = pq.read_table(seg_path, columns=segments_columns)
            else:  # a part committed with an empty segments file cannot lack it; be strict
                raise OutputDirError(f"{seg_path} is missing although images part {part_id} is committed")
            yield part_id, images, segments


def _listdir(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def read_images_table(out_dir: Union[str, Path], columns: Optional[list[str]] = None) -> pa.Table:
    """All committed ``images`` rows of an output directory as one table."""
    store = OutputStore(out_dir)
    paths = [str(store.images_part_path(p)) for p in store.committed_parts()]
    if not paths:
        return IMAGES_SCHEMA.empty_table() if columns is None else IMAGES_SCHEMA.empty_table().select(columns)
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in paths]).replace_schema_metadata(IMAGES_SCHEMA.metadata)


def read_segments_table(
    out_dir: Union[str, Path], columns: Optional[list[str]] = None, filters: Optional[Any] = None
) -> pa.Table:
    """All committed ``segments`` rows (only parts whose images part is committed) as one table.

    Args:
        columns: subset of columns (leave out ``rle`` for a light read).
        filters: pyarrow filter expression or DNF list, e.g. ``[("score", ">", 0.5)]``.
    """
    import pyarrow.dataset as ds

    store = OutputStore(out_dir)
    paths = [str(store.segments_part_path(p)) for p in store.committed_parts()]
    if not paths:
        empty = SEGMENTS_SCHEMA.empty_table()
        return empty if columns is None else empty.select(columns)
    dataset = ds.dataset(paths, schema=SEGMENTS_SCHEMA, format="parquet")
    expression = pq.filters_to_expression(filters) if isinstance(filters, list) else filters
    return dataset.to_table(columns=columns, filter=expression)
