"""Layout painting: a layer of segmentation classes painted over the canvas, one brush per class, that
"Generate from layout" turns into an image (engine `from_layout`, the model's seg2img task).

The layer is a class map of LAYOUT_SIZE x LAYOUT_SIZE cells stretched over the image, whatever the
image's size (the engine reads each grid cell's majority class), so the layout survives new
canvases, accepted results and images of other sizes. Its colours are the segmentation overlay's
(engine.layout.PALETTE). Every stroke, fill and clear is one undo step on the document's stack.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QPixmap, QTransform, QUndoCommand
from PySide6.QtWidgets import QGraphicsPixmapItem

from app.canvas import CanvasView
from app.imageutil import to_qimage
from app.qtfix import Signal
from engine.layout import PALETTE

LAYOUT_SIZE = 256  # the layer's cells across (the box grid's resolution, 0-255)


class LayoutCommand(QUndoCommand):
    """One change of the layer: the before and after of the rectangle it touched."""

    def __init__(self, layer: LayoutLayer, rect: tuple[int, int, int, int], before: np.ndarray,
                 after: np.ndarray, text: str) -> None:
        super().__init__(text)
        self.layer, self.rect, self.before, self.after = layer, rect, before, after

    def redo(self) -> None:
        self.layer.put(self.rect, self.after)

    def undo(self) -> None:
        self.layer.put(self.rect, self.before)


class LayoutLayer(QObject):
    """The painted layout and its brush; painting is in image coordinates."""

    changed = Signal()

    def __init__(self, canvas: CanvasView, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.canvas = canvas
        self.doc = canvas.doc
        self.classes = np.zeros((LAYOUT_SIZE, LAYOUT_SIZE), np.uint8)
        self.current = 1  # the class the brush paints; 0 (background) erases
        self._before: np.ndarray | None = None
        self._last: tuple[float, float] | None = None
        self.item = QGraphicsPixmapItem()
        self.item.setZValue(2.5)  # over the segmentation overlay, under the mask
        self.item.setOpacity(0.6)
        self.item.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        canvas.scene().addItem(self.item)
        canvas.register_tool("layout", self)
        self.doc.image_changed.connect(self._place)
        self.changed.connect(self._render)
        self._place()
        self._render()

    def is_empty(self) -> bool:
        return not self.classes.any()

    # -- changes (each one undo step) ------------------------------------------------------------------
    def put(self, rect: tuple[int, int, int, int], patch: np.ndarray) -> None:
        x0, y0, x1, y1 = rect
        self.classes[y0:y1, x0:x1] = patch
        self.changed.emit()

    def replace(self, classes: np.ndarray, text: str) -> None:
        """Set the whole layer (a class map of any size, stretched), as one undo step."""
        h, w = classes.shape
        rows = np.minimum(np.arange(LAYOUT_SIZE) * h // LAYOUT_SIZE, h - 1)
        cols = np.minimum(np.arange(LAYOUT_SIZE) * w // LAYOUT_SIZE, w - 1)
        new = np.asarray(classes)[rows][:, cols].astype(np.uint8)
        if not np.array_equal(new, self.classes):
            full = (0, 0, LAYOUT_SIZE, LAYOUT_SIZE)
            self.doc.undo.push(LayoutCommand(self, full, self.classes.copy(), new, text))

    def from_segmentation(self) -> bool:
        """Start from the canvas's segmentation (its class grid). False when there is none."""
        if self.doc.segmentation is None:
            return False
        self.replace(np.asarray(self.doc.segmentation), "Layout from segmentation")
        return True

    def clear(self) -> None:
        self.replace(np.zeros((1, 1), np.uint8), "Clear layout")

    def restore(self, classes: np.ndarray | None) -> None:
        """Set the layer without an undo step (a restored session)."""
        if classes is not None and classes.shape == self.classes.shape:
            self.classes = classes.astype(np.uint8)
            self.changed.emit()

    # -- the brush (CanvasTool) --------------------------------------------------------------------
    def _cell(self, x: float, y: float) -> tuple[float, float]:
        return x * LAYOUT_SIZE / self.doc.width, y * LAYOUT_SIZE / self.doc.height

    def _radii(self) -> tuple[float, float]:
        """The brush's radius in layer cells across and down (the image may not be square)."""
        r = self.canvas.brush_image_px() / 2
        return max(r * LAYOUT_SIZE / self.doc.width, 0.5), max(r * LAYOUT_SIZE / self.doc.height, 0.5)

    def _dab(self, cx: float, cy: float) -> None:
        """One elliptic dab of the current class centred at layer point (cx, cy)."""
        rx, ry = self._radii()
        x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, LAYOUT_SIZE)
        y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, LAYOUT_SIZE)
        if x0 >= x1 or y0 >= y1:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0
        self.classes[y0:y1, x0:x1][inside] = self.current

    def press(self, x: float, y: float, modifiers: Qt.KeyboardModifier) -> None:
        self._before = self.classes.copy()
        self._last = self._cell(x, y)
        self._dab(*self._last)
        self.changed.emit()

    def drag(self, x: float, y: float) -> None:
        if self._last is None:
            return
        p = self._cell(x, y)
        step = max(min(self._radii()) / 2, 0.5)
        n = max(1, int(np.ceil(np.hypot(p[0] - self._last[0], p[1] - self._last[1]) / step)))
        for i in range(1, n + 1):
            t = i / n
            self._dab(self._last[0] + (p[0] - self._last[0]) * t, self._last[1] + (p[1] - self._last[1]) * t)
        self._last = p
        self.changed.emit()

    def release(self) -> None:
        before, self._before, self._last = self._before, None, None
        if before is None or np.array_equal(before, self.classes):
            return
        ys, xs = np.nonzero(before != self.classes)
        rect = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        x0, y0, x1, y1 = rect
        self.doc.undo.push(LayoutCommand(self, rect, before[y0:y1, x0:x1].copy(),
                                         self.classes[y0:y1, x0:x1].copy(), "Layout brush"))

    def hover(self, x: float, y: float) -> None:
        pass

    # -- on screen ---------------------------------------------------------------------------------
    def _place(self) -> None:
        side = LAYOUT_SIZE
        self.item.setTransform(QTransform.fromScale(self.doc.width / side, self.doc.height / side))

    def _render(self) -> None:
        rgba = np.dstack([PALETTE[self.classes % len(PALETTE)], np.where(self.classes > 0, 255, 0)])
        self.item.setPixmap(QPixmap.fromImage(to_qimage(rgba.astype(np.uint8))))
