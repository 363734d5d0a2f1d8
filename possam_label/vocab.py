"""Vocabularies: the class lists a PosSAM model classifies into, with synonyms and thing/stuff flags.

A :class:`Vocabulary` is an immutable table of K classes. Each class has a display name, a
non-empty tuple of synonyms whose first entry is the display name (the text classifier encodes
every synonym and takes the max over them, as FC-CLIP does), a thing/stuff flag, a category id
(the dataset's id: COCO ids for COCO) and an RGB color.

:func:`load_vocabulary` builds one from

* a built-in name: ``"coco"`` (COCO panoptic, 133 classes) or ``"ade20k"`` (ADE20K panoptic,
  150 classes); the tables live in ``possam_label/vocab_data/*.yaml``;
* a text file, one class per line: ``name, synonym, synonym`` with an optional trailing
  ``[stuff]`` or ``[thing]`` marker (default thing); blank lines and ``#`` comments are ignored;
* a YAML file: a list of entries, or a mapping ``{classes: [...]}``; an entry is a mapping
  ``{name, synonyms?: [...], isthing?: bool, id?: int, color?: [r, g, b]}`` (``supercategory``
  and ``coco_name`` are accepted as documentation and ignored) or a string written like a line
  of the text format;
* a comma-separated string such as ``"cat,dog,grass [stuff]"`` (each item is one class).

Classes without an explicit id get their 1-based position; classes without a color get a
deterministic color distinct from every other color of the vocabulary.

A vocabulary is also the class table of a FiftyOne label field and of an export: look a class up
with :meth:`Vocabulary.by_name` / :meth:`Vocabulary.by_id` (a :class:`VocabularyClass`), iterate
its classes, and add a reviewer's new class with :meth:`Vocabulary.with_class` (a new vocabulary:
the next free id, a fresh colour from :func:`generated_colors`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from .vocab_parsing import (
    ClassSpec,
    Color,
    check_text,
    generated_colors,
    normalize_class_text,
    parse_class_line,
    parse_text_lines,
    parse_yaml_entries,
    parse_yaml_entry,
    parse_yaml_file,
)

logger = logging.getLogger(__name__)

# Re-exported: the colour generator and the text normalisation belong to the class-table API.
__all__ = ["BUILTIN_VOCABULARIES", "Color", "Vocabulary", "VocabularyClass", "builtin_vocabulary", "generated_colors", "load_vocabulary",
           "load_vocabulary_file", "normalize_class_text", "resolve_vocabulary_spec"]

# Built-in vocabularies: accepted spellings -> data file in possam_label/vocab_data/.
BUILTIN_VOCABULARIES: dict[str, str] = {
    "coco": "coco_panoptic.yaml",
    "coco_panoptic": "coco_panoptic.yaml",
    "ade20k": "ade20k_150.yaml",
    "ade20k_150": "ade20k_150.yaml",
    "ade": "ade20k_150.yaml",
}

@dataclass(frozen=True)
class VocabularyClass:
    """One class of a :class:`Vocabulary`, as its lookups and iteration return it."""

    id: int
    name: str
    isthing: bool
    color: Color
    synonyms: tuple[str, ...]

    def to_coco(self) -> dict[str, Any]:
        """COCO-panoptic ``categories`` entry (``isthing`` 0/1, ``supercategory`` thing/stuff)."""
        return {
            "id": int(self.id),
            "name": self.name,
            "supercategory": "thing" if self.isthing else "stuff",
            "isthing": int(self.isthing),
            "color": [int(c) for c in self.color],
        }


@dataclass(frozen=True)
class Vocabulary:
    """K classes with synonyms, thing/stuff flags, dataset category ids and display colors.

    All tuples have length K. ``synonyms[i][0] == names[i]``. Names are unique (compared
    case-insensitively); category ids are unique non-negative ints; names and synonyms contain
    no commas, tabs or newlines (commas separate synonyms in the text format).
    """

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    isthing: tuple[bool, ...]
    category_ids: tuple[int, ...]
    colors: tuple[Color, ...]

    def __post_init__(self) -> None:
        # Accept lists from callers but store tuples so the object stays hashable and frozen.
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "synonyms", tuple(tuple(s) for s in self.synonyms))
        object.__setattr__(self, "isthing", tuple(self.isthing))
        object.__setattr__(self, "category_ids", tuple(self.category_ids))
        object.__setattr__(self, "colors", tuple(tuple(c) for c in self.colors))
        self._validate()

    def _validate(self) -> None:
        k = len(self.names)
        if k == 0:
            raise ValueError("a vocabulary needs at least one class")
        for field_name in ("synonyms", "isthing", "category_ids", "colors"):
            if len(getattr(self, field_name)) != k:
                raise ValueError(
                    f"vocabulary field {field_name!r} has {len(getattr(self, field_name))} entries, "
                    f"names has {k}"
                )
        seen_names: dict[str, int] = {}
        for i, (name, syns) in enumerate(zip(self.names, self.synonyms)):
            check_text(name, f"class {i} name")
            if not syns:
                raise ValueError(f"class {i} ({name!r}) has no synonyms")
            if syns[0] != name:
                raise ValueError(f"class {i}: synonyms[0] is {syns[0]!r}, must equal the name {name!r}")
            for s in syns:
                check_text(s, f"class {i} ({name!r}) synonym")
            key = normalize_class_text(name)
            if key in seen_names:
                raise ValueError(
                    f"duplicate class name {name!r} (classes {seen_names[key]} and {i})"
                )
            seen_names[key] = i
        for i, flag in enumerate(self.isthing):
            if not isinstance(flag, bool):
                raise ValueError(f"class {i} ({self.names[i]!r}): isthing must be a bool, got {flag!r}")
        seen_ids: dict[int, int] = {}
        for i, cid in enumerate(self.category_ids):
            if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
                raise ValueError(
                    f"class {i} ({self.names[i]!r}): category id must be an int >= 0, got {cid!r}"
                )
            if cid in seen_ids:
                raise ValueError(
                    f"duplicate category id {cid} (classes {self.names[seen_ids[cid]]!r} and {self.names[i]!r})"
                )
            seen_ids[cid] = i
        for i, color in enumerate(self.colors):
            if len(color) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color
            ):
                raise ValueError(
                    f"class {i} ({self.names[i]!r}): color must be 3 ints in [0, 255], got {color!r}"
                )

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[VocabularyClass]:
        return (self.class_at(i) for i in range(len(self)))

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a class name (case-insensitive; synonyms do not count)."""
        return isinstance(name, str) and normalize_class_text(name) in self._name_index

    @property
    def num_things(self) -> int:
        return sum(self.isthing)

    @property
    def num_stuff(self) -> int:
        return len(self) - self.num_things

    # ----------------------------------------------------------------------------------- lookup
    @cached_property
    def _name_index(self) -> dict[str, int]:
        return {normalize_class_text(n): i for i, n in enumerate(self.names)}

    @cached_property
    def _synonym_index(self) -> dict[str, tuple[int, ...]]:
        index: dict[str, list[int]] = {}
        for i, syns in enumerate(self.synonyms):
            for s in syns:
                owners = index.setdefault(normalize_class_text(s), [])
                if i not in owners:
                    owners.append(i)
        return {k: tuple(v) for k, v in index.items()}

    def index_of(self, name_or_synonym: str) -> int:
        """Index (0..K-1) of the class whose name, else whose synonym, matches (case-insensitive).

        Raises:
            KeyError: no class matches, or the text is a synonym of several classes.
        """
        key = normalize_class_text(name_or_synonym)
        if key in self._name_index:
            return self._name_index[key]
        owners = self._synonym_index.get(key, ())
        if len(owners) == 1:
            return owners[0]
        if len(owners) > 1:
            raise KeyError(
                f"{name_or_synonym!r} is a synonym of several classes: "
                + ", ".join(repr(self.names[i]) for i in owners)
            )
        raise KeyError(
            f"{name_or_synonym!r} is neither a class name nor a synonym of this vocabulary "
            f"({len(self)} classes, e.g. {', '.join(repr(n) for n in self.names[:5])})"
        )

    def class_at(self, index: int) -> VocabularyClass:
        """The class at ``index`` (0..K-1)."""
        return VocabularyClass(
            self.category_ids[index], self.names[index], self.isthing[index], self.colors[index], self.synonyms[index]
        )

    def by_name(self, name: str) -> VocabularyClass:
        """The class called ``name`` (case-insensitive; synonyms do not count); KeyError listing
        the classes when there is none."""
        index = self._name_index.get(normalize_class_text(name))
        if index is None:
            more = " ..." if len(self) > 20 else ""
            raise KeyError(f"unknown class {name!r}; known classes: {', '.join(self.names[:20])}{more}")
        return self.class_at(index)

    def by_id(self, category_id: int) -> VocabularyClass:
        """The class with dataset id ``category_id``; KeyError if there is none."""
        index = self._category_index.get(int(category_id))
        if index is None:
            raise KeyError(f"unknown category id {category_id}")
        return self.class_at(index)

    @property
    def max_category_id(self) -> int:
        return max(self.category_ids)

    def with_class(
        self, name: str, isthing: bool, category_id: Optional[int] = None, color: Optional[Color] = None
    ) -> "Vocabulary":
        """This vocabulary plus the class ``name`` (e.g. a reviewer's new class).

        Args:
            name: the new class's name (surrounding whitespace removed); must not be a class yet.
            isthing: its thing/stuff flag.
            category_id: its id (default: the next free one, the largest id + 1).
            color: its colour (default: a fresh one from :func:`generated_colors`).
        Raises:
            ValueError: an empty or existing name, a taken id, a name with a comma, tab or newline.
        """
        name = name.strip() if isinstance(name, str) else ""
        if not name:
            raise ValueError("a class name must be a non-empty string")
        if name in self:
            raise ValueError(f"class {name!r} is in the vocabulary already")
        new_id = self.max_category_id + 1 if category_id is None else int(category_id)
        new_color = generated_colors(1, set(self.colors))[0] if color is None else tuple(int(c) for c in color)
        return Vocabulary(
            names=self.names + (name,),
            synonyms=self.synonyms + ((name,),),
            isthing=self.isthing + (bool(isthing),),
            category_ids=self.category_ids + (new_id,),
            colors=self.colors + (new_color,),
        )

    def index_of_category_id(self, category_id: int) -> int:
        """Index of the class with dataset id ``category_id``; KeyError if there is none."""
        try:
            return self._category_index[int(category_id)]
        except KeyError:
            raise KeyError(f"category id {category_id} is not in this vocabulary") from None

    @cached_property
    def _category_index(self) -> dict[int, int]:
        return {cid: i for i, cid in enumerate(self.category_ids)}

    def seen_mask(self, train: "Vocabulary") -> list[bool]:
        """Per class of ``self``: True iff one of its synonyms equals a synonym of a class of ``train``.

        This is FC-CLIP's ``category_overlapping_mask`` (strings compared after
        :func:`normalize_class_text`): "seen" classes were in the training vocabulary.
        """
        train_words = {normalize_class_text(s) for syns in train.synonyms for s in syns}
        return [any(normalize_class_text(s) in train_words for s in syns) for syns in self.synonyms]

    # ------------------------------------------------------------------------------ conversion
    def to_dict(self) -> dict:
        """``{"classes": [{id, name, synonyms, isthing, color}, ...]}``; also valid vocabulary YAML."""
        return {
            "classes": [
                {
                    "id": cid,
                    "name": name,
                    "synonyms": list(syns),
                    "isthing": flag,
                    "color": list(color),
                }
                for name, syns, flag, cid, color in zip(
                    self.names, self.synonyms, self.isthing, self.category_ids, self.colors
                )
            ]
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        """Inverse of :meth:`to_dict`. Raises ValueError naming the faulty entry."""
        if not isinstance(d, dict) or "classes" not in d:
            raise ValueError("a vocabulary dict must be a mapping with a 'classes' list")
        return _build_vocabulary(parse_yaml_entries(d["classes"], source="vocabulary dict"), "vocabulary dict")

    def identity(self) -> str:
        """SHA-256 hex digest of the canonical JSON of :meth:`to_dict` (stable across processes)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_coco_categories(self, with_synonyms: bool = True) -> list[dict]:
        """COCO-panoptic ``categories``: ``[{id, name, supercategory, isthing, color, synonyms}]``.

        ``isthing`` is 0/1 as in COCO files; ``supercategory`` is "thing" or "stuff" (the
        vocabulary keeps no finer grouping); ``synonyms`` is an extra key that
        :meth:`from_coco_categories` reads back, so the round trip is lossless (left out with
        ``with_synonyms=False``: the form of exports and of a FiftyOne field's class table).
        """
        if not with_synonyms:
            return [c.to_coco() for c in self]
        return [{**c.to_coco(), "synonyms": list(c.synonyms)} for c in self]

    @classmethod
    def from_coco_categories(cls, cats: Sequence[dict]) -> "Vocabulary":
        """From a COCO-panoptic ``categories`` list (``id`` and ``name`` required).

        A ``name`` with commas (ADE20K's "road, route") is split into name + synonyms; a
        ``synonyms`` list, if present, is used; ``isthing`` defaults to 1; missing colors are
        generated.
        """
        if not isinstance(cats, (list, tuple)) or not cats:
            raise ValueError("COCO categories must be a non-empty list of mappings")
        specs = []
        for j, cat in enumerate(cats):
            where = f"category {j}"
            if not isinstance(cat, dict):
                raise ValueError(f"{where}: expected a mapping, got {type(cat).__name__}")
            for key in ("id", "name"):
                if key not in cat:
                    raise ValueError(f"{where}: missing {key!r}")
            parts = [p.strip() for p in str(cat["name"]).split(",") if p.strip()]
            if not parts:
                raise ValueError(f"{where}: empty name")
            entry: dict[str, Any] = {"name": parts[0], "id": cat["id"]}
            extra = list(cat["synonyms"]) if "synonyms" in cat else parts[1:]
            entry["synonyms"] = extra
            entry["isthing"] = cat.get("isthing", 1)
            if cat.get("color") is not None:
                entry["color"] = cat["color"]
            specs.append(parse_yaml_entry(entry, f"{where} ({parts[0]!r})"))
        return _build_vocabulary(specs, "COCO categories")


def _build_vocabulary(specs: list[ClassSpec], source: str) -> Vocabulary:
    """Fill ids (1-based position) and colors, check duplicates, build the Vocabulary."""
    seen_names: dict[str, ClassSpec] = {}
    for spec in specs:
        key = normalize_class_text(spec.name)
        if key in seen_names:
            raise ValueError(
                f"{source}: duplicate class name {spec.name!r} ({seen_names[key].where} and {spec.where})"
            )
        seen_names[key] = spec
    ids: list[int] = []
    seen_ids: dict[int, ClassSpec] = {}
    for position, spec in enumerate(specs, start=1):
        cid = spec.category_id if spec.category_id is not None else position
        if cid in seen_ids:
            raise ValueError(
                f"{source}: duplicate category id {cid} ({seen_ids[cid].where} and {spec.where}); "
                "give every class an explicit 'id' or none"
            )
        seen_ids[cid] = spec
        ids.append(cid)
    explicit = [spec.color for spec in specs if spec.color is not None]
    fresh = iter(generated_colors(sum(spec.color is None for spec in specs), set(explicit)))
    colors = [spec.color if spec.color is not None else next(fresh) for spec in specs]
    try:
        return Vocabulary(
            names=tuple(spec.name for spec in specs),
            synonyms=tuple(spec.synonyms for spec in specs),
            isthing=tuple(spec.isthing for spec in specs),
            category_ids=tuple(ids),
            colors=tuple(colors),
        )
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


# ------------------------------------------------------------------------------------ loading
_BUILTIN_CACHE: dict[str, Vocabulary] = {}


def builtin_vocabulary(name: str) -> Vocabulary:
    """A built-in vocabulary by name (see :data:`BUILTIN_VOCABULARIES`)."""
    key = name.strip().lower()
    if key not in BUILTIN_VOCABULARIES:
        raise ValueError(
            f"unknown built-in vocabulary {name!r}; built-ins: {sorted(set(BUILTIN_VOCABULARIES))}"
        )
    file_name = BUILTIN_VOCABULARIES[key]
    if file_name not in _BUILTIN_CACHE:
        resource = resources.files("possam_label") / "vocab_data" / file_name
        with resources.as_file(resource) as path:
            _BUILTIN_CACHE[file_name] = _build_vocabulary(parse_yaml_file(Path(path)), str(path))
    return _BUILTIN_CACHE[file_name]


def load_vocabulary_file(path: Union[str, os.PathLike]) -> Vocabulary:
    """A vocabulary from a ``.yaml``/``.yml`` file or a text file (any other suffix)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    if path.suffix.lower() in (".yaml", ".yml"):
        specs = parse_yaml_file(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not a UTF-8 text file ({err})") from None
        specs = parse_text_lines(text.splitlines(), str(path))
    vocab = _build_vocabulary(specs, str(path))
    logger.debug("loaded vocabulary of %d classes from %s", len(vocab), path)
    return vocab


def resolve_vocabulary_spec(spec: str, resolve_path: Callable[[str], Optional[str]]) -> str:
    """A config's vocabulary spec with a file name resolved by ``resolve_path`` (files named in a
    config are relative to the config file; ``PosSAMConfig.resolve_path``); built-in names and
    comma lists are returned as they are."""
    if spec in ("coco", "ade20k") or "," in spec:
        return spec
    resolved = resolve_path(spec)
    return resolved if resolved and Path(resolved).exists() else spec


def _looks_like_path(spec: str) -> bool:
    return (
        os.sep in spec
        or "/" in spec
        or Path(spec).suffix.lower() in (".txt", ".yaml", ".yml")
        or os.path.exists(spec)
    ) and "," not in spec


def load_vocabulary(spec: Union[str, os.PathLike, Vocabulary]) -> Vocabulary:
    """A :class:`Vocabulary` from a built-in name, a file path, a comma list, or a Vocabulary.

    Resolution order for strings: built-in name ("coco", "ade20k"); an existing file, or a
    string that looks like a path (has a "/" or ends in .txt/.yaml/.yml, and no comma); else a
    comma-separated class list (``"cat,dog,grass [stuff]"``; one class: ``"cat,"``). A single
    word that is none of these is an error (most likely a misspelt built-in).

    Raises:
        ValueError: unknown built-in, malformed file (message names file and line/entry),
            duplicate names or ids.
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, os.PathLike):
        return load_vocabulary_file(spec)
    if not isinstance(spec, str):
        raise TypeError(f"vocabulary spec must be a str, path or Vocabulary, got {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise ValueError("empty vocabulary spec")
    if text.lower() in BUILTIN_VOCABULARIES:
        return builtin_vocabulary(text)
    if _looks_like_path(text):
        return load_vocabulary_file(text)
    if "," not in text:
        raise ValueError(
            f"{text!r} is not a built-in vocabulary ({sorted(set(BUILTIN_VOCABULARIES))}), "
            "not an existing file, and not a comma-separated class list "
            f"(for a single custom class write {text + ','!r})"
        )
    items = [item for item in text.split(",") if item.strip()]
    specs = []
    for j, item in enumerate(items, start=1):
        try:
            spec_j = parse_class_line(item, f"item {j}")
        except ValueError as err:
            raise ValueError(f"vocabulary list {text!r}: {err}") from None
        specs.append(spec_j)
    if not specs:
        raise ValueError(f"vocabulary list {text!r} has no classes")
    return _build_vocabulary(specs, f"vocabulary list {text!r}")
