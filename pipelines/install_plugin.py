"""Install the FiftyOne review plugin (@possam/review) where FiftyOne finds it.

Examples::

    python -m pipelines.install_plugin                          # FiftyOne's plugins directory
    python -m pipelines.install_plugin --plugins-dir ~/fo-plugins
    FIFTYONE_PLUGINS_DIR=~/fo-plugins fiftyone plugins list     # shows @possam/review

Copies the plugin shipped with the package into ``PLUGINS_DIR/possam_review`` (an earlier copy is
replaced). Exit status 0 on success, 2 when refused (no plugins directory configured, or
``possam_review`` there holds something else).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from possam_label.fiftyone.plugin_install import PluginInstallError, install_review_plugin


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.install_plugin",
        description="Copy the @possam/review FiftyOne plugin shipped with possam-label into a FiftyOne plugins directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--plugins-dir", default=None, metavar="DIR",
        help="FiftyOne plugins directory (default: FiftyOne's configured one, fo.config.plugins_dir / FIFTYONE_PLUGINS_DIR)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    try:
        import fiftyone as fo
    except ImportError as err:
        print(f"error: the plugin needs FiftyOne (pip install 'possam-label[fiftyone]'): {err}", file=sys.stderr)
        return 2
    try:
        target = install_review_plugin(args.plugins_dir)
    except (PluginInstallError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(target)
    configured = fo.config.plugins_dir
    if not configured or Path(configured).expanduser().resolve() != target.parent:
        print(f"FiftyOne reads plugins from {configured}; it finds this one with FIFTYONE_PLUGINS_DIR={target.parent}", file=sys.stderr)
    return 0

if __name__ == "__main__":
    sys.exit(main())
