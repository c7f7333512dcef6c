"""The document: one RGBA image, its inpainting mask, an optional segmentation, and the undo stack.

Every change that should be undoable goes through a QUndoCommand (app/history.py); views listen
to the signals. The mask is painted at `scale` times the image resolution (see app/mask.py).
"""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QObject
from PySide6.QtGui import QUndoStack

from app import mask as M
from app.history import ImageCommand, MaskCommand
from app.imageutil import rgb
from app.qtfix import Signal

MASK_TARGET = 512  # paint masks of small images at about this many pixels across
MAX_SCALE = 16


def mask_scale(width: int, height: int) -> int:
    return int(min(MAX_SCALE, max(1, math.ceil(MASK_TARGET / max(width, height)))))


class Document(QObject):
    image_changed = Signal()  # pixels or size
    mask_changed = Signal(object)  # dirty (x0, y0, x1, y1) in mask pixels, or None for all of it
    segmentation_changed = Signal()
    modified = Signal()  # anything the autosave should write

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.undo = QUndoStack(self)
        self.undo.setUndoLimit(200)
        self.meta: dict = {}  # how the current image was made (PNG metadata when saved)
        self.segmentation: np.ndarray | None = None  # (gh, gw) class grid
        self.class_names: tuple[str, ...] = ()
        self._stroke_before: np.ndarray | None = None
        self._last_point: tuple[float, float] | None = None
        self.reset(np.zeros((64, 64, 4), np.uint8))

    # -- state -------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return self.image.shape[1]

    @property
    def height(self) -> int:
        return self.image.shape[0]

    def reset(self, image: np.ndarray, mask: np.ndarray | None = None, meta: dict | None = None) -> None:
        """Start over with `image` (not undoable: opening a file or restoring a session)."""
        self.set_state(image, mask, meta or {})
        self.undo.clear()

    def set_state(self, image: np.ndarray, mask: np.ndarray | None, meta: dict) -> None:
        """Replace image, mask and meta together (undo commands use this)."""
        self.image = np.ascontiguousarray(image, dtype=np.uint8)
        self.scale = mask_scale(self.width, self.height)
        shape = (self.height * self.scale, self.width * self.scale)
        self.mask = mask.copy() if mask is not None and mask.shape == shape else np.zeros(shape, np.uint8)
        self.meta = dict(meta)
        self.clear_segmentation()
        self.image_changed.emit()
        self.mask_changed.emit(None)
        self.modified.emit()

    def set_mask(self, mask: np.ndarray) -> None:
        self.mask = mask.copy()
        self.mask_changed.emit(None)
        self.modified.emit()

    def set_segmentation(self, grid: np.ndarray, class_names: tuple[str, ...]) -> None:
        self.segmentation = np.asarray(grid)
        self.class_names = tuple(class_names)
        self.segmentation_changed.emit()
        self.modified.emit()

    def clear_segmentation(self) -> None:
        if self.segmentation is not None:
            self.segmentation = None
            self.segmentation_changed.emit()

    # -- undoable edits ----------------------------------------------------------------------------
    def accept_image(self, image: np.ndarray, meta: dict, text: str = "Accept result") -> None:
        """Put a result on the canvas; the mask survives when the size does not change."""
        self.undo.push(ImageCommand(self, image, meta, text))

    def edit_mask(self, new_mask: np.ndarray, text: str) -> None:
        if not np.array_equal(new_mask, self.mask):
            self.undo.push(MaskCommand(self, self.mask.copy(), new_mask, text))

    def clear_mask(self) -> None:
        self.edit_mask(np.zeros_like(self.mask), "Clear mask")

    def invert_mask(self) -> None:
        self.edit_mask(M.invert(self.mask), "Invert mask")

    def select_region(self, x: float, y: float, add: bool = False) -> bool:
        """Make the segmentation region under image point (x, y) the mask (or add it). False if none."""
        grid = self.segmentation
        if grid is None or not (0 <= x < self.width and 0 <= y < self.height):
            return False
        gh, gw = grid.shape
        cells = M.region_cells(grid, int(y * gh / self.height), int(x * gw / self.width))
        region = M.cells_to_mask(cells, self.mask.shape)
        self.edit_mask(np.maximum(self.mask, region) if add else region, "Select region")
        return True

    # -- brush strokes (in image coordinates; one stroke = one undo step) --------------------------
    def begin_stroke(self, x: float, y: float, kernel: np.ndarray, erase: bool) -> None:
        self._stroke_before = self.mask.copy()
        self._kernel, self._erase = kernel, erase
        self._last_point = (x * self.scale, y * self.scale)
        dirty = M.stamp(self.mask, *self._last_point, kernel, erase)
        self.mask_changed.emit(dirty)

    def stroke_to(self, x: float, y: float) -> None:
        if self._last_point is None:
            return
        p = (x * self.scale, y * self.scale)
        M.stroke(self.mask, self._last_point, p, self._kernel, self._erase)
        r = self._kernel.shape[0] // 2 + 1
        x0, x1 = sorted((self._last_point[0], p[0]))
        y0, y1 = sorted((self._last_point[1], p[1]))
        self._last_point = p
        self.mask_changed.emit((int(x0) - r, int(y0) - r, int(x1) + r + 1, int(y1) + r + 1))

    def end_stroke(self) -> None:
        if self._stroke_before is None:
            return
        before, self._stroke_before, self._last_point = self._stroke_before, None, None
        if not np.array_equal(before, self.mask):
            self.undo.push(MaskCommand(self, before, self.mask.copy(), "Eraser" if self._erase else "Brush"))

    # -- what the engine gets ----------------------------------------------------------------------
    def alpha(self, feather_px: int = 0) -> np.ndarray:
        """Per image pixel mask coverage in [0, 1], optionally feathered inwards."""
        return M.feather(M.to_alpha(self.mask, (self.height, self.width)), feather_px)

    def engine_image(self) -> np.ndarray:
        return rgb(self.image)

    def engine_mask(self) -> np.ndarray:
        return M.any_coverage(self.mask, (self.height, self.width))

    def has_mask(self) -> bool:
        return bool(self.mask.any())

    def is_blank(self) -> bool:
        return not self.image[..., 3].any()
