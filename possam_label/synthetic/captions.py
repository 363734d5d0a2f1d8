"""Captions of synthetic-world crops, patches and scenes for the small CLIP's contrastive term."""

from __future__ import annotations

import colorsys
from typing import Optional, Sequence

import numpy as np

from ..model.clip_backbone import VILD_TEMPLATES


def colour_name(rgb: Sequence[float]) -> str:
    """A plain English colour word for a mean RGB (0-255)."""
    r, g, b = (float(c) / 255.0 for c in rgb)
    hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
    if val < 0.2:
        return "black"
    if sat < 0.2:
        return "white" if val > 0.8 else ("grey" if val > 0.4 else "dark grey")
    deg = hue * 360
    if deg < 15 or deg >= 340:
        name = "red"
    elif deg < 40:
        name = "brown" if val < 0.6 else "orange"
    elif deg < 70:
        name = "olive" if val < 0.5 else "yellow"
    elif deg < 160:
        name = "green"
    elif deg < 195:
        name = "cyan"
    elif deg < 255:
        name = "blue"
    elif deg < 290:
        name = "purple"
    else:
        name = "pink" if val > 0.6 else "magenta"
    if sat < 0.45 and name not in ("brown", "olive"):
        name = "pale " + name
    elif val < 0.45 and name not in ("brown", "olive"):
        name = "dark " + name
    return name


def size_word(area_fraction: float) -> str:
    """'small' / 'medium' / 'large' for an instance covering ``area_fraction`` of the scene."""
    return "small" if area_fraction < 0.01 else ("medium" if area_fraction < 0.04 else "large")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class CaptionGenerator:
    """Natural-ish captions for the synthetic world, a pure function of the generator passed in.

    Args:
        synonyms: per class, its synonyms (``synonyms[k][0]`` is the class name).
    """

    THING_TEMPLATES = (
        "a photo of {a} {colour} {syn}.",
        "{a} {colour} {syn} on {stuff}.",
        "{a} {colour} {syn} in front of the {stuff}.",
        "a {size} {colour} {syn}.",
        "{a} {colour} {syn}",
        "the {syn} is {colour}.",
        "a photo of a {size} {syn}.",
        "{a_syn} {syn} on {stuff}.",
        "{syn}",
        "{a_syn} {syn}.",
    )
    STUFF_TEMPLATES = (
        "{syn}",
        "a photo of {syn}.",
        "a patch of {syn}.",
        "a close-up of {syn}.",
        "{syn} texture",
        "a photo of the {syn}.",
    )

    def __init__(self, synonyms: Sequence[Sequence[str]]) -> None:
        self.synonyms = [tuple(s) for s in synonyms]

    def synonym(self, rng: np.random.Generator, class_index: int) -> str:
        syns = self.synonyms[class_index]
        # The class name itself half the time, a synonym otherwise.
        return syns[0] if rng.random() < 0.5 or len(syns) == 1 else syns[int(rng.integers(1, len(syns)))]

    def class_prompt(self, rng: np.random.Generator, class_index: int) -> str:
        """One ViLD template with one synonym (the form PosSAM's text classifier uses)."""
        return VILD_TEMPLATES[int(rng.integers(len(VILD_TEMPLATES)))].format(self.synonym(rng, class_index))

    def thing(self, rng: np.random.Generator, class_index: int, colour: str, area_fraction: float, stuff_index: Optional[int]) -> str:
        """Caption of a thing crop (``stuff_index``: the class of the background, if one dominates)."""
        roll = rng.random()
        if roll < 0.2:
            return self.class_prompt(rng, class_index)
        syn = self.synonym(rng, class_index)
        choices = [t for t in self.THING_TEMPLATES if stuff_index is not None or "{stuff}" not in t]
        template = choices[int(rng.integers(len(choices)))]
        stuff = self.synonym(rng, stuff_index) if stuff_index is not None else ""
        return template.format(
            a=_article(colour), colour=colour, syn=syn, stuff=stuff, size=size_word(area_fraction), a_syn=_article(syn)
        )

    def stuff(self, rng: np.random.Generator, class_index: int) -> str:
        """Caption of a patch of one stuff class."""
        if rng.random() < 0.3:
            return self.class_prompt(rng, class_index)
        template = self.STUFF_TEMPLATES[int(rng.integers(len(self.STUFF_TEMPLATES)))]
        return template.format(syn=self.synonym(rng, class_index))

    def scene(self, rng: np.random.Generator, things: Sequence[tuple[int, str]], stuff: Sequence[int]) -> str:
        """Caption listing a scene's contents.

        Args:
            things: (class index, colour) of the things, largest first.
            stuff: stuff class indices, largest first.
        """
        stuff_words = [self.synonym(rng, k) for k in stuff[:2]]
        background = " and ".join(stuff_words) if stuff_words else "a plain background"
        if not things:
            return ["a photo of {}.", "{}", "an empty scene of {}."][int(rng.integers(3))].format(background)
        listed = things[:3]
        items = []
        for k, colour in listed:
            syn = self.synonym(rng, k)
            items.append(f"{_article(colour)} {colour} {syn}" if rng.random() < 0.7 else f"{_article(syn)} {syn}")
        joined = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        form = int(rng.integers(3))
        if form == 0:
            return f"{joined} on {background}."
        if form == 1:
            return f"a photo of {background} with {joined}."
        count = _NUMBER_WORDS[min(len(things), 9)]
        noun = "shape" if len(things) == 1 else "shapes"
        return f"{count} {noun} on {background}, including {joined}."
