"""Argument helpers shared by the pipelines' CLIs."""

from __future__ import annotations

import argparse


def _assignment(text: str) -> str:
    """argparse type of one ``--set`` value: checked here, so a bad one is a usage error."""
    from possam_label.config_mapping import ConfigError, parse_assignments

    try:
        parse_assignments([text])
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable) into ``args.assignments``; turn the list into config
    overrides with ``possam_label.config_mapping.parse_assignments``."""
    parser.add_argument(
        "--set", dest="assignments", action="append", default=[], type=_assignment, metavar="SECTION.KEY=VALUE",
        help=f"override one config value, e.g. {example} (repeatable; values are YAML data)",
    )


def add_shared_db_argument(parser: argparse.ArgumentParser) -> None:
    """``--shared-db`` of the FiftyOne benchmarks (``args.shared_db``, for
    ``possam_label.fiftyone.testing.use_benchmark_database``)."""
    parser.add_argument("--shared-db", action="store_true",
                        help="use FiftyOne's configured database (default: a private mongod in a temporary directory, stopped at exit)")
