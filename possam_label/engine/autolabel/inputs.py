"""The inputs of a run: the image files of a dataset source, with stable ids."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Sequence

from ...io.images import is_image_path
from ...io.tables import image_id_for_path
from .options import AutolabelError

FIFTYONE_PREFIX = "fiftyone://"


def list_inputs(source: str) -> list[str]:
    """The image files of a dataset source, as absolute paths, in a stable order.

    Args:
        source: one of
            - a directory: searched recursively for :data:`~possam_label.io.images.IMAGE_EXTENSIONS`
              (case-insensitive; symlinked files are included, symlinked directories are not followed);
            - an image file: that one image;
            - a text file: one path per line (blank lines and ``#`` comments skipped; relative
              paths are relative to the text file's directory); every listed path is an input,
              whatever its extension, so a missing or non-image entry becomes an error row;
            - a glob pattern (``*``, ``?``, ``[``; ``**`` recursive): matching image files;
            - ``fiftyone://NAME``: the ``filepath`` of every sample of a FiftyOne dataset.

    Raises:
        AutolabelError: a source that does not exist or yields no input.
    """
    if source.startswith(FIFTYONE_PREFIX):
        paths = _fiftyone_filepaths(source[len(FIFTYONE_PREFIX) :])
    elif os.path.isdir(source):
        paths = []
        for directory, subdirs, files in os.walk(source):
            subdirs.sort()
            paths.extend(os.path.join(directory, name) for name in sorted(files) if is_image_path(name))
    elif os.path.isfile(source):
        if is_image_path(source):
            paths = [source]
        else:
            paths = _read_listing(Path(source))
    elif any(ch in source for ch in "*?["):
        paths = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p) and is_image_path(p))
    else:
        raise AutolabelError(f"dataset source {source!r} is not a directory, file, glob pattern or fiftyone://NAME")
    paths = [os.path.normpath(os.path.abspath(p)) for p in paths]
    if not paths:
        raise AutolabelError(f"dataset source {source!r} contains no images (extensions: jpg, jpeg, png, webp, bmp, tif, tiff)")
    return paths


def _read_listing(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AutolabelError(f"{path}: a listing file must be UTF-8 text with one image path per line ({exc})") from exc
    base = path.resolve().parent
    out = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        out.append(entry if os.path.isabs(entry) else str(base / entry))
    return out


def _fiftyone_filepaths(name: str) -> list[str]:
    if not name:
        raise AutolabelError("fiftyone:// needs a dataset name, e.g. fiftyone://my_dataset")
    try:
        import fiftyone as fo  # lazy: heavy import and a database connection
    except ImportError as exc:
        raise AutolabelError("reading a fiftyone:// source needs the 'fiftyone' package (pip install possam-label[fiftyone])") from exc
    if name not in fo.list_datasets():
        raise AutolabelError(f"FiftyOne dataset {name!r} does not exist (known: {', '.join(fo.list_datasets()[:10])})")
    return [str(p) for p in fo.load_dataset(name).values("filepath")]


def unique_inputs(paths: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
    """``[{"image_id", "file_path"}]`` with duplicates (same id, i.e. same absolute path) removed.

    Returns:
        the rows in input order and the number of duplicates dropped.
    """
    seen: set[int] = set()
    rows = []
    for path in paths:
        image_id = image_id_for_path(path)
        if image_id in seen:
            continue
        seen.add(image_id)
        rows.append({"image_id": image_id, "file_path": path})
    return rows, len(paths) - len(rows)
