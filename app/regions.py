"""Regions: labelled boxes drawn on the canvas ("a red star" here), which "Generate with regions" turns
into an image that puts each thing in its box (engine `ground`, the model's grounded task).

Boxes live on the engine's 0-255 grid over the whole image, so they mean the same on any canvas
size. The Boxes tool (X) draws a box by dragging on empty canvas, moves a box by dragging inside it
and resizes it by dragging a corner; Delete removes the selected one. Every change is one undo step.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPen, QUndoCommand
from PySide6.QtWidgets import QGraphicsItem, QGraphicsRectItem, QGraphicsSimpleTextItem

from app.canvas import CanvasView
from app.qtfix import Signal
from engine.layout import BOX_GRID

HANDLE_PX = 9  # screen pixels around a corner that grab it
MIN_SIDE = 3  # grid units: a smaller drag is a click, not a box


@dataclass(frozen=True)
class Region:
    label: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 on the 0-255 grid

    def to_json(self) -> list:
        return [self.label, list(self.box)]

    @classmethod
    def from_json(cls, item) -> Region:
        label, box = item
        x0, y0, x1, y1 = (min(max(int(v), 0), BOX_GRID) for v in box)
        return cls(str(label), (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))


class RegionsCommand(QUndoCommand):
    def __init__(self, regions: Regions, before: list[Region], after: list[Region], text: str) -> None:
        super().__init__(text)
        self.regions, self.before, self.after = regions, before, after

    def redo(self) -> None:
        self.regions.set_boxes(self.after)

    def undo(self) -> None:
        self.regions.set_boxes(self.before)


class Regions(QObject):
    """The boxes, the selected one, the Boxes tool (CanvasTool) and their drawing on the canvas."""

    changed = Signal()

    def __init__(self, canvas: CanvasView, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.canvas = canvas
        self.doc = canvas.doc
        self.boxes: list[Region] = []
        self.selected: int | None = None
        self.new_label = "a red star"  # the label a new box gets (the Regions panel edits it)
        self.visible = True
        self._drag: tuple[str, int, tuple[int, int], list[Region]] | None = None  # mode, box, start, before
        self._items: list[QGraphicsItem] = []
        canvas.register_tool("boxes", self)
        self.doc.image_changed.connect(self._draw)
        self.changed.connect(self._draw)

    # -- changes -----------------------------------------------------------------------------------
    def set_boxes(self, boxes: list[Region]) -> None:
        """Set the boxes without an undo step (undo commands, a restored session)."""
        self.boxes = list(boxes)
        if self.selected is not None and self.selected >= len(self.boxes):
            self.selected = len(self.boxes) - 1 if self.boxes else None
        self.changed.emit()

    def edit(self, boxes: list[Region], text: str) -> None:
        if boxes != self.boxes:
            self.doc.undo.push(RegionsCommand(self, list(self.boxes), list(boxes), text))

    def add(self, label: str, box: tuple[int, int, int, int]) -> None:
        self.edit([*self.boxes, Region(label, box)], "Add box")
        self.selected = len(self.boxes) - 1
        self.changed.emit()

    def relabel(self, index: int, label: str) -> None:
        label = " ".join(label.split())
        if label and 0 <= index < len(self.boxes) and label != self.boxes[index].label:
            boxes = list(self.boxes)
            boxes[index] = Region(label, boxes[index].box)
            self.edit(boxes, "Rename box")

    def delete(self, index: int | None = None) -> bool:
        index = self.selected if index is None else index
        if index is None or not 0 <= index < len(self.boxes):
            return False
        self.edit([b for i, b in enumerate(self.boxes) if i != index], "Delete box")
        self.selected = None
        self.changed.emit()
        return True

    def clear(self) -> None:
        self.edit([], "Clear boxes")

    def select(self, index: int | None) -> None:
        self.selected = index
        self.changed.emit()

    def engine_boxes(self) -> list[tuple[str, tuple[int, int, int, int]]]:
        return [(b.label, b.box) for b in self.boxes]

    # -- geometry ----------------------------------------------------------------------------------
    def _grid(self, x: float, y: float) -> tuple[int, int]:
        gx = round(x / self.doc.width * BOX_GRID)
        gy = round(y / self.doc.height * BOX_GRID)
        return min(max(gx, 0), BOX_GRID), min(max(gy, 0), BOX_GRID)

    def image_rect(self, box: tuple[int, int, int, int]) -> QRectF:
        x0, y0, x1, y1 = box
        sx, sy = self.doc.width / BOX_GRID, self.doc.height / BOX_GRID
        return QRectF(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy)

    def _hit(self, x: float, y: float) -> tuple[str, int] | None:
        """("corner<i>", box) near a corner of a box, ("move", box) inside one, topmost first."""
        reach = HANDLE_PX / self.canvas.zoom()
        order = list(range(len(self.boxes) - 1, -1, -1))
        if self.selected is not None and self.selected < len(self.boxes):
            order.remove(self.selected)
            order.insert(0, self.selected)
        for i in order:
            r = self.image_rect(self.boxes[i].box)
            corners = (r.topLeft(), r.topRight(), r.bottomLeft(), r.bottomRight())
            for k, c in enumerate(corners):
                if abs(c.x() - x) <= reach and abs(c.y() - y) <= reach:
                    return f"corner{k}", i
        for i in order:
            if self.image_rect(self.boxes[i].box).contains(x, y):
                return "move", i
        return None

    # -- the Boxes tool (CanvasTool) ---------------------------------------------------------------
    def press(self, x: float, y: float, modifiers: Qt.KeyboardModifier) -> None:
        hit = self._hit(x, y)
        before = list(self.boxes)
        if hit is None:
            g = self._grid(x, y)
            self.boxes.append(Region(self.new_label, (*g, *g)))
            hit = ("create", len(self.boxes) - 1)
        self.selected = hit[1]
        self._drag = (hit[0], hit[1], self._grid(x, y), before)
        self.changed.emit()

    def drag(self, x: float, y: float) -> None:
        if self._drag is None:
            return
        mode, i, (sx, sy), before = self._drag
        gx, gy = self._grid(x, y)
        if mode == "move":
            x0, y0, x1, y1 = before[i].box
            dx = min(max(gx - sx, -x0), BOX_GRID - x1)
            dy = min(max(gy - sy, -y0), BOX_GRID - y1)
            box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        elif mode == "create":
            box = (min(sx, gx), min(sy, gy), max(sx, gx), max(sy, gy))
        else:  # a corner follows the pointer, the opposite one stays
            x0, y0, x1, y1 = before[i].box
            k = int(mode[-1])
            fx, fy = (x1 if k in (0, 2) else x0), (y1 if k in (0, 1) else y0)
            box = (min(fx, gx), min(fy, gy), max(fx, gx), max(fy, gy))
        self.boxes[i] = Region(self.boxes[i].label, box)
        self.changed.emit()

    def release(self) -> None:
        if self._drag is None:
            return
        mode, i, _, before = self._drag
        self._drag = None
        x0, y0, x1, y1 = self.boxes[i].box
        if mode == "create" and (x1 - x0 < MIN_SIDE or y1 - y0 < MIN_SIDE):  # a click on empty canvas
            self.boxes = before
            self.selected = None
            self.changed.emit()
            return
        after, self.boxes = list(self.boxes), before
        text = {"create": "Add box", "move": "Move box"}.get(mode, "Resize box")
        self.edit(after, text)

    def hover(self, x: float, y: float) -> None:
        hit = self._hit(x, y)
        shapes = {None: Qt.CursorShape.CrossCursor, "move": Qt.CursorShape.SizeAllCursor,
                  "corner0": Qt.CursorShape.SizeFDiagCursor, "corner3": Qt.CursorShape.SizeFDiagCursor}
        key = hit[0] if hit is not None else None
        self.canvas.viewport().setCursor(shapes.get(key, Qt.CursorShape.SizeBDiagCursor))

    # -- on screen ---------------------------------------------------------------------------------
    def set_visible(self, visible: bool) -> None:
        self.visible = visible
        self._draw()

    def _draw(self) -> None:
        scene = self.canvas.scene()
        for item in self._items:
            scene.removeItem(item)
        self._items = []
        if not self.visible:
            return
        for i, region in enumerate(self.boxes):
            chosen = i == self.selected
            pen = QPen(QColor(255, 214, 10) if chosen else QColor(255, 255, 255), 2.5 if chosen else 1.5)
            pen.setCosmetic(True)
            if not chosen:
                pen.setStyle(Qt.PenStyle.DashLine)
            rect = QGraphicsRectItem(self.image_rect(region.box))
            rect.setPen(pen)
            rect.setBrush(QBrush(QColor(255, 214, 10, 28) if chosen else Qt.BrushStyle.NoBrush))
            rect.setZValue(5)
            rect.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
            label = QGraphicsSimpleTextItem(f"{i + 1} · {region.label}")
            label.setBrush(QColor(255, 255, 255))
            label.setPen(QPen(QColor(0, 0, 0, 200), 0.6))
            label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
            label.setPos(rect.rect().topLeft())
            label.setZValue(6)
            for item in (rect, label):
                scene.addItem(item)
                self._items.append(item)
