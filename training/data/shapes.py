"""Shapes World: procedurally generated scenes of 1-3 flat shapes, with captions, masks, boxes and
before/after edit pairs. Deterministic: every sample is a pure function of (split, seed, index).

Layout: the image is a 3x3 grid of cells; each object sits in its own cell (centre jittered by at
most 2 % of the image) so its named position is never ambiguous. Draw order = occlusion order.
Held-out compositions: the (colour, kind) pairs in HELDOUT_PAIRS never occur in the train, val and
test splits; every "heldout" scene contains at least one of them.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from engine.errors import BadInputError
from engine.shapes_world import CELL_CENTERS, COLORS, KINDS, PLAIN_BACKGROUNDS, POSITIONS, SEG_CLASSES
from training.data import shapes_render as R
from training.data import shapes_text as T

_RGB = {name: np.asarray(rgb, np.float32) for name, rgb in COLORS.items()}
SIZES: tuple[str, ...] = ("small", "medium", "large")
SIZE_FRACTION = {"small": 0.21, "medium": 0.30, "large": 0.38}  # glyph diameter / image side
MAX_JITTER_STEPS, JITTER_STEP = 5, 0.004  # centre jitter in [-0.02, 0.02] of the image side
# Neutral backgrounds, far from every object colour. name -> (render spec, caption words)
BACKGROUNDS: dict[str, tuple[tuple, tuple[str, ...]]] = {
    "light grey": (("plain", PLAIN_BACKGROUNDS["light grey"]), ("light grey", "pale grey", "light gray")),
    "cream": (("plain", PLAIN_BACKGROUNDS["cream"]), ("cream", "off-white")),
    "dark grey": (("plain", PLAIN_BACKGROUNDS["dark grey"]), ("dark grey", "charcoal", "dark gray")),
    "stripes": (("stripes", (229, 229, 229), (211, 211, 211)), ("striped", "pinstriped")),
    "checker": (("checker", (231, 231, 231), (213, 213, 213)), ("checkered", "checkerboard")),
}
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("red", "star"), ("orange", "square"), ("yellow", "triangle"), ("green", "heart"),
    ("cyan", "circle"), ("blue", "cross"), ("purple", "triangle"), ("pink", "square"),
})
_HELDOUT_SORTED = tuple(sorted(HELDOUT_PAIRS))
_BG_NAMES = tuple(BACKGROUNDS)
EDIT_KINDS: tuple[str, ...] = ("recolor", "remove", "add", "move", "resize")
SPLITS: dict[str, int] = {"train": 2**31, "val": 2000, "test": 2000, "heldout": 2000}


@dataclass(frozen=True)
class ShapeObject:
    kind: str
    color: str
    size: str
    row: int  # 0..2, top to bottom
    col: int  # 0..2, left to right
    dx: float = 0.0  # centre jitter, fraction of the image side
    dy: float = 0.0

    @property
    def position(self) -> str:
        return POSITIONS[self.row][self.col]

    def center(self) -> tuple[float, float]:
        return CELL_CENTERS[self.col] + self.dx, CELL_CENTERS[self.row] + self.dy


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]  # draw order = occlusion order (later on top)
    background: str

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [dataclasses.asdict(o) for o in self.objects]}

    @staticmethod
    def from_dict(d: dict) -> Scene:
        return Scene(tuple(ShapeObject(**o) for o in d["objects"]), d["background"])


@dataclass(frozen=True)
class Sample:
    scene: Scene
    image: np.ndarray  # (size, size, 3) uint8
    caption: str
    canonical: str
    mask: np.ndarray  # (size, size) uint8 class ids
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class EditSample:
    before: Sample
    after: Sample
    kind: str
    instruction: str


# ---- rendering -------------------------------------------------------------------------------------
def _draw(scene: Scene, size: int, want_image: bool = True, want_mask: bool = True):
    img = R.background(BACKGROUNDS[scene.background][0], size).copy() if want_image else None
    mask = np.zeros((size, size), np.uint8) if want_mask else None
    for obj in scene.objects:
        cx, cy = obj.center()
        tx, ty, cover, hard = R.place(obj.kind, cx * size, cy * size, SIZE_FRACTION[obj.size] * size)
        sl = R.clip(tx, ty, hard.shape[0], hard.shape[1], size)
        if sl is None:
            continue
        ys, xs, gy, gx = sl
        if img is not None:
            region = img[ys, xs]
            region += cover[gy, gx] * (_RGB[obj.color] - region)
        if mask is not None:
            mask[ys, xs][hard[gy, gx]] = KINDS.index(obj.kind) + 1
    if img is not None:
        img = (img + 0.5).astype(np.uint8)
    return img, mask


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """(size, size, 3) uint8 RGB, antialiased."""
    return _draw(scene, size, want_mask=False)[0]


def class_mask(scene: Scene, size: int = 64) -> np.ndarray:
    """(size, size) uint8: 0 background, 1 + KINDS index where a glyph covers >= half a pixel."""
    return _draw(scene, size, want_image=False)[1]


def seg_grid(scene: Scene, grid: int = 8) -> np.ndarray:
    """(grid, grid) uint8: majority class of each 8x8 pixel cell of the (8*grid)^2 class mask
    (ties go to the lower class id)."""
    m = class_mask(scene, grid * 8).reshape(grid, 8, grid, 8).transpose(0, 2, 1, 3).reshape(grid, grid, 64)
    counts = (m[..., None] == np.arange(len(SEG_CLASSES), dtype=np.uint8)).sum(axis=2)
    return counts.argmax(axis=-1).astype(np.uint8)


def boxes(scene: Scene, size: int = 256) -> list[tuple[int, int, int, int]]:
    """Tight (x0, y0, x1, y1) of each whole object (occluded parts included) on a 0..size-1 grid."""
    out = []
    for obj in scene.objects:
        cx, cy = obj.center()
        d = SIZE_FRACTION[obj.size]
        e = R.unit_extent(obj.kind)
        edges = (cx - d / 2 + e[0] * d, cy - d / 2 + e[1] * d, cx - d / 2 + e[2] * d, cy - d / 2 + e[3] * d)
        x0, y0 = (min(max(math.floor(v * size), 0), size - 1) for v in edges[:2])
        x1, y1 = (min(max(math.ceil(v * size) - 1, 0), size - 1) for v in edges[2:])
        out.append((x0, y0, x1, y1))
    return out


# ---- text ------------------------------------------------------------------------------------------
def canonical_caption(scene: Scene) -> str:
    """One fixed template, objects in raster order of their cells, sizes included:
    'a large red circle at the top left and a small blue square in the center'."""
    return T.canonical_caption(scene.objects)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random true caption (12 templates, synonyms, random object order)."""
    return str(T.caption(scene.objects, BACKGROUNDS[scene.background][1], rng))


