"""The Shapes World's vocabulary: the shapes, colours, plain backgrounds and 3x3 positions the bundled
model draws. training/data/shapes.py generates its scenes from these names and values, and the
studio's demo engine (app/demo_engine.py) draws with them, so the two cannot disagree on a colour."""

from __future__ import annotations

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 205, 20),
    "green": (35, 155, 55),
    "cyan": (20, 190, 205),
    "blue": (40, 75, 220),
    "purple": (135, 50, 195),
    "pink": (245, 110, 190),
}
# The plain backgrounds (the patterned ones are training's own: shapes.BACKGROUNDS).
PLAIN_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light grey": (222, 222, 222),
    "cream": (241, 233, 214),
    "dark grey": (62, 64, 70),
}
POSITIONS: tuple[tuple[str, str, str], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
CELL_CENTERS = (0.225, 0.5, 0.775)  # inset so a large glyph in a corner cell stays inside the image
SEG_CLASSES: tuple[str, ...] = ("background", *KINDS)
