"""Pixels for Shapes World: glyph geometry, antialiased coverage masks and backgrounds.

Glyphs are drawn with PIL at 4x supersampling and box-downsampled, so edges are antialiased at
any output size. A glyph depends only on (kind, diameter, sub-pixel offset), all quantised to a
quarter pixel, so coverage masks are cached and a 64x64 scene costs a few small numpy blends.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np
from PIL import Image, ImageDraw

SS = 4  # supersampling factor


def _normalise(points: list[tuple[float, float]], scale: float = 1.0) -> list[tuple[float, float]]:
    """Scale uniformly so the larger side is `scale`, centred in the unit box."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    w, h = max(xs) - min(xs), max(ys) - min(ys)
    k = scale / max(w, h)
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return [(0.5 + (x - cx) * k, 0.5 + (y - cy) * k) for x, y in points]


def _star(n: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * n):
        r = 1.0 if i % 2 == 0 else inner
        a = -math.pi / 2 + i * math.pi / n
        pts.append((r * math.cos(a), r * math.sin(a)))
    return _normalise(pts)


def _heart(steps: int = 96) -> list[tuple[float, float]]:
    pts = []
    for i in range(steps):
        t = 2 * math.pi * i / steps
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x, -y))
    return _normalise(pts)


def _cross(arm: float = 0.36) -> list[tuple[float, float]]:
    a, b = 0.5 - arm / 2, 0.5 + arm / 2
    pts = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    return _normalise(pts, 0.96)


# Unit-box outlines (y down). "circle" is drawn as an ellipse filling the unit box.
POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": _normalise([(0, 0), (1, 0), (1, 1), (0, 1)], 0.84),
    "triangle": _normalise([(0.5, 0.0), (1.0, math.sqrt(3) / 2), (0.0, math.sqrt(3) / 2)]),
    "star": _star(),
    "heart": _heart(),
    "cross": _cross(),
}


@cache
def unit_extent(kind: str) -> tuple[float, float, float, float]:
    """Tight (x0, y0, x1, y1) of a glyph inside its unit box."""
    if kind == "circle":
        return (0.0, 0.0, 1.0, 1.0)
    xs, ys = zip(*POLYGONS[kind], strict=True)
    return (min(xs), min(ys), max(xs), max(ys))


@lru_cache(maxsize=8192)
def glyph(kind: str, d4: int, ox4: int, oy4: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (float32 HxWx1 in [0, 1]) and hard mask (bool HxW, coverage >= 0.5) of a glyph of
    diameter d4/4 px whose unit box starts (ox4/4, oy4/4) px into the returned canvas."""
    w = -(-(ox4 + d4) // SS) + 1
    h = -(-(oy4 + d4) // SS) + 1
    im = Image.new("L", (w * SS, h * SS), 0)
    draw = ImageDraw.Draw(im)
    if kind == "circle":
        draw.ellipse((ox4, oy4, ox4 + d4 - 1, oy4 + d4 - 1), fill=255)
    else:
        draw.polygon([(ox4 + x * d4, oy4 + y * d4) for x, y in POLYGONS[kind]], fill=255)
    cover = np.asarray(im.reduce(SS), dtype=np.float32) / 255.0
    cover.setflags(write=False)
    hard = cover >= 0.5
    hard.setflags(write=False)
    return cover[..., None], hard


def place(kind: str, cx: float, cy: float, d: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Top-left pixel, coverage and hard mask of a glyph centred at (cx, cy) px with diameter d px."""
    d4 = max(1, round(d * SS))
    x4 = round((cx - d / 2) * SS)
    y4 = round((cy - d / 2) * SS)
    tx, ty = x4 // SS - 1, y4 // SS - 1
    cover, hard = glyph(kind, d4, x4 - tx * SS, y4 - ty * SS)
    return tx, ty, cover, hard


def clip(tx: int, ty: int, h: int, w: int, size: int) -> tuple[slice, slice, slice, slice] | None:
    """Slices (image rows, image cols, glyph rows, glyph cols) of the visible part, or None."""
    y0, x0 = max(ty, 0), max(tx, 0)
    y1, x1 = min(ty + h, size), min(tx + w, size)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1), slice(y0 - ty, y1 - ty), slice(x0 - tx, x1 - tx)


def _pattern_coverage(size: int, kind: str, period: float) -> np.ndarray:
    """Antialiased 0/1 pattern (stripes or checker) as float coverage at `size` px."""
    n = size * SS
    u = (np.arange(n) + 0.5) / SS / period
    if kind == "stripes":
        hi = ((u[:, None] + u[None, :]) % 1.0) < 0.5
    else:
        hi = ((np.floor(u)[:, None] + np.floor(u)[None, :]) % 2) == 0
    return hi.reshape(size, SS, size, SS).mean(axis=(1, 3)).astype(np.float32)


@lru_cache(maxsize=64)
def background(spec: tuple, size: int) -> np.ndarray:
    """A (size, size, 3) float32 background. spec = ("plain", rgb) or ("stripes"|"checker", rgb_a, rgb_b)."""
    if spec[0] == "plain":
        out = np.empty((size, size, 3), np.float32)
        out[:] = np.asarray(spec[1], np.float32)
    else:
        t = _pattern_coverage(size, spec[0], period=size / 8)[..., None]
        a, b = np.asarray(spec[1], np.float32), np.asarray(spec[2], np.float32)
        out = b + t * (a - b)
    out.setflags(write=False)
    return out