# ---- scene sampling --------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _pairs(forbidden: frozenset) -> tuple[tuple[str, str], ...]:
    return tuple((c, k) for c in COLORS for k in KINDS if (c, k) not in forbidden)


def _object_from(u: np.ndarray, row: int, col: int, pairs: tuple[tuple[str, str], ...]) -> ShapeObject:
    """An object in cell (row, col) from four uniforms: pair, size, dx, dy."""
    color, kind = pairs[int(u[0] * len(pairs))]
    steps = 2 * MAX_JITTER_STEPS + 1
    dx, dy = (int(v * steps) - MAX_JITTER_STEPS for v in u[2:4])
    return ShapeObject(kind=kind, color=color, size=SIZES[int(u[1] * 3)], row=row, col=col,
                       dx=round(dx * JITTER_STEP, 4), dy=round(dy * JITTER_STEP, 4))


def random_scene(rng: np.random.Generator, n_objects: int | tuple[int, int] = (1, 3),
                 forbidden: frozenset = HELDOUT_PAIRS, require_heldout: bool = False) -> Scene:
    """Objects in distinct random cells, random draw order. n_objects: exact count or (lo, hi).
    One vector of uniforms per scene: numpy's per-call overhead dominates otherwise."""
    lo, hi = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
    if not 1 <= lo <= hi <= 9:
        raise BadInputError(f"a scene holds 1 to 9 objects, not {n_objects}")
    u = rng.random(12 + 4 * 9)
    n = lo + int(u[0] * (hi - lo + 1))
    cells = np.argsort(u[3:12])[:n]
    special = int(u[2] * n) if require_heldout else -1
    pairs = _pairs(frozenset() if require_heldout else forbidden)
    objs = tuple(_object_from(u[12 + 4 * i: 16 + 4 * i], int(c) // 3, int(c) % 3,
                              _HELDOUT_SORTED if i == special else pairs) for i, c in enumerate(cells))
    return Scene(objs, _BG_NAMES[int(u[1] * len(_BG_NAMES))])


# ---- edits -----------------------------------------------------------------------------------------
def feasible_edits(scene: Scene, max_objects: int = 3) -> tuple[str, ...]:
    n = len(scene.objects)
    blocked = {"remove": n < 2, "add": n >= max_objects, "move": n >= 9}
    return tuple(k for k in EDIT_KINDS if not blocked.get(k, False))


