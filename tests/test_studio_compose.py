"""Layout painting and regions (the Compose panel) through the real engine on the bundled model, and the
work the studio keeps: autosave of layout, boxes, answers, candidates and unfinished jobs, Re-run and
its seed mode, Save/Discard/Cancel before replacing unsaved work."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from app import files as files_module
from app.layout_tool import LAYOUT_SIZE
from app.window import MainWindow
from engine.layout import layout_cells
from engine.pngmeta import read_params

TIMEOUT = 120_000


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from engine.engine import Engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TESSERA_HOME", str(tmp_path_factory.mktemp("home")))
        yield Engine.load()  # the bundled model


def studio(qtbot, engine, **kw):
    win = MainWindow(lambda: engine, **{"autosave": False, "restore": False, **kw})
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.engine_info is not None, timeout=TIMEOUT)
    return win


def mouse(view, kind, xy, buttons):
    pos = QPointF(view.mapFromScene(QPointF(*xy)))
    button = Qt.MouseButton.LeftButton if kind != QEvent.Type.MouseMove else Qt.MouseButton.NoButton
    event = QMouseEvent(kind, pos, QPointF(view.viewport().mapToGlobal(pos.toPoint())), button, buttons,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(view.viewport(), event)


def drag(view, points):
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    mouse(view, QEvent.Type.MouseButtonPress, points[0], left)
    for p in points[1:]:
        mouse(view, QEvent.Type.MouseMove, p, left)
    mouse(view, QEvent.Type.MouseButtonRelease, points[-1], none)


def wait_job(qtbot, win, job):
    assert job is not None
    qtbot.waitUntil(lambda: win.queue.records[job].state not in ("pending", "running"), timeout=TIMEOUT)
    assert win.queue.records[job].state == "finished", win.queue.records[job].message


def test_paint_a_layout_and_generate_from_it(qtbot, engine, tmp_path):
    win = studio(qtbot, engine)
    names = win.engine_info["seg_class_names"]
    assert [b.text() for b in win.compose.swatches.buttons()] == list(names)  # one swatch per class
    win.compose.swatches.button(1).click()  # circle: picks the Layout brush too
    assert win.canvas.tool == "layout" and win.layout.current == 1
    win.canvas.set_brush(size=120)
    drag(win.canvas, [(16, 16), (24, 18), (32, 20)])
    painted = win.layout.classes.copy()
    assert painted.any() and set(np.unique(painted)) == {0, 1}
    assert painted[LAYOUT_SIZE * 18 // 64, LAYOUT_SIZE * 24 // 64] == 1 and painted[-1, -1] == 0
    win.act["undo"].trigger()
    assert win.layout.is_empty()
    win.act["redo"].trigger()
    assert np.array_equal(win.layout.classes, painted)

    win.prompt.set_prompt("a red circle")
    win.prompt.set_seed(5, "fixed")
    win.prompt.candidates.setValue(2)
    wait_job(qtbot, win, win.compose.layout_button.click() or max(win.queue.records))
    entry = win.history.entries[0]
    grid = layout_cells(painted, engine.vocab.image_grid, engine.vocab.seg_size)
    assert entry.task == "layout" and entry.settings["layout"] == grid.tolist() and entry.seed == 5
    assert len(win.candidates.items) == 2 and win.candidates.items[0].image.shape == (64, 64, 4)
    win.candidates.accept_current()
    assert win.save_png(tmp_path / "out.png")
    assert read_params(tmp_path / "out.png")["settings"]["layout"] == grid.tolist()  # the PNG remembers it

    job = win.controller.segment()  # start over from the image's own segmentation
    wait_job(qtbot, win, job)
    assert win.layout.from_segmentation()
    seg = np.asarray(win.doc.segmentation)
    assert np.array_equal(layout_cells(win.layout.classes, seg.shape, len(names)), seg)


def near(box, expected, tolerance: int = 1) -> None:
    assert all(abs(a - b) <= tolerance for a, b in zip(box, expected, strict=True)), (box, expected)


def test_draw_move_resize_delete_boxes_and_generate_with_them(qtbot, engine):
    win = studio(qtbot, engine)
    win.act["boxes"].trigger()
    win.compose.new_label.setText("a red star")
    drag(win.canvas, [(8, 8), (20, 20), (32, 32)])  # a new box from (8, 8) to (32, 32) image pixels
    assert [b.label for b in win.regions.boxes] == ["a red star"]
    x0, y0, x1, y1 = win.regions.boxes[0].box
    assert (x0, y0) == (32, 32) and (x1, y1) == (128, 128)  # on the 0-255 grid of a 64 px image
    drag(win.canvas, [(20, 20), (30, 26)])  # move by (10, 6) image pixels
    # screen -> image coordinates round by the view's zoom: a grid unit (1/4 px) either way is the same drag
    near(win.regions.boxes[0].box, (72, 56, 168, 152))
    box = win.regions.boxes[0].box
    assert (box[2] - box[0], box[3] - box[1]) == (96, 96), "a move keeps the size"
    drag(win.canvas, [(42, 38), (56, 50)])  # the bottom-right corner
    near(win.regions.boxes[0].box, (72, 56, 223, 199))
    win.compose.new_label.setText("a blue square")
    drag(win.canvas, [(2, 44), (14, 62)])
    assert [b.label for b in win.regions.boxes] == ["a red star", "a blue square"]
    assert win.regions.selected == 1 and win.regions.delete()
    assert [b.label for b in win.regions.boxes] == ["a red star"]
    win.act["undo"].trigger()
    assert len(win.regions.boxes) == 2
    win.compose.box_list.item(1).setText("a green square")  # renamed in the panel
    assert win.regions.boxes[1].label == "a green square"

    win.prompt.set_prompt("a red star and a green square")
    win.prompt.set_seed(9, "random")
    win.compose.regions_button.click()
    job = max(win.queue.records)
    wait_job(qtbot, win, job)
    entry = win.history.entries[0]
    assert entry.task == "ground" and entry.settings["boxes"] == [b.to_json() for b in win.regions.boxes]
    first = win.candidates.items[0].image.copy()
    win.regions.clear()
    win.history.list.setCurrentRow(0)
    win.history.recall.click()  # "Use settings" brings the boxes back
    assert [b.label for b in win.regions.boxes] == ["a red star", "a green square"]
    win.prompt.set_seed(1, "random")
    win.history.rerun.click()  # reproduces the image and leaves the seed mode as it was
    qtbot.waitUntil(lambda: len(win.history.entries) == 2, timeout=TIMEOUT)
    assert win.prompt.state()["seed_mode"] == "random" and win.history.entries[0].seed == entry.seed
    assert np.array_equal(win.candidates.items[0].image, first)
    assert len(win.candidates.items) == 2 * win.prompt.candidates.value()  # both jobs' candidates stay


def test_session_keeps_layout_boxes_answers_candidates_and_unfinished_jobs(qtbot, engine, tessera_home):
    win = studio(qtbot, engine, autosave=True)
    win.session.stop()
    win.layout.replace(np.eye(8, dtype=np.uint8) * 2, "diagonal")
    win.regions.add("a red star", (10, 20, 100, 120))
    win.prompt.set_prompt("a red circle")
    win.prompt.candidates.setValue(2)
    wait_job(qtbot, win, win.controller.run())
    win.candidates.accept_current()
    wait_job(qtbot, win, win.controller.ask("what colour is the circle?"))
    win.layers.opacity.setValue(80)
    assert win.unsaved and "•" in win.windowTitle()
    gate = threading.Event()  # a job still running when the studio is killed

    def held(e, _):
        gate.wait(60)
        return e.generate("a blue star", seed=4, n=1)

    params = {"task": "generate", "prompt": "a blue star", "seed": 4, "settings": {"n": 1}}
    held_id = win.queue.submit("generate", "Generate · a blue star", held, params)
    qtbot.waitUntil(lambda: win.queue.records[held_id].state == "running", timeout=TIMEOUT)
    win.session.save()  # as the autosave timer does, before a kill -9
    win.queue.cancel(held_id)
    gate.set()

    again = MainWindow(lambda: engine, autosave=False, restore=True)
    qtbot.addWidget(again)
    assert np.array_equal(again.layout.classes, win.layout.classes)
    assert again.regions.boxes == win.regions.boxes
    assert again.insight.qa == win.insight.qa and again.insight.answers.count() == 1
    assert len(again.candidates.items) == len(win.candidates.items) == 1  # one left after accepting one of 2
    assert again.canvas.mask_opacity == pytest.approx(0.8) and again.layers.opacity.value() == 80
    assert again.unsaved and "•" in again.windowTitle()
    assert again.session.interrupted_labels == ["Generate · a blue star"]
    box = again.interrupted_box
    assert box.isVisible() and "Generate · a blue star" in box.text()
    next(b for b in box.buttons() if b.text() == "Run again").click()
    qtbot.waitUntil(lambda: len(again.history.entries) == len(win.history.entries) + 1, timeout=TIMEOUT)
    assert (again.history.entries[0].prompt, again.history.entries[0].seed) == ("a blue star", 4)


def test_unsaved_work_asks_before_it_is_replaced(qtbot, engine, monkeypatch, tmp_path):
    win = studio(qtbot, engine)
    answers = []
    monkeypatch.setattr(files_module, "ask_unsaved", lambda _w, action: answers.pop(0))
    win.new_canvas()  # nothing to lose: no question
    win.doc.edit_mask(np.full_like(win.doc.mask, 255), "fill")
    before = win.doc.mask.copy()
    answers[:] = ["cancel"]
    win.new_canvas()
    assert np.array_equal(win.doc.mask, before) and not answers
    saved = tmp_path / "saved.png"
    monkeypatch.setattr(files_module.QFileDialog, "getSaveFileName", lambda *a, **k: (str(saved), ""))
    answers[:] = ["save"]
    win.new_canvas()
    assert saved.exists() and not win.doc.mask.any() and not win.unsaved
    win.doc.edit_mask(np.full_like(win.doc.mask, 255), "fill")
    answers[:] = ["discard"]
    win.quit()
    assert not win.isVisible()
