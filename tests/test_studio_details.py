"""The studio's smaller promises, with the fake engine: exported masks are black and white, the brush
is sized in screen pixels, an empty canvas shows no zoom and no start-up "Done", the Ask field starts
fresh, a new canvas drops the old canvas's caption and results, previews hide what describes the
canvas, and labels fit their widgets."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from studio_fakes import FakeEngine, noise

from app import mask as M
from app.imageutil import png_bytes
from app.prompt_panel import PANEL_TASKS
from app.window import MainWindow
from engine.imageio import load_image
from engine.task_table import TASKS, EngineTask
from engine.tasks import to_rgb_array

TIMEOUT = 20_000


@pytest.fixture
def win(qtbot, tessera_home):
    engine = FakeEngine()
    w = MainWindow(lambda: engine, autosave=False, restore=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.engine_info is not None and not w.queue.pending(), timeout=TIMEOUT)
    return w


def generate(qtbot, win, n=2):
    win.prompt.set_prompt("a red circle")
    win.prompt.candidates.setValue(n)
    job = win.controller.run()
    qtbot.waitUntil(lambda: win.queue.records[job].state == "finished", timeout=TIMEOUT)


def test_empty_canvas_start_up_and_zoom(win):
    assert win.doc.is_blank() and win.zoom_label.text() == ""
    assert not win.statusBar().currentMessage().startswith("Done")  # the library listing is silent


def test_exported_mask_is_black_and_white(win, tmp_path):
    path = tmp_path / "in.png"
    path.write_bytes(png_bytes(noise(64, 64)))
    win.open_path(path)
    win.doc.begin_stroke(20, 20, M.brush_kernel(60, 0.0), erase=False)  # a soft brush: many grey levels
    win.doc.end_stroke()
    assert len(np.unique(win.doc.mask)) > 10
    assert win.export_mask(tmp_path / "mask.png")
    exported = load_image(tmp_path / "mask.png", size=None, alpha=True)[..., 0]
    assert set(np.unique(exported)) == {0, 255}
    assert np.array_equal(exported == 255, win.doc.engine_mask())  # exactly what inpainting regenerates


def test_the_task_buttons_are_the_engines_tasks_with_its_labels(win):
    shown = {b.property("task"): b.text() for b in win.prompt.task_group.buttons()}
    assert shown == {str(t): TASKS[t].label for t in PANEL_TASKS}
    assert TASKS[EngineTask.ANSWER].label == shown["answer"] == "Ask"  # a label, not a second name


def test_a_rotated_jpeg_opens_upright_with_the_cli_size(win, tmp_path):
    from PIL import Image

    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:, :20] = (220, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display (a phone held upright)
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    assert win.open_path(path)
    cli = to_rgb_array(path)  # what every CLI command hands the engine
    assert win.doc.image.shape[:2] == cli.shape[:2] == (40, 20)  # upright: 20 wide, 40 high
    assert np.abs(win.doc.image[..., :3].astype(int) - cli).max() <= 1  # the same pixels, not only the size


@pytest.mark.parametrize("side", [64, 4000])
def test_brush_size_is_screen_pixels_at_any_image_size(win, side, tmp_path):
    image = np.zeros((side * 3 // 4, side, 4), np.uint8)
    image[..., 3] = 255
    win.doc.reset(image)
    win.canvas.fit()
    win.canvas.set_brush(size=48)
    zoom = win.canvas.zoom()
    assert win.canvas.brush_image_px() == pytest.approx(48 / zoom)
    kernel = win.canvas.brush_kernel()  # mask pixels
    on_screen = kernel.shape[0] / win.doc.scale * zoom
    assert on_screen == pytest.approx(48, abs=2 + zoom / win.doc.scale)
    assert win.brush_label.text().endswith("48 px on screen")


def test_ask_field_starts_fresh_and_answers_keep_their_question(qtbot, win):
    generate(qtbot, win)
    win.candidates.accept_current()
    win.insight.question.setText("what colour is the circle?")
    win.insight.question.returnPressed.emit()
    assert win.insight.question.text() == ""
    qtbot.waitUntil(lambda: bool(win.insight.qa), timeout=TIMEOUT)
    assert win.insight.qa[0][0] == "what colour is the circle?"


def test_new_canvas_drops_caption_and_results_and_previews_hide_the_overlay(qtbot, win):
    generate(qtbot, win)
    win.candidates.accept_current()
    job = win.controller.caption()
    qtbot.waitUntil(lambda: win.queue.records[job].state == "finished", timeout=TIMEOUT)
    job = win.controller.segment()
    qtbot.waitUntil(lambda: win.queue.records[job].state == "finished", timeout=TIMEOUT)
    assert win.caption_bar.isVisible() and win.canvas.seg_item.isVisible()
    generate(qtbot, win, n=2)
    assert len(win.candidates.items) == 3  # the first job's other candidate stays
    win.candidates.list.setCurrentRow(1)  # previewing a candidate
    assert not win.canvas.seg_item.isVisible() and not win.caption_bar.isVisible()
    win.candidates.list.setCurrentRow(-1)
    assert win.canvas.seg_item.isVisible() and win.caption_bar.isVisible()
    win.candidates.list.setCurrentRow(0)
    win.candidates.keep_current()
    win.doc.undo.setClean()  # nothing unsaved: New asks nothing
    win.new_canvas()
    assert not win.caption_bar.isVisible() and win.insight.caption_text == ""
    assert win.doc.segmentation is None and [c.kept for c in win.candidates.items] == [True]


def test_labels_fit_and_undo_names_its_change(win):
    combo = win.prompt.seed_mode
    assert combo.sizeHint().width() >= combo.fontMetrics().horizontalAdvance("Increment") + 20
    strip = win.candidates.list
    scrollbar = strip.horizontalScrollBar().sizeHint().height()
    text = strip.fontMetrics().height()
    assert strip.height() >= strip.iconSize().height() + text + scrollbar + 2 * strip.spacing()
    win.doc.edit_mask(np.full_like(win.doc.mask, 255), "Fill mask")
    assert win.act["undo"].text() == "&Undo Fill mask"
