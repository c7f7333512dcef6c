"""The single integer id space shared by text, image, and segmentation tokens.

Layout (contiguous ranges, in this order):

    specials      <pad> <eos> <break> <mask:0>..<mask:15> <infill>
    text          byte-level BPE ids, offset by `text_offset`
    image         <img:0>..<img:K-1>, one per VQ code
    segmentation  <seg:0>..<seg:C-1>, one per class

A `Vocab` is saved as JSON inside every model bundle.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.errors import BadInputError, BundleError

NUM_MASKS = 16
HOLE_MASK = 15  # <mask:15> stands for a masked grid cell in an infill prompt (engine/instructions.py)
SPECIAL_NAMES = ("<pad>", "<eos>", "<break>", *(f"<mask:{i}>" for i in range(NUM_MASKS)), "<infill>")


@dataclass(frozen=True)
class Vocab:
    text_size: int  # number of BPE ids
    image_size: int  # codebook size K
    seg_size: int  # number of segmentation classes C
    image_grid: tuple[int, int] = (8, 8)  # (H, W) codes per image

    pad = 0
    eos = 1
    brk = 2
    infill = 3 + NUM_MASKS

    def __post_init__(self) -> None:
        grid = tuple(int(g) for g in self.image_grid)
        if len(grid) != 2 or min(grid) <= 0:
            raise ValueError(f"Vocab.image_grid must be two positive ints, got {self.image_grid}")
        object.__setattr__(self, "image_grid", grid)
        for name in ("text_size", "image_size", "seg_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Vocab.{name} must be positive, got {getattr(self, name)}")

    # -- ranges ---------------------------------------------------------------------------
    @property
    def num_specials(self) -> int:
        return len(SPECIAL_NAMES)

    @property
    def text_offset(self) -> int:
        return self.num_specials

    @property
    def image_offset(self) -> int:
        return self.text_offset + self.text_size

    @property
    def seg_offset(self) -> int:
        return self.image_offset + self.image_size

    @property
    def size(self) -> int:
        return self.seg_offset + self.seg_size

    @property
    def image_tokens_per_image(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    def mask(self, i: int) -> int:
        if not 0 <= i < NUM_MASKS:
            raise ValueError(f"mask index {i} outside 0..{NUM_MASKS - 1}")
        return 3 + i

    def is_mask(self, ids: np.ndarray | int) -> np.ndarray | bool:
        ids = np.asarray(ids)
        return (ids >= 3) & (ids < 3 + NUM_MASKS)

    def is_text(self, ids: np.ndarray | int) -> np.ndarray | bool:
        ids = np.asarray(ids)
        return (ids >= self.text_offset) & (ids < self.image_offset)

    def is_image(self, ids: np.ndarray | int) -> np.ndarray | bool:
        ids = np.asarray(ids)
        return (ids >= self.image_offset) & (ids < self.seg_offset)

    def is_seg(self, ids: np.ndarray | int) -> np.ndarray | bool:
        ids = np.asarray(ids)
        return (ids >= self.seg_offset) & (ids < self.size)

    def is_grid(self, ids: np.ndarray | int) -> np.ndarray | bool:
        """Tokens that fill one grid cell: image codes, segmentation classes and the infill hole."""
        ids = np.asarray(ids)
        return (ids >= self.image_offset) & (ids < self.size) | (ids == self.mask(HOLE_MASK))

    # -- conversions (each validates its input range) ---------------------------------------
    def text_ids(self, bpe_ids: Iterable[int]) -> np.ndarray:
        return _shift(bpe_ids, self.text_offset, self.text_size, "BPE id")

    def image_ids(self, codes: Iterable[int]) -> np.ndarray:
        return _shift(codes, self.image_offset, self.image_size, "image code")

    def seg_ids(self, classes: Iterable[int]) -> np.ndarray:
        return _shift(classes, self.seg_offset, self.seg_size, "segmentation class")

    def to_bpe(self, ids: Iterable[int]) -> np.ndarray:
        return _unshift(ids, self.text_offset, self.text_size, "a text")

    def to_codes(self, ids: Iterable[int]) -> np.ndarray:
        return _unshift(ids, self.image_offset, self.image_size, "an image")

    def to_classes(self, ids: Iterable[int]) -> np.ndarray:
        return _unshift(ids, self.seg_offset, self.seg_size, "a segmentation")

    def validate(self, ids: Iterable[int]) -> np.ndarray:
        arr = _as_int_array(ids, "token ids")
        bad = np.flatnonzero((arr < 0) | (arr >= self.size))
        if bad.size:
            first = int(bad[0])
            raise BadInputError(
                f"token id {int(arr.flat[first])} at position {first} is outside 0..{self.size - 1}"
            )
        return arr

    def name(self, token_id: int) -> str:
        """A readable name for one id (debugging, docs)."""
        self.validate([token_id])
        if token_id < self.num_specials:
            return SPECIAL_NAMES[token_id]
        if token_id < self.image_offset:
            return f"<text:{token_id - self.text_offset}>"
        if token_id < self.seg_offset:
            return f"<img:{token_id - self.image_offset}>"
        return f"<seg:{token_id - self.seg_offset}>"

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_grid"] = list(self.image_grid)
        d["specials"] = list(SPECIAL_NAMES)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if list(d.get("specials", SPECIAL_NAMES)) != list(SPECIAL_NAMES):
            raise ValueError("vocab specials differ from this version of Tessera")
        return cls(int(d["text_size"]), int(d["image_size"]), int(d["seg_size"]), tuple(d["image_grid"]))

    def save(self, path: str | Path) -> None:
        from engine.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"cannot read the vocabulary {path}: {exc}") from exc


def _as_int_array(values: Iterable[int], what: str) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise BadInputError(f"{what} must be integers, got {arr.dtype}")
    return arr.astype(np.int64)


def _shift(values: Iterable[int], offset: int, size: int, what: str) -> np.ndarray:
    arr = _as_int_array(values, what)
    bad = np.flatnonzero((arr < 0) | (arr >= size))
    if bad.size:
        raise BadInputError(f"{what} {int(arr.flat[bad[0]])} is outside 0..{size - 1}")
    return arr + offset


def _unshift(ids: Iterable[int], offset: int, size: int, what: str) -> np.ndarray:
    arr = _as_int_array(ids, "token ids")
    bad = np.flatnonzero((arr < offset) | (arr >= offset + size))
    if bad.size:
        raise BadInputError(
            f"token id {int(arr.flat[bad[0]])} is not {what} token (expected {offset}..{offset + size - 1})"
        )
    return arr - offset
