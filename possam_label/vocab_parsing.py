"""Parsing of vocabulary files and specs into class specs, and the one class-colour generator.

:mod:`possam_label.vocab` builds :class:`~possam_label.vocab.Vocabulary` objects from what this
module parses (text files, YAML entries, COCO categories).
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

Color = tuple[int, int, int]

_ENTRY_KEYS = {"name", "synonyms", "isthing", "id", "color"}
_INFORMATIONAL_KEYS = {"supercategory", "coco_name"}
_MARKER_RE = re.compile(r"\[\s*([^\[\]]*?)\s*\]\s*$")
_FORBIDDEN_CHARS = (",", "\n", "\r", "\t")


def normalize_class_text(text: str) -> str:
    """The form in which names and synonyms are compared: lower case, inner spaces collapsed."""
    return " ".join(text.strip().lower().split())


@dataclass(frozen=True)
class ClassSpec:
    """One class as parsed from a file, before ids and colors are filled in."""

    name: str
    synonyms: tuple[str, ...]
    isthing: bool
    category_id: Optional[int]
    color: Optional[Color]
    where: str  # "line 3" / "entry 2 ('cat')": for error messages


# ---------------------------------------------------------------------------------- parsing
def check_text(text: Any, what: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what} must be a non-empty string, got {text!r}")
    if text != text.strip():
        raise ValueError(f"{what} {text!r} has leading or trailing whitespace")
    for ch in _FORBIDDEN_CHARS:
        if ch in text:
            raise ValueError(f"{what} {text!r} contains {ch!r}")


def dedupe(items: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        key = normalize_class_text(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return tuple(out)


def parse_class_line(text: str, where: str) -> ClassSpec:
    """Parse ``name, synonym, ... [stuff]``; raises ValueError mentioning ``where``."""
    isthing = True
    body = text.strip()
    marker = _MARKER_RE.search(body)
    if marker:
        tag = marker.group(1).lower()
        if tag not in ("thing", "stuff"):
            raise ValueError(f"{where}: unknown marker [{marker.group(1)}] (use [thing] or [stuff])")
        isthing = tag == "thing"
        body = body[: marker.start()].strip()
    if "[" in body or "]" in body:
        raise ValueError(f"{where}: stray '[' or ']' in {text.strip()!r}; a [thing]/[stuff] marker goes last")
    items = [item.strip() for item in body.split(",")]
    if not body or any(not item for item in items):
        raise ValueError(f"{where}: empty class name or synonym in {text.strip()!r}")
    items = [" ".join(item.split()) for item in items]
    return ClassSpec(items[0], dedupe(items), isthing, None, None, where)


def parse_text_lines(lines: Iterable[str], source: str) -> list[ClassSpec]:
    specs = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            specs.append(parse_class_line(line, f"line {lineno}"))
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
    if not specs:
        raise ValueError(f"{source}: no classes")
    return specs


def parse_yaml_entry(entry: Any, where: str) -> ClassSpec:
    if isinstance(entry, str):
        return parse_class_line(entry, where)
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping or a string, got {type(entry).__name__}")
    unknown = set(entry) - _ENTRY_KEYS - _INFORMATIONAL_KEYS
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {sorted(map(str, unknown))} (allowed: {sorted(_ENTRY_KEYS)})"
        )
    if "name" not in entry:
        raise ValueError(f"{where}: missing 'name'")
    name = entry["name"]
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    name = " ".join(name.split())
    synonyms = entry.get("synonyms", [])
    if synonyms is None:
        synonyms = []
    if not isinstance(synonyms, (list, tuple)) or not all(isinstance(s, str) and s.strip() for s in synonyms):
        raise ValueError(f"{where}: 'synonyms' must be a list of non-empty strings, got {synonyms!r}")
    isthing = entry.get("isthing", True)
    if isinstance(isthing, bool):
        pass
    elif isinstance(isthing, int) and isthing in (0, 1):  # COCO files write 0/1
        isthing = bool(isthing)
    else:
        raise ValueError(f"{where}: 'isthing' must be true/false (or 0/1), got {isthing!r}")
    category_id = entry.get("id")
    if category_id is not None and (isinstance(category_id, bool) or not isinstance(category_id, int) or category_id < 0):
        raise ValueError(f"{where}: 'id' must be an int >= 0, got {category_id!r}")
    color = entry.get("color")
    if color is not None:
        if (
            not isinstance(color, (list, tuple))
            or len(color) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color)
        ):
            raise ValueError(f"{where}: 'color' must be [r, g, b] ints in [0, 255], got {color!r}")
        color = (int(color[0]), int(color[1]), int(color[2]))
    all_names = dedupe([name] + [" ".join(s.split()) for s in synonyms])
    for text in all_names:
        for ch in _FORBIDDEN_CHARS:
            if ch in text:
                raise ValueError(f"{where}: {text!r} contains {ch!r}; give synonyms as a list")
    return ClassSpec(name, all_names, isthing, category_id, color, where)


def parse_yaml_entries(entries: Any, source: str) -> list[ClassSpec]:
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a non-empty list of classes")
    specs = []
    for j, entry in enumerate(entries, start=1):
        label = entry.get("name") if isinstance(entry, dict) else entry
        where = f"entry {j} ({label!r})" if isinstance(label, str) else f"entry {j}"
        try:
            specs.append(parse_yaml_entry(entry, where))
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
    return specs


def parse_yaml_file(path: Path) -> list[ClassSpec]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if isinstance(data, dict):
        unknown = set(data) - {"classes"}
        if "classes" not in data or unknown:
            raise ValueError(f"{path}: a YAML mapping must have exactly one key 'classes' (got {sorted(map(str, data))})")
        data = data["classes"]
    return parse_yaml_entries(data, str(path))


# ------------------------------------------------------------------------------------ colors
def generated_colors(count: int, taken: set[Color]) -> list[Color]:
    """``count`` deterministic, saturated colors, distinct from each other and from ``taken``.

    The one colour generator of the project (vocabularies, which are also the class tables of
    FiftyOne label fields, use it).

    Hues step by the golden ratio so neighbours in the list differ strongly; saturation and
    value cycle over a few levels so that many classes still get distinct RGB triples.
    """
    out: list[Color] = []
    used = set(taken) | {(0, 0, 0)}  # black reads as void in panoptic renderings
    step = 0
    while len(out) < count:
        hue = (step * 0.6180339887498949) % 1.0
        sat = (0.85, 0.6, 0.95, 0.45)[(step // 7) % 4]
        val = (0.95, 0.75, 0.55)[(step // 3) % 3]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        color = (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))
        step += 1
        if color in used:
            continue
        used.add(color)
        out.append(color)
    return out
