"""Report modules over a line limit and function bodies over a line limit (read with ``ast``).

Usage::

    python tools/code_sizes.py [ROOT ...] [--module-lines 500] [--body-lines 80]

Default roots: the library (``possam_label``), the FiftyOne plugin (``plugins``) and the command
lines (``pipelines``), each reported on its own.

A function's body runs from its first statement (after the docstring) to its last line; nested
functions count inside their parent and are also reported on their own. Exit status 0 always:
this is a report, not a gate.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Iterator

# The library, the FiftyOne plugin and the command lines.
DEFAULT_ROOTS = ("possam_label", "plugins", "pipelines")


def function_bodies(path: Path) -> Iterator[tuple[str, int, int]]:
    """``(qualified name, first line, body lines)`` of every function and method of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = child.body
                if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and len(body) > 1:
                    body = body[1:]  # the docstring is not code
                lines = (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1
                yield f"{prefix}{child.name}", child.lineno, lines
                yield from visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")

    yield from visit(tree, "")


def report(root: Path, module_lines: int, body_lines: int) -> tuple[list[tuple[str, int]], list[tuple[str, str, int]]]:
    """(modules over ``module_lines``, functions with bodies over ``body_lines``), largest first."""
    modules: list[tuple[str, int]] = []
    functions: list[tuple[str, str, int]] = []
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root.parent))
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > module_lines:
            modules.append((rel, count))
        for name, line, lines in function_bodies(path):
            if lines > body_lines:
                functions.append((f"{rel}:{line}", name, lines))
    modules.sort(key=lambda m: -m[1])
    functions.sort(key=lambda f: -f[2])
    return modules, functions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="*", default=[Path(root) for root in DEFAULT_ROOTS], type=Path, metavar="ROOT")
    parser.add_argument("--module-lines", type=int, default=500)
    parser.add_argument("--body-lines", type=int, default=80)
    args = parser.parse_args(argv)
    for root in args.roots:
        modules, functions = report(root.resolve(), args.module_lines, args.body_lines)
        print(f"{root}: modules over {args.module_lines} lines: {len(modules)}")
        for rel, count in modules:
            print(f"  {count:5d}  {rel}")
        print(f"{root}: function bodies over {args.body_lines} lines: {len(functions)}")
        for where, name, lines in functions:
            print(f"  {lines:5d}  {name}  ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
