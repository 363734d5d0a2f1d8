"""The synthetic world's class table: names, synonyms, ids, colours, thing flags, base/novel split.

The table lives in ``possam_label/assets/synthetic_world/vocab.yaml`` and the base/novel split in
``splits.yaml`` next to it; the renderer (:mod:`possam_label.synthetic.world`) knows the class
names of :data:`THING_CLASSES` and :data:`STUFF_CLASSES` and checks the table against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import yaml

if TYPE_CHECKING:  # vocab.py is imported lazily at run time (see load_world_vocabulary)
    from possam_label.vocab import Vocabulary

THING_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "cross",
    "heart", "ring", "arrow", "moon", "diamond", "pentagon",
)
STUFF_CLASSES: tuple[str, ...] = ("sky", "grass", "water", "sand", "road", "brick wall")

_ASSET_DIR = ("assets", "synthetic_world")


@dataclass(frozen=True)
class WorldClass:
    """One class of the synthetic world, as listed in ``vocab.yaml``."""

    name: str
    synonyms: tuple[str, ...]
    isthing: bool
    id: int
    color: tuple[int, int, int]


def _read_asset_yaml(file_name: str) -> object:
    resource = resources.files("possam_label").joinpath(*_ASSET_DIR, file_name)
    with resources.as_file(resource) as path:
        try:
            return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: cannot read the synthetic world's {file_name}: {err}") from None


def world_vocab_path() -> Path:
    """Path of ``vocab.yaml`` (valid input for :func:`possam_label.vocab.load_vocabulary`)."""
    resource = resources.files("possam_label").joinpath(*_ASSET_DIR, "vocab.yaml")
    return Path(str(resource))


@lru_cache(maxsize=1)
def world_classes() -> tuple[WorldClass, ...]:
    """All classes of the world in ``vocab.yaml`` order (things first, then stuff)."""
    entries = _read_asset_yaml("vocab.yaml")
    if not isinstance(entries, list):
        raise ValueError("synthetic_world/vocab.yaml: expected a list of classes")
    out = []
    for j, entry in enumerate(entries):
        try:
            out.append(
                WorldClass(
                    name=str(entry["name"]),
                    synonyms=tuple([str(entry["name"])] + [str(s) for s in entry.get("synonyms", [])]),
                    isthing=bool(entry["isthing"]),
                    id=int(entry["id"]),
                    color=tuple(int(c) for c in entry["color"]),  # type: ignore[arg-type]
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"synthetic_world/vocab.yaml: entry {j}: {err!r}") from None
    names = [c.name for c in out]
    expected = set(THING_CLASSES) | set(STUFF_CLASSES)
    if set(names) != expected or len(names) != len(expected):
        raise ValueError(
            f"synthetic_world/vocab.yaml lists {sorted(names)}, the renderer knows {sorted(expected)}"
        )
    for c in out:
        if c.isthing != (c.name in THING_CLASSES):
            raise ValueError(f"synthetic_world/vocab.yaml: {c.name!r} has the wrong isthing flag")
    return tuple(out)


def class_by_name() -> dict[str, WorldClass]:
    """Every class of the world by its name."""
    return {c.name: c for c in world_classes()}


@lru_cache(maxsize=1)
def _world_splits_cached() -> tuple[tuple[str, ...], tuple[str, ...]]:
    data = _read_asset_yaml("splits.yaml")
    if not isinstance(data, dict) or set(data) != {"base", "novel"}:
        raise ValueError("synthetic_world/splits.yaml: expected a mapping with keys 'base' and 'novel'")
    base, novel = tuple(data["base"]), tuple(data["novel"])
    names = [c.name for c in world_classes()]
    if sorted(base + novel) != sorted(names):
        raise ValueError("synthetic_world/splits.yaml: base + novel must list every class exactly once")
    # Keep the vocab.yaml order inside each split so derived vocabularies are stable.
    return tuple(n for n in names if n in base), tuple(n for n in names if n in novel)


def world_splits() -> dict[str, list[str]]:
    """``{"base": [...], "novel": [...]}``: class names of each split, in vocab.yaml order."""
    base, novel = _world_splits_cached()
    return {"base": list(base), "novel": list(novel)}


def classes_for_split(split: str) -> list[str]:
    """Class names for ``"all"``, ``"base"`` or ``"novel"``."""
    if split == "all":
        return [c.name for c in world_classes()]
    splits = world_splits()
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; use 'all', 'base' or 'novel'")
    return splits[split]


def load_world_vocabulary(split: str = "all") -> "Vocabulary":
    """The world's :class:`~possam_label.vocab.Vocabulary` (``"all"``, ``"base"`` or ``"novel"``).

    Category ids are the world's ids in every split, so a base vocabulary reads the base
    classes of any world dataset and drops the others.
    """
    from possam_label.vocab import Vocabulary, load_vocabulary_file

    full = load_vocabulary_file(world_vocab_path())
    keep = set(classes_for_split(split))
    idx = [i for i, n in enumerate(full.names) if n in keep]
    return Vocabulary(
        names=tuple(full.names[i] for i in idx),
        synonyms=tuple(full.synonyms[i] for i in idx),
        isthing=tuple(full.isthing[i] for i in idx),
        category_ids=tuple(full.category_ids[i] for i in idx),
        colors=tuple(full.colors[i] for i in idx),
    )


def coco_categories(classes: Optional[Iterable[str]] = None) -> list[dict]:
    """COCO-panoptic ``categories`` entries ``{id, name, supercategory, isthing, color, synonyms}``.

    ``synonyms`` (excluding the name) is an extra key that
    :meth:`possam_label.vocab.Vocabulary.from_coco_categories` reads; COCO tools ignore it.
    """
    keep = None if classes is None else set(classes)
    return [
        {
            "id": c.id,
            "name": c.name,
            "supercategory": "shape" if c.isthing else "scenery",
            "isthing": int(c.isthing),
            "color": list(c.color),
            "synonyms": list(c.synonyms[1:]),
        }
        for c in world_classes()
        if keep is None or c.name in keep
    ]


def resolve_classes(
    classes: Optional[Sequence[str]] = None, exclude_classes: Optional[Sequence[str]] = None
) -> list[str]:
    """The class names a scene may use, in vocab.yaml order; checks the names."""
    known = [c.name for c in world_classes()]
    chosen = list(known) if classes is None else list(classes)
    for name in list(chosen) + list(exclude_classes or []):
        if name not in known:
            raise ValueError(f"unknown synthetic-world class {name!r}; classes: {known}")
    excluded = set(exclude_classes or [])
    result = [n for n in known if n in set(chosen) and n not in excluded]
    if not any(n in STUFF_CLASSES for n in result):
        raise ValueError(f"a scene needs at least one stuff class ({list(STUFF_CLASSES)}); got {result}")
    return result


def thing_category_ids() -> set[int]:
    """Category ids of the synthetic world's thing classes."""
    return {c.id for c in world_classes() if c.isthing}


class WorldIndex:
    """Class lookups of the synthetic world (category id -> class index, thing flags, synonyms)."""

    def __init__(self) -> None:
        classes = world_classes()
        self.names = [c.name for c in classes]
        self.synonyms = [tuple(c.synonyms) for c in classes]
        self.isthing = [bool(c.isthing) for c in classes]
        self.index_of_category = {c.id: i for i, c in enumerate(classes)}
        novel = set(world_splits()["novel"])
        self.is_novel = [c.name in novel for c in classes]

    def __len__(self) -> int:
        return len(self.names)
