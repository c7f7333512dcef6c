"""The canvas (app/canvas.py) and document (app/document.py): zoom, pan, painting, undo, overlays."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QKeyEvent, QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication
from studio_fakes import noise

from app import mask as M
from app.canvas import CanvasView
from app.document import Document


@pytest.fixture
def view(qtbot):
    doc = Document()
    doc.reset(noise(64, 64))
    v = CanvasView(doc)
    qtbot.addWidget(v)
    v.resize(640, 480)
    v.show()
    qtbot.waitExposed(v)
    v.fit()
    return v


def mouse(view, kind, scene_xy, button=Qt.MouseButton.LeftButton, buttons=None):
    pos = QPointF(view.mapFromScene(QPointF(*scene_xy)))
    buttons = button if buttons is None else buttons
    event = QMouseEvent(kind, pos, QPointF(view.viewport().mapToGlobal(pos.toPoint())), button, buttons,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(view.viewport(), event)


def drag(view, points, button=Qt.MouseButton.LeftButton):
    mouse(view, QEvent.Type.MouseButtonPress, points[0], button)
    for p in points[1:]:
        mouse(view, QEvent.Type.MouseMove, p, Qt.MouseButton.NoButton, button)
    mouse(view, QEvent.Type.MouseButtonRelease, points[-1], button, Qt.MouseButton.NoButton)


def test_model_images_are_shown_large_and_smooth(view):
    assert view.image_item.transformationMode() == Qt.TransformationMode.SmoothTransformation
    assert view.zoom() > 5  # a 64x64 image fills a 640x480 view
    shown = view.mapFromScene(view.doc_rect()).boundingRect()
    # fitted with a margin; the viewport's exact height depends on the style's frame and scroll bars
    assert 0.85 * view.viewport().height() <= shown.height() <= view.viewport().height()


def test_fit_actual_size_and_wheel_zoom(view):
    view.actual_size()
    assert view.zoom() == 1.0
    wheel = QWheelEvent(QPointF(320, 240), QPointF(320, 240), QPoint(0, 0), QPoint(0, 240),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(view.viewport(), wheel)
    assert view.zoom() == pytest.approx(1.0015**240)
    view.fit()
    fitted = view.zoom()
    view.resize(800, 700)
    QApplication.processEvents()
    assert view.zoom() > fitted  # fit mode follows the window size


def test_middle_button_and_space_drag_pan(view):
    view.set_zoom(20)
    h = view.horizontalScrollBar()
    start = h.value()
    drag(view, [(32, 32), (28, 32)], Qt.MouseButton.MiddleButton)
    assert h.value() != start
    assert not view.doc.mask.any()  # panning never paints
    no = Qt.KeyboardModifier.NoModifier
    QApplication.sendEvent(view, QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Space, no))
    assert view.dragMode() == view.DragMode.ScrollHandDrag
    QApplication.sendEvent(view, QKeyEvent(QEvent.Type.KeyRelease, Qt.Key.Key_Space, no))
    assert view.dragMode() == view.DragMode.NoDrag


def test_a_brush_stroke_paints_one_undoable_step(view):
    doc = view.doc
    view.set_brush(size=40, hardness=1.0)
    drag(view, [(10, 10), (20, 10), (30, 10), (40, 10)])
    s = doc.scale
    assert doc.mask[10 * s, 10 * s : 40 * s].min() == 255  # continuous along the path
    assert doc.mask[50 * s, 50 * s] == 0
    assert doc.undo.count() == 1 and doc.undo.undoText() == "Brush"
    painted = doc.mask.copy()
    view.set_tool("eraser")
    drag(view, [(20, 10), (30, 10)])
    assert doc.mask[10 * s, 25 * s] == 0 and doc.mask[10 * s, 12 * s] == 255
    doc.undo.undo()
    assert np.array_equal(doc.mask, painted)
    doc.undo.undo()
    assert not doc.mask.any()
    doc.undo.redo()
    assert np.array_equal(doc.mask, painted)


def test_brush_size_keys_and_hardness(view):
    view.set_brush(size=50)
    view.grow_brush(1)
    assert view.brush_size == 60
    view.grow_brush(-2)
    assert view.brush_size == 42
    view.set_brush(size=1)
    assert view.brush_size == 2  # clamped
    view.set_brush(hardness=3)
    assert view.hardness == 1.0


def test_mask_overlay_follows_colour_and_opacity(view):
    view.doc.edit_mask(np.full_like(view.doc.mask, 255), "fill")
    view.set_mask_style(QColor(0, 255, 0), 0.25)
    pixel = view.mask_item.pixmap().toImage().pixelColor(5, 5)
    assert (pixel.red(), pixel.green(), pixel.blue()) == (0, 255, 0)
    assert pixel.alpha() == 63


def test_clear_invert_and_region_selection_are_undoable(view):
    doc = view.doc
    doc.invert_mask()
    assert doc.mask.min() == 255
    doc.clear_mask()
    assert not doc.mask.any()
    grid = np.zeros((8, 8), np.int64)
    grid[2:4, 2:5] = 3
    grid[6, 6] = 3
    doc.set_segmentation(grid, ("background", "a", "b", "c"))
    view.set_tool("region")
    drag(view, [(2.5 * 8, 2.5 * 8)])  # a click inside the class-3 block
    expected = M.cells_to_mask(M.region_cells(grid, 2, 2), doc.mask.shape)
    assert np.array_equal(doc.mask, expected)
    assert doc.undo.undoText() == "Select region"
    doc.undo.undo()
    assert not doc.mask.any()


def test_segmentation_overlay_opacity_and_toggle(view):
    grid = np.zeros((8, 8), np.int64)
    grid[:4] = 1
    view.doc.set_segmentation(grid, ("background", "circle"))
    assert not view.seg_item.pixmap().isNull()
    assert view.seg_item.boundingRect().width() * view.seg_item.transform().m11() == pytest.approx(64)
    view.seg_item.setOpacity(0.3)
    view.seg_item.setVisible(False)
    view.doc.clear_segmentation()
    assert view.seg_item.pixmap().isNull()


def test_checkerboard_shows_through_transparency(view):
    view.doc.reset(np.zeros((64, 64, 4), np.uint8))
    view.fit()
    QApplication.processEvents()
    shot = view.grab().toImage()
    centre = view.mapFromScene(QPointF(32, 32))
    colours = {shot.pixelColor(centre.x() + dx, centre.y()).name() for dx in range(0, 32, 2)}
    assert len(colours) >= 2  # two alternating greys, not one flat colour


def test_preview_never_touches_the_document(view):
    before = view.doc.image.copy()
    view.show_preview(noise(64, 64, seed=3))
    assert view.preview_item.isVisible()
    view.show_preview(None)
    assert not view.preview_item.isVisible()
    assert np.array_equal(view.doc.image, before)
