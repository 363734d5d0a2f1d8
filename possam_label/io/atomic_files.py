"""Files that appear whole or not at all: a temporary name in the same directory, fsync, ``os.replace``.

Every writer of the output directory goes through these, so a process killed at any instant
leaves either the old file or the complete new one, plus at most a hidden ``.tmp-`` file that
:meth:`~possam_label.io.output_store.OutputStore.recover` deletes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator, Union

TMP_PREFIX = ".tmp-"


def fsync_directory(directory: Path) -> None:
    """fsync a directory so a rename inside it survives power loss (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path_for(final: Path) -> Path:
    """A unique hidden temporary name next to ``final`` (same filesystem, so ``os.replace`` is atomic)."""
    return final.with_name(f"{TMP_PREFIX}{final.name}.{secrets.token_hex(6)}")


@contextlib.contextmanager
def atomic_replace(path: Union[str, Path], durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it replaces ``path`` whole.

    The body writes the temporary file (and closes it). On a clean exit its data is fsync'ed
    (with ``durable``), it is renamed over ``path`` with ``os.replace`` and the directory is
    fsync'ed; on any exception the temporary file is removed and the exception propagates, so
    readers only ever see the old file or the complete new one.
    """
    path = Path(path)
    tmp = temporary_path_for(path)
    try:
        yield tmp
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_directory(path.parent)


def atomic_write_bytes(path: Union[str, Path], data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_replace`).

    Readers see either the old file or the complete new one. With ``durable`` the data and the
    rename are fsync'ed (survives power loss, not only process death).
    """
    with atomic_replace(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Union[str, Path], obj: Any, durable: bool = True) -> None:
    """``json.dumps(obj, indent=2)`` written atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"), durable=durable)


def fsync_file(path: Path) -> None:
    """fsync one written file (its data reaches the disk before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