def make_edit(scene: Scene, kind: str, rng: np.random.Generator,
              forbidden: frozenset = HELDOUT_PAIRS) -> tuple[Scene, str]:
    """(after scene, instruction). New colour/kind pairs avoid `forbidden` (pass frozenset() on the
    held-out split). 'bigger'/'smaller' mean one size step, 'much bigger'/'much smaller' two."""
    objs = list(scene.objects)
    if kind not in EDIT_KINDS:
        raise BadInputError(f"unknown edit kind {kind!r}; expected one of {', '.join(EDIT_KINDS)}")
    if kind == "remove" and len(objs) < 2:
        raise BadInputError("'remove' needs a scene with at least two objects")
    free = [(r, c) for r in range(3) for c in range(3) if all((o.row, o.col) != (r, c) for o in objs)]
    if kind in ("add", "move") and not free:
        raise BadInputError(f"'{kind}' needs a free cell")
    if kind == "add":
        r, c = free[int(rng.integers(len(free)))]
        new = _object_from(rng.random(4), r, c, _pairs(forbidden))
        return Scene((*objs, new), scene.background), T.instruction("add", new, objs, rng)
    i = int(rng.integers(len(objs)))
    old = objs[i]
    if kind == "remove":
        new = None
    elif kind == "recolor":
        colors = [c for c in COLORS if c != old.color and (c, old.kind) not in forbidden]
        new = dataclasses.replace(old, color=colors[int(rng.integers(len(colors)))])
    elif kind == "move":
        r, c = free[int(rng.integers(len(free)))]
        new = dataclasses.replace(old, row=r, col=c)
    else:
        sizes = [s for s in SIZES if s != old.size]
        new = dataclasses.replace(old, size=sizes[int(rng.integers(len(sizes)))])
    text = T.instruction(kind, old, objs, rng, new)
    after = objs[:i] + objs[i + 1:] if new is None else objs[:i] + [new] + objs[i + 1:]
    return Scene(tuple(after), scene.background), text


# ---- the dataset -----------------------------------------------------------------------------------
class ShapesWorld:
    """Deterministic Shapes World split. train is effectively infinite (len 2**31)."""

    def __init__(self, split: str = "train", seed: int = 0, size: int = 64, max_objects: int = 3):
        if split not in SPLITS:
            raise BadInputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if not 1 <= max_objects <= 9:
            raise BadInputError(f"max_objects must be 1..9, not {max_objects}")
        self.split, self.seed, self.size, self.max_objects = split, int(seed), int(size), max_objects
        self._split_id = zlib.crc32(split.encode())  # stable across runs, unlike hash()
        self.forbidden = frozenset() if split == "heldout" else HELDOUT_PAIRS

    def __len__(self) -> int:
        return SPLITS[self.split]

    def rng(self, index: int, stream: int = 0) -> np.random.Generator:
        """The generator of one sample: a distinct stream per (split, seed, index, stream)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for split {self.split!r} (len {len(self)})")
        return np.random.default_rng(np.random.SeedSequence([self._split_id, self.seed, int(index), stream]))

    def random_scene(self, rng: np.random.Generator, n_objects: int | tuple[int, int] | None = None) -> Scene:
        return random_scene(rng, (1, self.max_objects) if n_objects is None else n_objects,
                            self.forbidden, require_heldout=self.split == "heldout")

    def scene(self, index: int) -> Scene:
        return self.random_scene(self.rng(index))

    def _sample(self, scene: Scene, rng: np.random.Generator) -> Sample:
        image, mask = _draw(scene, self.size)
        return Sample(scene, image, caption(scene, rng), canonical_caption(scene), mask, boxes(scene))

    def sample(self, index: int) -> Sample:
        rng = self.rng(index)
        return self._sample(self.random_scene(rng), rng)

    __getitem__ = sample

    def batch(self, indices) -> np.ndarray:
        """Images only: (N, size, size, 3) uint8."""
        out = np.empty((len(indices), self.size, self.size, 3), np.uint8)
        for k, i in enumerate(indices):
            out[k] = _draw(self.scene(int(i)), self.size, want_mask=False)[0]
        return out

    def edit_sample(self, index: int, kind: str | None = None) -> EditSample:
        """A before/after pair; the before scene has room for the edit (add keeps <= max_objects)."""
        rng = self.rng(index, stream=1)
        if kind is None:
            kind = EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
        lo = 2 if kind == "remove" else 1
        hi = self.max_objects - 1 if kind == "add" else self.max_objects
        if lo > hi:
            raise BadInputError(f"edit {kind!r} impossible with max_objects={self.max_objects}")
        before = self.random_scene(rng, (lo, hi))
        after, text = make_edit(before, kind, rng, self.forbidden)
        return EditSample(self._sample(before, rng), self._sample(after, rng), kind, text)
