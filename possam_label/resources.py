"""Where this installation keeps the directories that sit at the repository's top level.

The repository keeps ``configs/`` and ``plugins/`` next to the ``possam_label`` package. A wheel
cannot put top-level data into site-packages, so the build (``setup.py``) copies them into the
package: ``possam_label/configs`` and ``possam_label/plugins``. A checkout or an editable install
reads them where they are. Both are found through ``importlib.resources``, never through a path
relative to the current directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# Top-level directories of the repository that a wheel carries inside the package.
SHIPPED_DIRS = ("configs", "plugins")


def package_dir() -> Path:
    """The directory of the installed ``possam_label`` package.

    Raises:
        RuntimeError: the package is not installed as plain files (e.g. imported from a zip),
            which the model's weight files and the FiftyOne plugin need.
    """
    root = resources.files("possam_label")
    if not isinstance(root, Path):
        raise RuntimeError(f"possam_label must be installed as plain files, found {root!r}")
    return root


def shipped_dir(name: str) -> Path:
    """``configs`` or ``plugins`` of this installation: inside the package in a wheel, next to it
    in a checkout or an editable install."""
    if name not in SHIPPED_DIRS:
        raise ValueError(f"not a shipped directory: {name!r} (one of {', '.join(SHIPPED_DIRS)})")
    inside = package_dir() / name
    return inside if inside.is_dir() else package_dir().parent / name

