"""Compare two autolabel output directories: same labels, ignoring run ids and times.

Checks that the committed Parquet rows (images and segments, sorted by image and segment id) are
equal once the columns that change on every run (``run_id``, ``seconds``) are dropped, that every
panoptic PNG is byte-identical, and that ``panoptic.json`` is equal apart from its ``info`` block
(run id, creation date).

Images are matched by file name, not by path: the two runs may have read the same files from two
checkouts (image ids are hashes of the absolute path), so ``image_id``, ``file_path`` and the PNG
names are replaced by the file's base name, which must be unique within each run.

Usage::

    python tools/compare_autolabel_outputs.py BEFORE_DIR AFTER_DIR

Exit status 0 when the outputs agree, 1 otherwise (each difference is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

# Columns that differ between two runs of the same job on the same inputs.
VOLATILE_COLUMNS = ("run_id", "seconds")


def _raw_rows(out_dir: Path, table: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted((out_dir / table).glob("part-*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def image_names(out_dir: Path) -> dict[int, str]:
    """image id -> base name of its file (the key that matches images across checkouts)."""
    names = {int(r["image_id"]): Path(r["file_path"]).name for r in _raw_rows(out_dir, "images")}
    if len(set(names.values())) != len(names):
        raise SystemExit(f"{out_dir}: image file names are not unique; cannot match images by name")
    return names


def table_rows(out_dir: Path, table: str) -> list[dict[str, Any]]:
    """Committed rows of ``images`` or ``segments`` without the volatile columns, keyed by file name."""
    names = image_names(out_dir)
    rows = []
    for row in _raw_rows(out_dir, table):
        row = {k: v for k, v in row.items() if k not in VOLATILE_COLUMNS}
        row["image_id"] = names[int(row["image_id"])]
        row["file_path"] = row["image_id"]
        if row.get("panoptic_file"):
            row["panoptic_file"] = f"panoptic/{row['image_id']}.png"
        rows.append(row)
    return sorted(rows, key=lambda r: (r["image_id"], r.get("segment_id", 0)))


def png_files(out_dir: Path) -> dict[str, bytes]:
    names = image_names(out_dir)
    return {names[int(p.stem)]: p.read_bytes() for p in sorted((out_dir / "panoptic").glob("*.png"))}


def panoptic_json_without_info(out_dir: Path) -> dict[str, Any]:
    names = image_names(out_dir)
    data = json.loads((out_dir / "panoptic.json").read_text(encoding="utf-8"))
    data.pop("info", None)
    for image in data["images"]:
        image["id"] = image["file_name"] = names[int(image["id"])]
    for annotation in data["annotations"]:
        annotation["image_id"] = annotation["file_name"] = names[int(annotation["image_id"])]
    data["images"].sort(key=lambda im: im["id"])
    data["annotations"].sort(key=lambda a: a["image_id"])
    return data


def compare(before: Path, after: Path) -> list[str]:
    """Every difference between two output directories (empty when they agree)."""
    missing = [str(d / name) for d in (before, after) for name in ("images", "segments", "panoptic", "panoptic.json") if not (d / name).exists()]
    if missing:
        return [f"not a finished autolabel output: {m} is missing" for m in missing]
    problems: list[str] = []
    for table in ("images", "segments"):
        a, b = table_rows(before, table), table_rows(after, table)
        if len(a) != len(b):
            problems.append(f"{table}: {len(a)} rows before, {len(b)} after")
        for i, (ra, rb) in enumerate(zip(a, b)):
            if ra != rb:
                keys = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
                problems.append(f"{table} row {i} (image {ra.get('image_id')}): differs in {keys}")
    pngs_a, pngs_b = png_files(before), png_files(after)
    if sorted(pngs_a) != sorted(pngs_b):
        problems.append(f"panoptic PNG names differ: {sorted(set(pngs_a) ^ set(pngs_b))[:10]}")
    for name in sorted(set(pngs_a) & set(pngs_b)):
        if pngs_a[name] != pngs_b[name]:
            problems.append(f"panoptic/{name}: bytes differ")
    if panoptic_json_without_info(before) != panoptic_json_without_info(after):
        problems.append("panoptic.json differs (outside its info block)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    problems = compare(args.before, args.after)
    if problems and problems[0].startswith("not a finished"):
        print("\n".join(problems))
        return 1
    images = len(table_rows(args.before, "images"))
    segments = len(table_rows(args.before, "segments"))
    pngs = len(png_files(args.before))
    if problems:
        print(f"DIFFERENT: {len(problems)} difference(s)")
        print("\n".join(problems[:50]))
        return 1
    print(f"SAME: {images} image rows, {segments} segment rows, {pngs} PNGs byte-identical, panoptic.json equal (info ignored)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
