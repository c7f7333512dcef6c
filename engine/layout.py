"""Layouts and boxes: the conditions of generation from a segmentation map (`Engine.from_layout`) and
from labelled boxes (`Engine.ground`), checked and read from files.

A layout is a class map, (H, W) ints, each a segmentation class (0 = background). It may be the
model's grid itself (what `tessera segment` writes as OUT.classes.npy) or any larger map (a class-id
PNG such as OUT.classes.png, or a PNG painted in the class colours, `PALETTE`): each grid cell then
takes the class most of its pixels have. A box is (label, (x0, y0, x1, y1)) on the 0-255 grid, the
whole image being (0, 0) -> (255, 255), whatever its size in pixels.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from engine.errors import BadInputError

# One colour per segmentation class (class 0, background, is black): the studio's overlay and layout
# brushes, the CLI's segmentation overlay and coloured layout files all use these.
PALETTE = np.array(
    [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128)],
    dtype=np.uint8,
)
COLOUR_TOLERANCE = 12  # per channel: a coloured layout saved through a lossy path still reads back
BOX_GRID = 255


def layout_cells(class_map, grid: tuple[int, int], n_classes: int) -> np.ndarray:
    """A class map of at least the grid's size -> the (gh, gw) class grid (majority per cell)."""
    arr = np.asarray(class_map)
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise BadInputError(f"a layout is a 2-D array of class ids, got shape {arr.shape} of {arr.dtype}")
    gh, gw = grid
    h, w = arr.shape
    if h < gh or w < gw:
        raise BadInputError(f"the layout is {w}x{h}: it needs at least this model's {gw}x{gh} grid "
                            "(one class per cell)")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n_classes)
    if bad.any():
        y, x = (int(v) for v in np.argwhere(bad)[0])
        raise BadInputError(f"the layout has class id {arr[y, x]} at x={x}, y={y}; this model has "
                            f"classes 0-{n_classes - 1}")
    if (h, w) == (gh, gw):
        return arr
    rows = (np.arange(h) * gh) // h
    cols = (np.arange(w) * gw) // w
    counts = np.zeros((gh, gw, n_classes), np.int64)
    np.add.at(counts, (rows[:, None], cols[None, :], arr), 1)
    return counts.argmax(axis=2)


def colour_classes(rgb: np.ndarray, n_classes: int, what: str = "the layout") -> np.ndarray:
    """(H, W, 3) pixels painted in the class colours -> (H, W) class ids; any other colour is refused."""
    palette = PALETTE[:n_classes].astype(np.int32)
    diff = np.abs(rgb[:, :, None, :].astype(np.int32) - palette[None, None]).max(axis=3)
    nearest = diff.argmin(axis=2)
    unknown = diff.min(axis=2) > COLOUR_TOLERANCE
    if unknown.any():
        y, x = (int(v) for v in np.argwhere(unknown)[0])
        colours = ", ".join(f"#{r:02x}{g:02x}{b:02x}" for r, g, b in palette)
        example = "#" + "".join(f"{int(v):02x}" for v in rgb[y, x])
        raise BadInputError(f"{what}: {int(unknown.sum())} pixels have colours that are no class colour "
                            f"(e.g. {example} at x={x}, y={y}); classes 0-{n_classes - 1} are {colours}")
    return nearest


def read_layout(path: str | Path, n_classes: int) -> np.ndarray:
    """A layout file -> (H, W) class ids: a .npy class grid, a class-id PNG (grey, pixel = class id)
    or a PNG painted in the class colours."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise BadInputError(f"{path}: no such file") from None
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{path}: not a class grid (.npy of ints): {exc}") from None
        if arr.ndim != 2 or arr.dtype.kind not in "iu":
            raise BadInputError(f"{path}: a class grid is a 2-D array of ints, not {arr.shape} {arr.dtype}")
        return arr
    from engine.imageio import load_image

    rgb = load_image(path, size=None).astype(np.int32)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        ids = rgb[..., 0]  # grey: pixel value = class id (what `tessera segment` writes)
        if ids.max() < n_classes:
            return ids
    return colour_classes(rgb.astype(np.uint8), n_classes, str(path))


def check_box(label: str, box) -> tuple[str, tuple[int, int, int, int]]:
    """(label, (x0, y0, x1, y1)) with whole numbers inside the 0-255 grid, x0 <= x1, y0 <= y1."""
    values = tuple(box)
    if len(values) != 4 or not all(isinstance(v, (int, np.integer)) or float(v).is_integer() for v in values):
        raise BadInputError(f"box {values} for {label!r}: need four whole numbers x0, y0, x1, y1")
    x0, y0, x1, y1 = (int(v) for v in values)
    if not (0 <= x0 <= x1 <= BOX_GRID and 0 <= y0 <= y1 <= BOX_GRID):
        raise BadInputError(f"box ({x0}, {y0}, {x1}, {y1}) for {label!r} is off the 0-{BOX_GRID} grid or "
                            f"inside out: need 0 <= x0 <= x1 <= {BOX_GRID} and 0 <= y0 <= y1 <= {BOX_GRID}")
    return label, (x0, y0, x1, y1)


_BOX = re.compile(r"^(?P<label>.+):\s*(?P<nums>-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+)\s*$")


def parse_box(text: str) -> tuple[str, tuple[int, int, int, int]]:
    """'a red star:10,20,90,120' -> ('a red star', (10, 20, 90, 120)) on the 0-255 grid."""
    m = _BOX.match(text)
    if m is None or not m["label"].strip():
        raise BadInputError(f"--box {text!r}: expected LABEL:x0,y0,x1,y1 (whole numbers, 0-{BOX_GRID}), "
                            "e.g. 'a red star:10,20,90,120'")
    return check_box(m["label"].strip(), [int(v) for v in m["nums"].split(",")])
