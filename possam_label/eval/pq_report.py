"""PQ results as JSON (written atomically) and as panopticapi's text table."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from possam_label.eval.pq import GROUPS, CategoriesLike, normalize_categories


def results_to_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """The results dict with ``per_class`` keys as strings, ready for ``json.dump``."""
    jsonable = {group: dict(results[group]) for group in GROUPS}
    jsonable["per_class"] = {str(cid): dict(scores) for cid, scores in results["per_class"].items()}
    if "matching" in results:
        jsonable["matching"] = dict(results["matching"])
    return jsonable


def save_pq_results(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write :func:`results_to_json` of ``results`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(results_to_json(results), stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def format_pq_table(
    results: Mapping[str, Any],
    categories: CategoriesLike | None = None,
    per_class: bool = False,
) -> str:
    """A text table of the results in percent (as panopticapi prints), optionally per class."""
    lines = [f"{'':<10}|{'PQ':>8}{'SQ':>8}{'RQ':>8}{'N':>6}", "-" * 40]
    for group in GROUPS:
        row = results[group]
        lines.append(
            f"{group:<10}|{100 * row['pq']:8.3f}{100 * row['sq']:8.3f}{100 * row['rq']:8.3f}{row['n']:6d}"
        )
    if per_class:
        names = {}
        if categories is not None:
            names = {cid: str(cat.get("name", cid)) for cid, cat in normalize_categories(categories).items()}
        lines += ["", f"{'id':>5}  {'category':<24}|{'PQ':>8}{'SQ':>8}{'RQ':>8}", "-" * 59]
        for cid, scores in results["per_class"].items():
            name = names.get(int(cid), "")[:24]
            lines.append(
                f"{int(cid):>5}  {name:<24}|{100 * scores['pq']:8.3f}{100 * scores['sq']:8.3f}"
                f"{100 * scores['rq']:8.3f}"
            )
    return "\n".join(lines)
