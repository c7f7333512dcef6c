"""Words for Shapes World: synonyms, position phrases, caption templates and edit instructions.

Everything here works on objects with .kind .color .size .row .col attributes (ShapeObject) and
never invents an attribute: every caption names, for every object, its colour, kind and cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# The first word of each list is the canonical one.
COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "golden", "lemon"),
    "green": ("green", "emerald"),
    "cyan": ("cyan", "turquoise", "teal"),
    "blue": ("blue", "cobalt"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "hot pink"),
}
KIND_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star", "five-pointed star"),
    "heart": ("heart",),
    "cross": ("cross", "plus sign"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big"),
}
# (row, col) -> labels ("top left") usable after "to the" / before ":" ; the first is canonical.
POSITION_LABELS: dict[tuple[int, int], tuple[str, ...]] = {
    (0, 0): ("top left", "top-left", "upper left"),
    (0, 1): ("top", "top center", "top middle"),
    (0, 2): ("top right", "top-right", "upper right"),
    (1, 0): ("left", "middle left", "left side"),
    (1, 1): ("center", "centre", "middle"),
    (1, 2): ("right", "middle right", "right side"),
    (2, 0): ("bottom left", "bottom-left", "lower left"),
    (2, 1): ("bottom", "bottom center", "bottom middle"),
    (2, 2): ("bottom right", "bottom-right", "lower right"),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _pick(rng: np.random.Generator, options: Sequence[str], p_first: float = 0.6) -> str:
    """The canonical (first) option with probability p_first, otherwise any other one."""
    if len(options) == 1 or rng.random() < p_first:
        return options[0]
    return options[1 + int(rng.integers(len(options) - 1))]


def _choose(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]  # rng.choice would convert to an array: 10x slower


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def canonical_position(row: int, col: int) -> str:
    """'at the top left', 'on the left', 'in the center', 'at the bottom'..."""
    label = POSITION_LABELS[(row, col)][0]
    if (row, col) == (1, 1):
        return "in the center"
    if row == 1:
        return f"on the {label}"
    return f"at the {label}"


def position_phrase(row: int, col: int, rng: np.random.Generator) -> str:
    """A prepositional phrase for a cell, e.g. 'in the upper left corner', 'on the right side'."""
    label = _pick(rng, POSITION_LABELS[(row, col)], 0.5)
    if (row, col) == (1, 1):
        return _choose(rng, ["in the", "at the"]) + " " + label
    if row == 1:
        return ("at the " if label.startswith("middle") else "on the ") + label
    if col == 1:
        if label in ("top", "bottom"):
            return _choose(rng, ["at the ", "along the "]) + label
        return f"at the {label}"
    return _choose(rng, ["at the ", "in the "]) + label + (" corner" if rng.random() < 0.3 else "")


def noun_phrase(obj, rng: np.random.Generator | None, size: bool | None = None, det: bool = True) -> str:
    """'a small crimson disc'. rng None gives the canonical words; size None lets rng decide."""
    if rng is None:
        words = [SIZE_WORDS[obj.size][0]] if size else []
        words += [COLOR_WORDS[obj.color][0], KIND_WORDS[obj.kind][0]]
    else:
        if size is None:
            size = rng.random() < 0.5
        words = [_pick(rng, SIZE_WORDS[obj.size])] if size else []
        words += [_pick(rng, COLOR_WORDS[obj.color]), _pick(rng, KIND_WORDS[obj.kind])]
    text = " ".join(words)
    return f"{article(text)} {text}" if det else text


def join(parts: Sequence[str], sep: str = ", ", last: str = " and ") -> str:
    if len(parts) == 1:
        return parts[0]
    return sep.join(parts[:-1]) + last + parts[-1]


def canonical_caption(objects: Sequence) -> str:
    """Objects in raster order of their cells (what the pixels show, not the draw order)."""
    ordered = sorted(objects, key=lambda o: (o.row, o.col))
    return join([f"{noun_phrase(o, None, size=True)} {canonical_position(o.row, o.col)}" for o in ordered])


# ---- caption templates: each takes (objects in caption order, background words, rng) ----------------
def _t_list(objs, bg, rng):
    return join([f"{noun_phrase(o, rng)} {position_phrase(o.row, o.col, rng)}" for o in objs])


def _t_labels(objs, bg, rng):
    return "; ".join(f"{_pick(rng, POSITION_LABELS[(o.row, o.col)], 0.5)}: {noun_phrase(o, rng)}"
                     for o in objs)


def _t_there_is(objs, bg, rng):
    return "there is " + _t_list(objs, bg, rng)


def _t_pos_first(objs, bg, rng):
    return join([f"{position_phrase(o.row, o.col, rng)} there is {noun_phrase(o, rng)}" for o in objs],
                sep="; ", last="; and ")


def _t_picture(objs, bg, rng):
    kind = _choose(rng, ["a picture", "an image", "a drawing", "a simple illustration"])
    return f"{kind} of {_t_list(objs, bg, rng)}"


def _t_terse(objs, bg, rng):
    return "; ".join(f"{noun_phrase(o, rng, det=False)}, {_pick(rng, POSITION_LABELS[(o.row, o.col)], 0.5)}"
                     for o in objs)


def _t_count(objs, bg, rng):
    n = len(objs)
    noun = "shape" if n == 1 else "shapes"
    return f"{NUMBER_WORDS[n]} {noun} on {article(bg)} {bg} background: {_t_list(objs, bg, rng)}"


def _t_kind_in_color(objs, bg, rng):
    parts = []
    for o in objs:
        kind = _pick(rng, KIND_WORDS[o.kind])
        color = _pick(rng, COLOR_WORDS[o.color]).replace("golden", "gold")  # "in gold", not "in golden"
        parts.append(f"{article(kind)} {kind} in {color} "
                     f"{position_phrase(o.row, o.col, rng)}")
    return join(parts)


def _t_pos_is(objs, bg, rng):
    verb = _choose(rng, ["is", "sits", "you can see"])
    return join([f"{position_phrase(o.row, o.col, rng)} {verb} {noun_phrase(o, rng)}" for o in objs])


def _t_obj_is(objs, bg, rng):
    verb = _choose(rng, ["is", "sits", "appears"])
    return join([f"{noun_phrase(o, rng)} {verb} {position_phrase(o.row, o.col, rng)}" for o in objs])


def _t_on_background(objs, bg, rng):
    return f"{_t_list(objs, bg, rng)} on {article(bg)} {bg} background"


def _t_shows(objs, bg, rng):
    return f"{_choose(rng, ['the image shows', 'this scene shows', 'we see'])} {_t_list(objs, bg, rng)}"


TEMPLATES: tuple[Callable, ...] = (
    _t_list, _t_labels, _t_there_is, _t_pos_first, _t_picture, _t_terse, _t_count,
    _t_kind_in_color, _t_pos_is, _t_obj_is, _t_on_background, _t_shows,
)


def caption(objects: Sequence, background_words: Sequence[str], rng: np.random.Generator) -> str:
    """A random true caption: random template, random object order, random synonyms."""
    objs = [objects[i] for i in rng.permutation(len(objects))]
    bg = _pick(rng, background_words)
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))](objs, bg, rng)


# ---- edit instructions -----------------------------------------------------------------------------
def reference(obj, objects: Sequence, rng: np.random.Generator) -> str:
    """'the red circle', plus its position when another object has the same colour and kind
    (and sometimes anyway), so the target is never ambiguous."""
    ref = f"the {noun_phrase(obj, rng, size=False, det=False)}"
    twins = sum(o.color == obj.color and o.kind == obj.kind for o in objects)
    if twins > 1 or rng.random() < 0.3:
        ref += " " + position_phrase(obj.row, obj.col, rng)
    return ref


SIZE_ORDER = ("small", "medium", "large")


def instruction(kind: str, obj, objects: Sequence, rng: np.random.Generator, new=None) -> str:
    """Instruction text for an edit of `obj` (for "add", `obj` is the new object)."""
    if kind == "add":
        np_ = noun_phrase(obj, rng, size=True)
        pos = position_phrase(obj.row, obj.col, rng)
        return _choose(rng, [f"add {np_} {pos}", f"put {np_} {pos}", f"place {np_} {pos}",
                             f"draw {np_} {pos}", f"{pos}, add {np_}"])
    ref = reference(obj, objects, rng)
    if kind == "remove":
        verb = _choose(rng, ["remove", "delete", "take away", "get rid of", "erase"])
        return f"{verb} {ref}"
    if kind == "recolor":
        c = _pick(rng, COLOR_WORDS[new.color])
        return _choose(rng, [f"make {ref} {c}", f"change the colour of {ref} to {c}",
                             f"recolor {ref} to {c}", f"paint {ref} {c}", f"turn {ref} {c}"])
    if kind == "move":
        label = _pick(rng, POSITION_LABELS[(new.row, new.col)], 0.5)
        return _choose(rng, [f"move {ref} to the {label}", f"shift {ref} to the {label}",
                             f"put {ref} {position_phrase(new.row, new.col, rng)} instead",
                             f"relocate {ref} to the {label}"])
    if kind == "resize":
        s = _pick(rng, SIZE_WORDS[new.size])
        step = SIZE_ORDER.index(new.size) - SIZE_ORDER.index(obj.size)
        relative = {1: "bigger", 2: "much bigger", -1: "smaller", -2: "much smaller"}[step]
        size = new.size  # "resize to little" reads badly: the plain word after "to"
        return _choose(rng, [f"make {ref} {s}", f"resize {ref} to {size}", f"make {ref} {relative}",
                             f"change the size of {ref} to {size}"])
    raise ValueError(f"unknown edit kind {kind!r}")
