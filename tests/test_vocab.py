"""Tests of possam_label.vocab: built-in tables, the file formats, their errors, identity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from possam_label.vocab import Vocabulary, generated_colors, load_vocabulary

DATA = Path(__file__).parent / "data"
COCO_CATEGORIES_JSON = DATA / "coco_panoptic_sample" / "panoptic_coco_categories.json"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- built-ins
def test_coco_builtin_matches_official_categories():
    vocab = load_vocabulary("coco")
    official = json.loads(COCO_CATEGORIES_JSON.read_text())
    assert len(vocab) == 133 and vocab.num_things == 80 and vocab.num_stuff == 53
    assert list(vocab.category_ids) == [c["id"] for c in official]
    assert list(vocab.isthing) == [bool(c["isthing"]) for c in official]
    assert [list(c) for c in vocab.colors] == [c["color"] for c in official]
    assert min(vocab.category_ids) == 1 and max(vocab.category_ids) == 200
    # Display names: official where natural, cleaned for the "-merged"/"-other"/"-stuff" ones.
    assert vocab.names[vocab.index_of_category_id(1)] == "person"
    assert vocab.names[vocab.index_of_category_id(184)] == "tree"  # tree-merged
    assert vocab.names[vocab.index_of_category_id(187)] == "sky"  # sky-other-merged
    assert vocab.names[vocab.index_of_category_id(171)] == "brick wall"  # wall-brick
    assert not any(n.endswith(("-merged", "-other", "-stuff")) for n in vocab.names)
    for i, name in enumerate(vocab.names):
        assert vocab.synonyms[i][0] == name
    person = vocab.synonyms[vocab.index_of("person")]
    assert {"child", "girl", "boy", "woman", "man", "people", "children"} <= set(person)
    assert {"trees", "bushes"} <= set(vocab.synonyms[vocab.index_of("tree")])


def test_ade20k_builtin_counts_ids_and_flags():
    vocab = load_vocabulary("ade20k")
    assert len(vocab) == 150 and vocab.num_things == 100 and vocab.num_stuff == 50
    assert list(vocab.category_ids) == list(range(150))  # ids of ade20k_panoptic_*.json
    assert vocab.names[:3] == ("wall", "building", "sky")
    assert vocab.names[-1] == "flag"
    assert vocab.isthing[vocab.index_of("person")] and not vocab.isthing[vocab.index_of("wall")]
    assert vocab.isthing[vocab.index_of("window")] and not vocab.isthing[vocab.index_of("blind")]
    assert vocab.index_of("route") == vocab.index_of("road") == 6
    assert vocab.colors[0] == (120, 120, 120)
    assert len(set(vocab.colors)) == 150
    # No synonym is shared by two ADE classes, so every synonym resolves.
    for i, syns in enumerate(vocab.synonyms):
        assert all(vocab.index_of(s) == i for s in syns)
    assert load_vocabulary("ADE20K_150") is vocab  # cached, aliases


def test_index_of_errors_are_clear():
    vocab = load_vocabulary("coco")
    assert vocab.index_of("  Puppies ") == vocab.index_of("dog")
    with pytest.raises(KeyError, match="neither a class name nor a synonym"):
        vocab.index_of("spaceship")
    ambiguous = Vocabulary.from_dict(
        {"classes": [{"name": "table", "synonyms": ["desk"]}, {"name": "bench", "synonyms": ["desk"]}]}
    )
    with pytest.raises(KeyError, match="synonym of several classes"):
        ambiguous.index_of("desk")


def test_seen_mask_coco_to_ade():
    coco, ade = load_vocabulary("coco"), load_vocabulary("ade20k")
    mask = ade.seen_mask(coco)
    assert len(mask) == 150
    assert mask[ade.index_of("person")] and mask[ade.index_of("wall")] and mask[ade.index_of("sky")]
    assert mask[ade.index_of("sofa")]  # COCO couch has the synonym "sofa"
    assert not mask[ade.index_of("chandelier")] and not mask[ade.index_of("arcade machine")]
    assert all(coco.seen_mask(coco))
    assert load_vocabulary("Cat,spaceship").seen_mask(coco) == [True, False]


# ------------------------------------------------------------------------------ file formats
def test_text_file_format():
    vocab = load_vocabulary(str(DATA / "vocab" / "kitchen.txt"))
    assert vocab.names == ("mug", "kettle", "countertop", "floor")
    assert vocab.synonyms[0] == ("mug", "mugs", "coffee mug")
    assert vocab.isthing == (True, True, False, False)
    assert vocab.category_ids == (1, 2, 3, 4)
    assert len(set(vocab.colors)) == 4


def test_yaml_file_format():
    vocab = load_vocabulary(DATA / "vocab" / "kitchen.yaml")
    assert vocab.names == ("mug", "kettle", "countertop", "floor")
    assert vocab.synonyms[2] == ("countertop", "kitchen counter")
    assert vocab.isthing == (True, True, False, False)
    assert vocab.category_ids == (10, 11, 20, 4)
    assert vocab.colors[1] == (200, 10, 10)
    assert (200, 10, 10) not in vocab.colors[:1] + vocab.colors[2:]


def test_yaml_top_level_list(tmp_path):
    path = _write(tmp_path, "v.yml", "- {name: cat}\n- {name: road, isthing: 0}\n")
    vocab = load_vocabulary(str(path))
    assert vocab.names == ("cat", "road") and vocab.isthing == (True, False)


def test_comma_string():
    vocab = load_vocabulary("cat,dog,grass [stuff]")
    assert vocab.names == ("cat", "dog", "grass")
    assert vocab.isthing == (True, True, False)
    assert vocab.category_ids == (1, 2, 3)
    assert load_vocabulary("zebra,").names == ("zebra",)


def test_round_trips():
    coco = load_vocabulary("coco")
    assert Vocabulary.from_dict(coco.to_dict()) == coco
    assert Vocabulary.from_coco_categories(coco.to_coco_categories()) == coco
    cats = coco.to_coco_categories()
    assert set(cats[0]) >= {"id", "name", "supercategory", "isthing", "color"}
    assert cats[0]["isthing"] == 1 and cats[-1]["isthing"] == 0


def test_to_dict_is_loadable_yaml(tmp_path):
    ade = load_vocabulary("ade20k")
    path = tmp_path / "ade.yaml"
    path.write_text(yaml.safe_dump(ade.to_dict()))
    assert load_vocabulary(str(path)) == ade


def test_from_coco_categories_splits_comma_names():
    vocab = Vocabulary.from_coco_categories(
        [
            {"id": 0, "name": "wall", "isthing": 0, "color": [120, 120, 120]},
            {"id": 6, "name": "road, route", "isthing": 0},
            {"id": 12, "name": "person", "isthing": 1},
        ]
    )
    assert vocab.names == ("wall", "road", "person")
    assert vocab.synonyms[1] == ("road", "route")
    assert vocab.category_ids == (0, 6, 12)
    official = Vocabulary.from_coco_categories(json.loads(COCO_CATEGORIES_JSON.read_text()))
    assert len(official) == 133 and official.names[-1] == "rug-merged"
    assert official.category_ids == load_vocabulary("coco").category_ids


# ---------------------------------------------------------------------------- class table
def test_class_lookups_by_name_and_id():
    coco = load_vocabulary("coco")
    person = coco.by_name("  PERSON ")
    assert (person.id, person.name, person.isthing) == (1, "person", True)
    assert person.color == coco.colors[0] and person.synonyms == coco.synonyms[0]
    assert coco.by_id(person.id) == person and coco.by_id(200).name == "rug"
    assert "Person" in coco and "unicorn" not in coco and 5 not in coco
    assert [c.name for c in coco] == list(coco.names)
    # Synonyms count for index_of (the text classifier) but not for the class table's names.
    ade = load_vocabulary("ade20k")
    assert ade.index_of("route") == ade.names.index("road") and "route" not in ade
    with pytest.raises(KeyError, match="unknown class 'unicorn'; known classes: person, bicycle"):
        coco.by_name("unicorn")
    with pytest.raises(KeyError, match="unknown category id 999"):
        coco.by_id(999)


def test_with_class_adds_the_next_id_and_a_fresh_color():
    vocab = Vocabulary.from_coco_categories(
        [{"id": 3, "name": "cat", "isthing": 1, "color": [10, 20, 30]}, {"id": 7, "name": "grass", "isthing": 0}]
    )
    grown = vocab.with_class(" Scarecrow ", isthing=True)
    assert len(vocab) == 2 and len(grown) == 3  # the original is unchanged
    added = grown.by_name("scarecrow")
    assert (added.id, added.name, added.isthing, added.synonyms) == (8, "Scarecrow", True, ("Scarecrow",))
    assert added.color == generated_colors(1, set(vocab.colors))[0] and added.color not in vocab.colors
    kept = grown.with_class("sky", isthing=False, category_id=5, color=(1, 2, 3))
    assert kept.by_id(5).to_coco() == {"id": 5, "name": "sky", "supercategory": "stuff", "isthing": 0, "color": [1, 2, 3]}
    assert kept.max_category_id == 8
    for bad, match in (("CAT", "in the vocabulary already"), ("  ", "non-empty"), ("a, b", "contains ','")):
        with pytest.raises(ValueError, match=match):
            vocab.with_class(bad, isthing=True)
    with pytest.raises(ValueError, match="duplicate category id 3"):
        vocab.with_class("dog", isthing=True, category_id=3)


def test_coco_categories_without_synonyms():
    coco = load_vocabulary("coco")
    plain = coco.to_coco_categories(with_synonyms=False)
    assert plain == [{k: v for k, v in c.items() if k != "synonyms"} for c in coco.to_coco_categories()]
    assert plain == [c.to_coco() for c in coco]
    assert Vocabulary.from_coco_categories(plain).names == coco.names


def test_label_field_classes_reject_void_id_and_bad_entries():
    from possam_label.fiftyone.autolabel_output import AutolabelOutputError, label_field_classes

    classes = label_field_classes([{"id": 1, "name": "cat"}, {"id": 2, "name": "sky", "isthing": 0}], "here")
    assert classes.names == ("cat", "sky") and classes.isthing == (True, False)
    with pytest.raises(AutolabelOutputError, match="here: class 'wall' has category id 0, which is void"):
        label_field_classes([{"id": 0, "name": "wall"}], "here")
    with pytest.raises(AutolabelOutputError, match="here: bad categories: .*missing 'name'"):
        label_field_classes([{"id": 1}], "here")
    with pytest.raises(AutolabelOutputError, match="here: bad categories: .*duplicate category id 1"):
        label_field_classes([{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}], "here")


def test_identity_is_stable_and_content_sensitive():
    coco = load_vocabulary("coco")
    again = Vocabulary.from_dict(json.loads(json.dumps(coco.to_dict())))
    assert coco.identity() == again.identity()
    assert len(coco.identity()) == 64
    # Same value in a fresh interpreter (no dependence on hash seeds or dict order).
    code = "from possam_label.vocab import load_vocabulary; print(load_vocabulary('coco').identity())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == coco.identity()
    assert load_vocabulary("cat,dog").identity() != load_vocabulary("cat,dog [stuff]").identity()
    assert load_vocabulary("cat,dog").identity() != load_vocabulary("dog,cat").identity()


def test_generated_colors_are_deterministic_and_distinct():
    names = ",".join(f"class{i}" for i in range(400))
    a, b = load_vocabulary(names), load_vocabulary(names)
    assert a.colors == b.colors
    assert len(set(a.colors)) == 400
    assert (0, 0, 0) not in a.colors


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("cat\ndog,,puppy\n", 2, "empty class name or synonym"),
        ("cat\n\n# comment\ngrass [stuf]\n", 4, "unknown marker"),
        ("cat\nbig [stuff] dog\n", 2, "stray"),
        ("cat\ndog\nCat, kitty\n", 3, "duplicate class name"),
        (", cat\n", 1, "empty class name"),
    ],
)
def test_malformed_text_file_names_file_and_line(tmp_path, text, line, reason):
    path = _write(tmp_path, "bad.txt", text)
    with pytest.raises(ValueError) as info:
        load_vocabulary(str(path))
    message = str(info.value)
    assert str(path) in message and f"line {line}" in message and reason in message


@pytest.mark.parametrize(
    "text, entry, reason",
    [
        ("classes:\n  - {name: cat}\n  - {synonyms: [dog]}\n", "entry 2", "missing 'name'"),
        ("- {name: cat}\n- {name: dog, isthing: maybe}\n", "entry 2", "isthing"),
        ("- {name: cat, synonym: [kitty]}\n", "entry 1", "unknown key"),
        ("- {name: cat, color: [1, 2]}\n", "entry 1", "color"),
        ("- {name: cat, id: 3}\n- {name: dog, id: 3}\n", "entry 2", "duplicate category id"),
        ("- {name: cat}\n- {name: cat}\n", "entry 2", "duplicate class name"),
        ("- {name: cat}\n- 7\n", "entry 2", "expected a mapping or a string"),
        ("- {name: cat, synonyms: kitty}\n", "entry 1", "synonyms"),
    ],
)
def test_malformed_yaml_file_names_file_and_entry(tmp_path, text, entry, reason):
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(ValueError) as info:
        load_vocabulary(str(path))
    message = str(info.value)
    assert str(path) in message and entry in message and reason in message


def test_yaml_syntax_and_shape_errors(tmp_path):
    path = _write(tmp_path, "broken.yaml", "- {name: cat\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_vocabulary(str(path))
    path = _write(tmp_path, "shape.yaml", "labels: [cat]\n")
    with pytest.raises(ValueError, match="'classes'"):
        load_vocabulary(str(path))
    path = _write(tmp_path, "empty.yaml", "classes: []\n")
    with pytest.raises(ValueError, match="non-empty list"):
        load_vocabulary(str(path))


def test_empty_text_file_is_an_error(tmp_path):
    path = _write(tmp_path, "empty.txt", "# only a comment\n\n")
    with pytest.raises(ValueError, match="no classes"):
        load_vocabulary(str(path))


def test_unknown_builtin_and_missing_file():
    with pytest.raises(ValueError, match="not a built-in vocabulary"):
        load_vocabulary("cocoo")
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        load_vocabulary("/nonexistent/classes.txt")
    with pytest.raises(FileNotFoundError):
        load_vocabulary("missing.yaml")
    with pytest.raises(ValueError, match="duplicate class name"):
        load_vocabulary("cat,dog,cat")


def test_vocabulary_constructor_validates():
    good = dict(names=("a", "b"), synonyms=(("a",), ("b", "bee")), isthing=(True, False),
                category_ids=(1, 2), colors=((1, 2, 3), (4, 5, 6)))
    assert len(Vocabulary(**good)) == 2
    with pytest.raises(ValueError, match="synonyms\\[0\\]"):
        Vocabulary(**{**good, "synonyms": (("x",), ("b",))})
    with pytest.raises(ValueError, match="duplicate category id"):
        Vocabulary(**{**good, "category_ids": (1, 1)})
    with pytest.raises(ValueError, match="contains ','"):
        Vocabulary(**{**good, "names": ("a,b", "b"), "synonyms": (("a,b",), ("b",))})
    with pytest.raises(ValueError, match="isthing must be a bool"):
        Vocabulary(**{**good, "isthing": (1, 0)})
