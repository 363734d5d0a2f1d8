"""The report tools: tools/compare_autolabel_outputs.py and tools/code_sizes.py."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_compare_autolabel_outputs_finds_a_changed_png_and_row(autolabel_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    compare = _load("compare_autolabel_outputs")
    copy = tmp_path / "copy"
    shutil.copytree(autolabel_run, copy)
    assert compare.compare(autolabel_run, copy) == []
    assert compare.main([str(autolabel_run), str(copy)]) == 0 and capsys.readouterr().out.startswith("SAME:")
    png = sorted((copy / "panoptic").glob("*.png"))[0]
    png.write_bytes(png.read_bytes() + b"\0")
    part = next(p for p in sorted((copy / "segments").glob("part-*.parquet")) if pq.read_metadata(p).num_rows)
    table = pq.read_table(part)
    scores = pa.array([-1.0] * table.num_rows, pa.float32())
    pq.write_table(table.set_column(table.schema.get_field_index("score"), "score", scores), part)
    problems = compare.compare(autolabel_run, copy)
    assert f"panoptic/{compare.image_names(copy)[int(png.stem)]}: bytes differ" in problems
    assert any(p.startswith("segments row") and "['score']" in p for p in problems)
    assert compare.main([str(autolabel_run), str(copy)]) == 1


def test_code_sizes_reports_long_modules_and_bodies(tmp_path: Path) -> None:
    sizes = _load("code_sizes")
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(12))
    (package / "long.py").write_text(f'def short():\n    """Doc."""\n    return 1\n\n\nclass A:\n    def long(self):\n        """Doc."""\n{body.replace("    ", "        ")}\n')
    modules, functions = sizes.report(package, module_lines=10, body_lines=10)
    assert modules == [("pkg/long.py", 20)]
    assert functions == [("pkg/long.py:7", "A.long", 12)]
