"""The canvas: a QGraphicsView over the document with zoom, pan, mask painting and overlays.

Scene coordinates are image pixels, so a 64x64 model image is a 64x64 scene shown large; items:
  image (smoothly scaled)  <  preview (streaming result)  <  segmentation  <  mask  <  brush cursor
and a checkerboard drawn behind the image shows where it is transparent.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPen, QPixmap, QTransform
from PySide6.QtWidgets import QGraphicsEllipseItem, QGraphicsPixmapItem, QGraphicsScene, QGraphicsView

from app import mask as M
from app.document import Document
from app.imageutil import to_qimage
from app.qtfix import Signal
from engine.layout import PALETTE as SEG_PALETTE  # one palette for overlays, layouts and the CLI

TOOLS = ("brush", "eraser", "region", "pan")  # more come from register_tool (layout, boxes)
MIN_ZOOM, MAX_ZOOM = 0.05, 64.0
BRUSH_MIN, BRUSH_MAX = 2, 512  # diameter in screen pixels at the current zoom, for every brush
MAX_DAB = 4096  # mask pixels: the largest dab, however far out the view is zoomed

@lru_cache(maxsize=8)
def _kernel(diameter: int, hardness: float) -> np.ndarray:
    return M.brush_kernel(diameter / 2.0, hardness)


def segmentation_rgba(grid: np.ndarray, cell: int = 32) -> np.ndarray:
    """(gh, gw) class grid -> an RGBA overlay with `cell` pixels per grid cell: each class in its colour,
    hatched so it never reads as part of the picture, outlined where the class changes.
    Background (class 0) stays clear."""
    big = np.repeat(np.repeat(np.asarray(grid), cell, axis=0), cell, axis=1)
    colours = SEG_PALETTE[big % len(SEG_PALETTE)]
    yy, xx = np.mgrid[0 : big.shape[0], 0 : big.shape[1]]
    alpha = np.where((xx + yy) % 8 < 3, 235, 120)  # diagonal hatching
    edge = np.zeros(big.shape, bool)
    edge[:-2, :] |= big[:-2, :] != big[2:, :]
    edge[2:, :] |= big[2:, :] != big[:-2, :]
    edge[:, :-2] |= big[:, :-2] != big[:, 2:]
    edge[:, 2:] |= big[:, 2:] != big[:, :-2]
    alpha = np.where(edge, 255, alpha)
    alpha = np.where(big > 0, alpha, 0).astype(np.uint8)
    return np.dstack([colours, alpha])


class CanvasTool(Protocol):
    """A tool another module adds to the canvas (register_tool): it gets the left button's drags in
    image coordinates, and `hover` for every move (a cursor)."""

    def press(self, x: float, y: float, modifiers: Qt.KeyboardModifier) -> None: ...
    def drag(self, x: float, y: float) -> None: ...
    def release(self) -> None: ...
    def hover(self, x: float, y: float) -> None: ...


class CanvasView(QGraphicsView):
    context_requested = Signal(object, object)  # global QPoint, image QPointF
    files_dropped = Signal(list)
    zoom_changed = Signal(float)
    brush_changed = Signal()
    message = Signal(str)

    def __init__(self, doc: Document, parent=None) -> None:
        super().__init__(parent)
        self.doc = doc
        self.tool = "brush"
        self.brush_size = 48
        self.hardness = 0.7
        self.mask_color = QColor(255, 64, 96)
        self.mask_opacity = 0.5
        self._fit_mode = True  # refit on resize until the user zooms
        self._space = False
        self._pan_from: QPointF | None = None
        self._painting = False
        self.tools: dict[str, CanvasTool] = {}
        self._tool_drag = False

        self.setScene(QGraphicsScene(self))
        self.setRenderHints(QPainter.RenderHint.SmoothPixmapTransform | QPainter.RenderHint.Antialiasing)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.BoundingRectViewportUpdate)
        self.setMouseTracking(True)
        self.setAcceptDrops(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setToolTip("")

        self.image_item = self._pixmap_item(0, smooth=True)
        self.preview_item = self._pixmap_item(1, smooth=True)
        self.seg_item = self._pixmap_item(2, smooth=True)
        self.seg_item.setOpacity(0.7)
        self.mask_item = self._pixmap_item(3, smooth=True)
        self.cursor_item = QGraphicsEllipseItem()
        pen = QPen(QColor(255, 255, 255, 220), 1.5)
        pen.setCosmetic(True)
        self.cursor_item.setPen(pen)
        self.cursor_item.setZValue(10)
        self.cursor_item.setVisible(False)
        self.scene().addItem(self.cursor_item)
        self._checker = self._checker_brush()
        self._overlay = np.zeros((1, 1, 4), np.uint8)

        doc.image_changed.connect(self._on_image)
        doc.mask_changed.connect(self._on_mask)
        doc.segmentation_changed.connect(self._on_segmentation)
        self._on_image()

    def _pixmap_item(self, z: int, smooth: bool) -> QGraphicsPixmapItem:
        item = QGraphicsPixmapItem()
        modes = Qt.TransformationMode
        mode = modes.SmoothTransformation if smooth else modes.FastTransformation
        item.setTransformationMode(mode)
        item.setZValue(z)
        item.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self.scene().addItem(item)
        return item

    @staticmethod
    def _checker_brush() -> QBrush:
        """Transparency: thin blue-grey diagonal lines rather than a checkerboard (generated checkered
        backgrounds look the same); an empty canvas also says so in words (drawForeground)."""
        tile = QPixmap(12, 12)
        tile.fill(QColor(70, 74, 86))
        p = QPainter(tile)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(QPen(QColor(104, 116, 150), 1.5))
        for offset in (-12, 0, 12):
            p.drawLine(offset, 12, offset + 12, 0)
        p.end()
        return QBrush(tile)

    # -- document -> items -------------------------------------------------------------------------
    def doc_rect(self) -> QRectF:
        return QRectF(0, 0, self.doc.width, self.doc.height)

    def _on_image(self) -> None:
        self.image_item.setPixmap(QPixmap.fromImage(to_qimage(self.doc.image)))
        self.mask_item.setTransform(QTransform.fromScale(1 / self.doc.scale, 1 / self.doc.scale))
        side = max(self.doc.width, self.doc.height)
        self.setSceneRect(self.doc_rect().adjusted(-2 * side, -2 * side, 2 * side, 2 * side))
        self.show_preview(None)
        self._update_cursor_size()
        if self._fit_mode:
            self.fit()

    def _on_mask(self, dirty) -> None:
        mask = self.doc.mask
        h, w = mask.shape
        if self._overlay.shape[:2] != (h, w):
            self._overlay = np.zeros((h, w, 4), np.uint8)
            dirty = None
        if dirty is None:
            x0, y0, x1, y1 = 0, 0, w, h
            self._overlay[..., :3] = self.mask_color.getRgb()[:3]
        else:
            x0, y0, x1, y1 = max(dirty[0], 0), max(dirty[1], 0), min(dirty[2], w), min(dirty[3], h)
            if x0 >= x1 or y0 >= y1:
                return
        region = mask[y0:y1, x0:x1].astype(np.float32) * self.mask_opacity
        self._overlay[y0:y1, x0:x1, 3] = region.astype(np.uint8)
        image = QImage(self._overlay.data, w, h, w * 4, QImage.Format.Format_RGBA8888)
        self.mask_item.setPixmap(QPixmap.fromImage(image))

    def _on_segmentation(self) -> None:
        grid = self.doc.segmentation
        if grid is None:
            self.seg_item.setPixmap(QPixmap())
            return
        overlay = segmentation_rgba(grid)
        self.seg_item.setPixmap(QPixmap.fromImage(to_qimage(overlay)))
        h, w = overlay.shape[:2]
        self.seg_item.setTransform(QTransform.fromScale(self.doc.width / w, self.doc.height / h))

    def set_mask_style(self, color: QColor | None = None, opacity: float | None = None) -> None:
        if color is not None:
            self.mask_color = QColor(color)
        if opacity is not None:
            self.mask_opacity = float(opacity)
        self._on_mask(None)

    def show_preview(self, image: np.ndarray | None) -> None:
        """Show a streaming or candidate image over the canvas without touching the document."""
        if image is None:
            self.preview_item.setVisible(False)
            self.preview_item.setPixmap(QPixmap())
            return
        self.preview_item.setPixmap(QPixmap.fromImage(to_qimage(image)))
        h, w = image.shape[:2]
        self.preview_item.setTransform(QTransform.fromScale(self.doc.width / w, self.doc.height / h))
        self.preview_item.setVisible(True)

    # -- zoom --------------------------------------------------------------------------------------
    def zoom(self) -> float:
        return self.transform().m11()

    def set_zoom(self, factor: float) -> None:
        factor = float(np.clip(factor, MIN_ZOOM, MAX_ZOOM))
        self.setTransform(QTransform.fromScale(factor, factor))
        self._update_cursor_size()  # the brush keeps its size on screen
        self.zoom_changed.emit(factor)

    def zoom_by(self, step: float) -> None:
        self._fit_mode = False
        self.set_zoom(self.zoom() * step)

    def fit(self) -> None:
        self._fit_mode = True
        view = self.viewport().rect().adjusted(24, 24, -24, -24)
        if view.width() <= 0 or view.height() <= 0:
            return
        factor = min(view.width() / self.doc.width, view.height() / self.doc.height)
        self.set_zoom(factor)
        self.centerOn(self.doc_rect().center())

    def actual_size(self) -> None:
        self._fit_mode = False
        self.set_zoom(1.0)
        self.centerOn(self.doc_rect().center())

    def wheelEvent(self, event) -> None:  # noqa: N802
        delta = event.angleDelta().y()
        if delta:
            self.zoom_by(1.0015**delta)
        event.accept()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self._fit_mode:
            self.fit()

    # -- background --------------------------------------------------------------------------------
    def drawBackground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802
        painter.fillRect(rect, self.palette().color(self.backgroundRole()).darker(135))
        painter.save()
        brush = QBrush(self._checker)
        brush.setTransform(QTransform.fromScale(1 / self.zoom(), 1 / self.zoom()))  # squares stay 8 px
        painter.fillRect(self.doc_rect(), brush)
        painter.restore()

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802
        if not self.doc.is_blank():
            return
        painter.save()
        painter.resetTransform()  # text in screen pixels, centred on the canvas
        painter.setPen(QColor(200, 206, 220))
        box = self.mapFromScene(self.doc_rect()).boundingRect()
        text = "Empty canvas (transparent)\nGenerate or open an image"
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()

    # -- tools -------------------------------------------------------------------------------------
    def register_tool(self, name: str, tool: CanvasTool) -> None:
        self.tools[name] = tool

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS and tool not in self.tools:
            raise ValueError(f"unknown tool {tool!r}")
        self.tool = tool
        self._update_drag_mode()
        self.cursor_item.setVisible(False)
        self.brush_changed.emit()

    def set_brush(self, size: int | None = None, hardness: float | None = None) -> None:
        if size is not None:
            self.brush_size = int(np.clip(size, BRUSH_MIN, BRUSH_MAX))
        if hardness is not None:
            self.hardness = float(np.clip(hardness, 0.0, 1.0))
        self._update_cursor_size()
        self.brush_changed.emit()

    def brush_image_px(self) -> float:
        """The brush diameter in image pixels: brush_size is in screen pixels at the current zoom."""
        return self.brush_size / self.zoom()

    def brush_kernel(self) -> np.ndarray:
        """The current dab, in mask pixels."""
        diameter = min(MAX_DAB, max(1, round(self.brush_image_px() * self.doc.scale)))
        return _kernel(diameter, round(self.hardness, 2))

    def grow_brush(self, steps: int) -> None:
        """`]` / `[`: about 20 % bigger or smaller per step, at least one pixel."""
        size = self.brush_size
        for _ in range(abs(steps)):
            size = max(size + 1, round(size * 1.2)) if steps > 0 else min(size - 1, round(size / 1.2))
        self.set_brush(size=size)

    def _update_cursor_size(self) -> None:
        r = self.brush_image_px() / 2
        center = self.cursor_item.rect().center() if not self.cursor_item.rect().isNull() else QPointF()
        self.cursor_item.setRect(QRectF(center.x() - r, center.y() - r, 2 * r, 2 * r))

    def _update_drag_mode(self) -> None:
        hand = self._space or self.tool == "pan"
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag if hand else QGraphicsView.DragMode.NoDrag)

    def _painting_tool(self) -> bool:
        return self.tool in ("brush", "eraser", "layout") and not self._space

    # -- mouse and keys ----------------------------------------------------------------------------
    def mousePressEvent(self, event) -> None:  # noqa: N802
        pos = self.mapToScene(event.position().toPoint())
        if event.button() == Qt.MouseButton.MiddleButton:
            self._pan_from = event.position()
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            event.accept()
        elif event.button() == Qt.MouseButton.LeftButton and self.tool in self.tools and not self._space:
            self._tool_drag = True
            self.tools[self.tool].press(pos.x(), pos.y(), event.modifiers())
            event.accept()
        elif event.button() == Qt.MouseButton.LeftButton and self._painting_tool():
            self._painting = True
            self.doc.begin_stroke(pos.x(), pos.y(), self.brush_kernel(), erase=self.tool == "eraser")
            event.accept()
        elif event.button() == Qt.MouseButton.LeftButton and self.tool == "region" and not self._space:
            add = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
            if not self.doc.select_region(pos.x(), pos.y(), add=add):
                self.message.emit("Segment the image first (right-click › Segment), then click a region.")
            event.accept()
        else:
            super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        pos = self.mapToScene(event.position().toPoint())
        if self._pan_from is not None:
            delta = event.position() - self._pan_from
            self._pan_from = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - round(delta.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - round(delta.y()))
            event.accept()
            return
        if self._painting:
            self.doc.stroke_to(pos.x(), pos.y())
        if self.tool in self.tools:
            tool = self.tools[self.tool]
            tool.drag(pos.x(), pos.y()) if self._tool_drag else tool.hover(pos.x(), pos.y())
        r = self.brush_image_px() / 2
        self.cursor_item.setRect(QRectF(pos.x() - r, pos.y() - r, 2 * r, 2 * r))
        self.cursor_item.setVisible(self._painting_tool())
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.MiddleButton and self._pan_from is not None:
            self._pan_from = None
            self.viewport().unsetCursor()
        elif event.button() == Qt.MouseButton.LeftButton and self._tool_drag:
            self._tool_drag = False
            self.tools[self.tool].release()
        elif event.button() == Qt.MouseButton.LeftButton and self._painting:
            self._painting = False
            self.doc.end_stroke()
        else:
            super().mouseReleaseEvent(event)

    def leaveEvent(self, event) -> None:  # noqa: N802
        self.cursor_item.setVisible(False)
        super().leaveEvent(event)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self._update_drag_mode()
            self.cursor_item.setVisible(False)
            event.accept()
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self._update_drag_mode()
            event.accept()
            return
        super().keyReleaseEvent(event)

    def contextMenuEvent(self, event) -> None:  # noqa: N802
        self.context_requested.emit(event.globalPos(), self.mapToScene(event.pos()))
        event.accept()

    # -- drag and drop -----------------------------------------------------------------------------
    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.files_dropped.emit(paths)
