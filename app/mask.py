"""Mask arithmetic in numpy: brush dabs, strokes, regions, feathering and inpaint compositing.

No Qt here, so every rule the studio relies on (an eraser really erases, compositing leaves
unmasked pixels bit-identical) is tested directly on arrays.

The mask is painted at `scale` times the image resolution (a 64x64 model image gets a 512x512
mask) so strokes look smooth on screen; `to_alpha` brings it back to image pixels.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def brush_kernel(radius: float, hardness: float) -> np.ndarray:
    """A round dab, float32 in [0, 1]: 1 inside `hardness * radius`, falling smoothly to 0 at `radius`."""
    radius = max(float(radius), 0.5)
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    dist = np.sqrt(xx * xx + yy * yy)
    inner = radius * float(np.clip(hardness, 0.0, 1.0))
    if radius - inner < 1e-3:  # hard brush: a one-pixel antialiased rim
        return np.clip(radius + 0.5 - dist, 0.0, 1.0)
    t = np.clip((radius - dist) / (radius - inner), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)  # smoothstep


def stamp(mask: np.ndarray, x: float, y: float, kernel: np.ndarray, erase: bool = False) -> tuple | None:
    """Apply one dab centred at (x, y) in place. Returns the touched (x0, y0, x1, y1) or None."""
    r = kernel.shape[0] // 2
    cx, cy = int(round(x)), int(round(y))
    h, w = mask.shape
    x0, y0, x1, y1 = max(cx - r, 0), max(cy - r, 0), min(cx + r + 1, w), min(cy + r + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    k = kernel[y0 - (cy - r) : y1 - (cy - r), x0 - (cx - r) : x1 - (cx - r)]
    region = mask[y0:y1, x0:x1].astype(np.float32)
    if erase:
        region *= 1.0 - k
    else:  # max, not add: overlapping dabs of one stroke never build up past the brush's own edge
        region = np.maximum(region, k * 255.0)
    mask[y0:y1, x0:x1] = np.rint(region).astype(np.uint8)
    return x0, y0, x1, y1


def stroke(mask: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], kernel: np.ndarray,
           erase: bool = False) -> None:
    """Dabs from p0 to p1 (p0 excluded, it was stamped by the previous segment), a quarter radius apart."""
    spacing = max(kernel.shape[0] / 8.0, 0.5)
    dist = float(np.hypot(p1[0] - p0[0], p1[1] - p0[1]))
    steps = max(1, int(np.ceil(dist / spacing)))
    for i in range(1, steps + 1):
        t = i / steps
        stamp(mask, p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t, kernel, erase)


def invert(mask: np.ndarray) -> np.ndarray:
    return (255 - mask).astype(np.uint8)


def region_cells(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 4-connected cells of the same class as (row, col): the segmentation region clicked on."""
    h, w = grid.shape
    target = grid[row, col]
    seen = np.zeros(grid.shape, dtype=bool)
    seen[row, col] = True
    todo = deque([(row, col)])
    while todo:
        r, c = todo.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < h and 0 <= nc < w and not seen[nr, nc] and grid[nr, nc] == target:
                seen[nr, nc] = True
                todo.append((nr, nc))
    return seen


def cells_to_mask(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a boolean cell grid to a uint8 0/255 mask of `shape`."""
    h, w = cells.shape
    rows = np.minimum(np.arange(shape[0]) * h // shape[0], h - 1)
    cols = np.minimum(np.arange(shape[1]) * w // shape[1], w - 1)
    return np.where(cells[rows][:, cols], 255, 0).astype(np.uint8)


def to_alpha(mask: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Area-average the painted mask down to image pixels: float32 coverage in [0, 1]."""
    h, w = image_shape
    mh, mw = mask.shape
    if (mh, mw) == (h, w):
        return mask.astype(np.float32) / 255.0
    if mh % h or mw % w:
        raise ValueError(f"mask {mask.shape} is not a whole multiple of the image {image_shape}")
    sy, sx = mh // h, mw // w
    # a sum of strided views: ~10x faster than reshape(...).sum(axis=(1, 3)) for these small factors
    total = np.zeros((h, w), np.uint32)
    for i in range(sy):
        for j in range(sx):
            total += mask[i::sy, j::sx]
    return total.astype(np.float32) / np.float32(255 * sy * sx)


def any_coverage(mask: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """bool (H, W): image pixels the mask touches at all (what the engine regenerates)."""
    h, w = image_shape
    sy, sx = mask.shape[0] // h, mask.shape[1] // w
    return np.maximum.reduce([mask[i::sy, j::sx] for i in range(sy) for j in range(sx)]) > 0


def box_blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur with edge padding. A sum of shifted views: O(radius * pixels), fast for the
    small radii used here (feathering is at most 16 px), and exact on flat regions."""
    out = a.astype(np.float32)
    if radius <= 0:
        return out
    n = 2 * radius + 1
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        for k in range(n):
            acc += padded[k : k + out.shape[0]] if axis == 0 else padded[:, k : k + out.shape[1]]
        out = acc / np.float32(n)
    return out


def feather(alpha: np.ndarray, radius: int) -> np.ndarray:
    """Soften the mask edge *inwards*: the result is never larger than `alpha`, so nothing
    outside the mask is ever touched, and deep inside it stays 1."""
    if radius <= 0:
        return alpha.astype(np.float32)
    soft = box_blur(box_blur(alpha, max(radius // 2, 1)), max(radius - radius // 2, 1))
    return (alpha * np.clip(soft, 0.0, 1.0)).astype(np.float32)
