"""Install the review plugin (``plugins/possam_review``, shipped in the package) where FiftyOne finds it.

FiftyOne loads plugins from the directories under ``fo.config.plugins_dir`` (the
``FIFTYONE_PLUGINS_DIR`` setting) that hold a ``fiftyone.yml``; it imports nothing from
site-packages. Installing copies the shipped plugin there, replacing an earlier copy of the same
plugin and refusing to touch anything else.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import yaml

from ..resources import shipped_dir

logger = logging.getLogger(__name__)

REVIEW_PLUGIN_DIR_NAME = "possam_review"
_METADATA_FILE = "fiftyone.yml"


class PluginInstallError(RuntimeError):
    """The plugin cannot be installed (no plugins directory, or its place holds something else)."""


def shipped_review_plugin() -> Path:
    """The review plugin's directory in this installation (the checkout's or the wheel's copy)."""
    source = shipped_dir("plugins") / REVIEW_PLUGIN_DIR_NAME
    if not (source / _METADATA_FILE).is_file():
        raise PluginInstallError(f"{source}: the review plugin is missing from this installation (no {_METADATA_FILE})")
    return source


def plugin_name(plugin_dir: Path) -> Optional[str]:
    """The ``name`` in a plugin directory's ``fiftyone.yml`` (None when there is none)."""
    try:
        metadata = yaml.safe_load((Path(plugin_dir) / _METADATA_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return metadata.get("name") if isinstance(metadata, dict) else None


def install_review_plugin(plugins_dir: Union[str, Path, None] = None) -> Path:
    """Copy the review plugin into ``plugins_dir/possam_review``; returns that directory.

    Args:
        plugins_dir: FiftyOne plugins directory; None: FiftyOne's configured one
            (``fo.config.plugins_dir``, needs FiftyOne).

    Raises:
        PluginInstallError: no plugins directory is configured, or ``possam_review`` there is
            not an earlier copy of this plugin.
    """
    source = shipped_review_plugin()
    name = plugin_name(source)
    if plugins_dir is None:
        import fiftyone as fo

        plugins_dir = fo.config.plugins_dir
        if not plugins_dir:
            raise PluginInstallError("FiftyOne has no plugins directory configured: set FIFTYONE_PLUGINS_DIR or give one")
    target = Path(plugins_dir).expanduser().resolve() / REVIEW_PLUGIN_DIR_NAME
    if target.resolve() == source.resolve():
        logger.info("%s is the plugin's own directory; nothing to copy", target)
        return target
    if target.exists() or target.is_symlink():
        found = plugin_name(target) if target.is_dir() else None
        if found != name:
            raise PluginInstallError(f"{target} exists and is not the {name} plugin ({found or 'no plugin'}); move it away first")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Copy next to the target, then swap, so FiftyOne never sees a half-copied plugin.
    staging = Path(tempfile.mkdtemp(prefix=f".{REVIEW_PLUGIN_DIR_NAME}-", dir=target.parent))
    try:
        shutil.copytree(source, staging / REVIEW_PLUGIN_DIR_NAME, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        (staging / REVIEW_PLUGIN_DIR_NAME).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("installed %s into %s", name, target)
    return target
