"""The studio end to end with a fake engine: streaming, cancel, candidates, inpainting, right-click
tasks, retrieval and library, errors, files, history, and the event-loop stall measurement."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading
import time
from dataclasses import asdict

import numpy as np
import pytest
from PySide6.QtCore import QEventLoop, QMimeData, QPoint, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QContextMenuEvent, QDesktopServices, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QMenu, QMessageBox
from studio_fakes import FakeEngine, noise

from app import mask as M
from app.dialogs import LogWindow, log_path
from app.imageutil import png_bytes
from app.window import MainWindow
from engine.errors import BundleError
from engine.events import PartialImage
from engine.imageio import load_image
from engine.pngmeta import read_params
from engine.settings import DEFAULTS

TIMEOUT = 10_000


@pytest.fixture
def studio(qtbot, tessera_home):
    engine = FakeEngine()
    win = MainWindow(lambda: engine, autosave=False, restore=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.model_label.text().startswith("●"), timeout=TIMEOUT)
    return win, engine


def run_and_wait(qtbot, win, task="generate", prompt="a red circle and a blue star", seed=7, n=2):
    win.prompt.set_task(task)
    win.prompt.set_prompt(prompt)
    win.prompt.set_seed(seed, "fixed")
    win.prompt.candidates.setValue(n)
    job = win.controller.run()
    assert job is not None
    qtbot.waitUntil(lambda: win.queue.records[job].state not in ("pending", "running"), timeout=TIMEOUT)
    return job


def open_image(win, tmp_path, image, name="in.png"):
    path = tmp_path / name
    path.write_bytes(png_bytes(image))
    assert win.open_path(path)
    return path


def test_status_bar_shows_model_and_provider(studio):
    win, _ = studio
    assert win.model_label.text() == "●  fake-shapes  ·  CPU"


def test_generation_streams_row_by_row_then_offers_candidates(qtbot, studio):
    win, _ = studio
    before = win.doc.image.copy()
    previews = []

    def on_event(_job, ev):  # connected after the controller: the preview is already updated
        if isinstance(ev, PartialImage) and ev.candidate == 0:
            shown = win.canvas.preview_item.pixmap().toImage()
            visible = win.canvas.preview_item.isVisible()
            previews.append((ev.rows_done, visible, shown.pixelColor(2, 63).name()))

    win.queue.event.connect(on_event)
    run_and_wait(qtbot, win)
    assert [p[0] for p in previews] == list(range(1, 9))
    assert all(visible for _, visible, _ in previews)
    assert [c for rows, _, c in previews if rows < 8] == ["#808080"] * 7  # last row still grey until the end
    assert len(win.candidates.items) == 2
    assert np.array_equal(win.doc.image, before)  # nothing lands on the canvas without Accept
    assert not win.progress.isVisible()
    entry = win.history.entries[0]
    assert (entry.prompt, entry.seed, entry.task) == ("a red circle and a blue star", 7, "generate")
    assert entry.thumbnail is not None


def test_accept_is_undoable_and_keep_survives_the_next_run(qtbot, studio):
    win, _ = studio
    blank = win.doc.image.copy()
    run_and_wait(qtbot, win)
    first = win.candidates.items[0].image.copy()
    win.candidates.list.setCurrentRow(1)
    win.candidates.keep_current()
    kept = win.candidates.items[1].image.copy()
    win.candidates.list.setCurrentRow(0)
    win.canvas.setFocus()
    qtbot.keyClick(win.canvas, Qt.Key.Key_Return)  # Enter on the canvas accepts the selected candidate
    assert np.array_equal(win.doc.image, first)
    assert win.doc.meta["seed"] == 7 and win.doc.meta["prompt"] == "a red circle and a blue star"
    win.act["undo"].trigger()
    assert np.array_equal(win.doc.image, blank)
    win.act["redo"].trigger()
    assert np.array_equal(win.doc.image, first)
    run_and_wait(qtbot, win, prompt="a green cross", seed=3, n=1)
    assert len(win.candidates.items) == 2 and np.array_equal(win.candidates.items[1].image, kept)
    win.candidates.list.setCurrentRow(0)
    win.candidates.discard_current()
    assert len(win.candidates.items) == 1


def test_escape_cancels_within_a_step_and_leaves_the_canvas_as_it_was(qtbot, studio, tmp_path):
    win, engine = studio
    open_image(win, tmp_path, noise(64, 64))
    before = win.doc.image.copy()
    engine.hold = threading.Event()
    rows = []
    win.queue.event.connect(lambda _j, ev: rows.append(ev) if isinstance(ev, PartialImage) else None)
    win.prompt.set_prompt("a red circle")
    job = win.controller.run()
    qtbot.waitUntil(lambda: win.queue.records[job].state == "running", timeout=TIMEOUT)
    engine.hold.set()
    qtbot.waitUntil(lambda: len(rows) >= 2, timeout=TIMEOUT)
    engine.hold.clear()
    assert win.canvas.preview_item.isVisible()
    win.canvas.setFocus()
    qtbot.keyClick(win.canvas, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: win.queue.records[job].state == "cancelled", timeout=2000)
    assert not win.canvas.preview_item.isVisible()
    assert np.array_equal(win.doc.image, before)
    assert win.candidates.items == [] and win.history.entries == []


def test_inpainting_changes_only_masked_pixels(qtbot, studio, tmp_path):
    win, _ = studio
    original = noise(80, 96, seed=1)  # not the model's size: the result is scaled, then composited
    open_image(win, tmp_path, original)
    kernel = M.brush_kernel(60, 0.8)  # mask pixels: 6 per image pixel here
    win.doc.begin_stroke(30, 30, kernel, erase=False)
    win.doc.stroke_to(60, 45)
    win.doc.end_stroke()
    alpha = win.doc.alpha(win.controller.feather)
    run_and_wait(qtbot, win, task="inpaint", prompt="a yellow heart", n=1)
    win.candidates.accept_current()
    result = win.doc.image
    outside = alpha == 0
    assert result.shape == original.shape
    assert np.array_equal(result[outside], original[outside])  # bit-identical outside the mask
    assert (result[alpha == 1] != original[alpha == 1]).any()
    soft = (alpha > 0) & (alpha < 1)
    assert soft.any()  # a feathered edge exists


def test_inpaint_without_a_mask_asks_for_one(qtbot, studio, tmp_path):
    win, engine = studio
    open_image(win, tmp_path, noise())
    win.prompt.set_task("inpaint")
    win.prompt.set_prompt("a heart")
    assert win.controller.run() is None
    assert "mask" in win.statusBar().currentMessage()
    assert engine.calls == []


def test_right_click_menu_caption_copy_to_prompt(qtbot, studio):
    win, engine = studio
    run_and_wait(qtbot, win, n=1)
    win.candidates.accept_current()
    pos = win.canvas.mapFromScene(QPointF(32, 32))
    event = QContextMenuEvent(QContextMenuEvent.Reason.Mouse, pos, win.canvas.viewport().mapToGlobal(pos))
    QApplication.sendEvent(win.canvas.viewport(), event)
    menu = next(m for m in win.findChildren(QMenu) if m.isVisible())
    labels = [a.text().replace("&", "") for a in menu.actions() if a.text()]
    assert labels[:4] == ["Caption", "Segment", "Ask…", "Use as reference"]
    next(a for a in menu.actions() if a.text() == "&Caption").trigger()
    menu.close()
    qtbot.waitUntil(lambda: bool(win.insight.caption_text), timeout=TIMEOUT)
    expected = engine.describe_image(win.doc.engine_image())
    assert win.insight.caption_text == expected
    assert win.caption_bar.isVisible() and expected in win.caption_label.text()
    win.insight.to_prompt.click()
    assert win.prompt.prompt_text() == expected


def test_segment_overlay_legend_and_region_to_mask(qtbot, studio):
    win, _ = studio
    run_and_wait(qtbot, win, prompt="a large red circle", n=1)
    win.candidates.accept_current()
    win.act["segment"].trigger()
    qtbot.waitUntil(lambda: win.doc.segmentation is not None, timeout=TIMEOUT)
    grid = win.doc.segmentation
    assert grid.shape == (8, 8) and (grid == 1).any()  # class 1 = circle
    legend = [win.layers.legend.item(i).text() for i in range(win.layers.legend.count())]
    assert any(t.startswith("circle") for t in legend) and any(t.startswith("background") for t in legend)
    win.layers.seg_opacity.setValue(30)
    assert win.canvas.seg_item.opacity() == pytest.approx(0.3)
    win.act["toggle_seg"].trigger()
    assert not win.canvas.seg_item.isVisible()
    win.act["toggle_seg"].trigger()
    row, col = np.argwhere(grid == 1)[0]
    win.act["region"].trigger()
    assert win.canvas.tool == "region"
    assert win.doc.select_region((col + 0.5) * 8, (row + 0.5) * 8)
    expected = M.cells_to_mask(M.region_cells(grid, row, col), win.doc.mask.shape)
    assert np.array_equal(win.doc.mask, expected)


def test_ask_and_use_as_reference(qtbot, studio, tessera_home):
    win, _ = studio
    run_and_wait(qtbot, win, prompt="a blue star", n=1)
    win.candidates.accept_current()
    win.act["ask"].trigger()
    win.insight.question.setText("what colour is the star?")
    win.insight.question.returnPressed.emit()
    qtbot.waitUntil(lambda: win.insight.answers.count() == 1, timeout=TIMEOUT)
    assert win.insight.answers.item(0).text() == "Q: what colour is the star?\nA: blue"
    win.act["reference"].trigger()
    qtbot.waitUntil(lambda: len(win.retrieval.library_ids()) == 1, timeout=TIMEOUT)
    assert (tessera_home / "references").is_dir()
    assert str(tessera_home / "references") in win.retrieval.library.item(0).text()


def test_retrieved_documents_and_library_folder(qtbot, studio, tmp_path):
    win, _ = studio
    assert win.prompt.sampling()["retrieve"] == DEFAULTS.retrieve  # the engine's default
    win.prompt.retrieval.setChecked(True)
    win.prompt.retrieve_k.setValue(2)
    run_and_wait(qtbot, win, n=1)
    assert win.retrieval.retrieved.count() == 2
    assert win.retrieval.retrieved.item(0).icon().isNull() is False
    folder = tmp_path / "refs"
    folder.mkdir()
    for i in range(3):
        (folder / f"r{i}.png").write_bytes(png_bytes(noise(32, 32, seed=i)))
    (folder / "notes.txt").write_text("not an image")
    seen = []
    win.queue.event.connect(lambda j, ev: seen.append((ev.done, ev.total)) if win.queue.records[j].task ==
                            "library" else None)
    win.retrieval.add_folder_requested.emit(str(folder))
    qtbot.waitUntil(lambda: len(win.retrieval.library_ids()) == 3, timeout=TIMEOUT)
    assert seen == [(1, 3), (2, 3), (3, 3)] and not win.retrieval.progress.isVisible()
    win.retrieval.library.item(1).setSelected(True)
    win.retrieval.remove_button.click()
    qtbot.waitUntil(lambda: len(win.retrieval.library_ids()) == 2, timeout=TIMEOUT)


def test_queue_view_cancels_the_job_of_its_row(qtbot, studio):
    win, engine = studio
    engine.hold = threading.Event()
    win.prompt.set_prompt("first")
    ids = [win.controller.run() for _ in range(3)]
    qtbot.waitUntil(lambda: win.queue.records[ids[0]].state == "running", timeout=TIMEOUT)
    win.queue_panel.cancel_button(ids[1]).click()
    assert win.queue.records[ids[1]].state == "cancelled"
    engine.hold.set()
    qtbot.waitUntil(lambda: not win.queue.pending(), timeout=TIMEOUT)
    states = [win.queue_panel.table.item(win.queue_panel.row_of(i), 2).text() for i in ids]
    assert states == ["Done", "Cancelled", "Done"]
    assert len(engine.calls) == 2


def test_engine_failure_shows_a_message_and_the_studio_keeps_running(qtbot, studio, monkeypatch):
    win, engine = studio
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or False)
    engine.fail_with = "the decoder produced NaNs"
    run_and_wait(qtbot, win)
    box = win.last_error
    assert isinstance(box, QMessageBox) and box.isVisible() and not box.isModal()
    assert "the decoder produced NaNs" in box.text()
    log_file = log_path()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("12:00 WARNING app.window: the decoder produced NaNs\n")
    next(b for b in box.buttons() if b.text() == "View log").click()  # no desktop handler for .log files
    shown = [w for w in win.findChildren(LogWindow) if w.isVisible()]
    assert shown and "the decoder produced NaNs" in shown[0].text.toPlainText() and not opened
    engine.fail_with = None
    job = run_and_wait(qtbot, win)
    assert win.queue.records[job].state == "finished"


def test_bad_file_and_incompatible_bundle_keep_the_studio_running(qtbot, studio, tmp_path):
    win, engine = studio
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    before = win.doc.image.copy()
    assert not win.open_path(bad)
    assert "broken.png" in win.last_error.text() and np.array_equal(win.doc.image, before)

    def incompatible():
        raise BundleError("bundle format 9 needs a newer Tessera")

    load = win.load_engine(incompatible)
    qtbot.waitUntil(lambda: win.queue.records[load].state == "failed", timeout=TIMEOUT)
    assert "newer Tessera" in win.last_error.text() and "previous model stays" in win.last_error.text()
    assert win.model_label.text() == "●  fake-shapes  ·  CPU"
    assert win.queue.records[run_and_wait(qtbot, win)].state == "finished"


def test_starting_with_a_broken_bundle(qtbot, tessera_home):
    def incompatible():
        raise BundleError("bundle format 9 needs a newer Tessera")

    win = MainWindow(incompatible, autosave=False, restore=False)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.model_label.text() == "●  no model", timeout=TIMEOUT)
    assert "newer Tessera" in win.last_error.text() and "no model is loaded" in win.last_error.text()
    run_and_wait(qtbot, win)
    assert "No model is loaded" in win.last_error.text()
    engine = FakeEngine()
    win.load_engine(lambda: engine)
    qtbot.waitUntil(lambda: win.model_label.text().startswith("●  fake"), timeout=TIMEOUT)
    assert win.queue.records[run_and_wait(qtbot, win)].state == "finished"


def test_save_png_with_parameters_export_mask_and_drop(qtbot, studio, tmp_path):
    win, _ = studio
    run_and_wait(qtbot, win, n=1)
    win.candidates.accept_current()
    out = tmp_path / "out.png"
    assert win.save_png(out)
    params = read_params(out)
    assert params["prompt"] == "a red circle and a blue star" and params["seed"] == 7
    assert params["model_id"] == "fake-shapes" and params["settings"]["cfg"] == 3.0
    win.doc.edit_mask(np.full_like(win.doc.mask, 255), "all")
    assert win.export_mask(tmp_path / "mask.png")
    assert (load_image(tmp_path / "mask.png", size=None) == 255).all()
    dropped = open_image(win, tmp_path, noise(40, 30, seed=5), "drop.png")
    win.new_canvas()
    text = QMimeData()
    text.setText("just text")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(dropped))])
    buttons, mods, copy = Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.DropAction.CopyAction
    refused = QDragEnterEvent(QPoint(50, 50), copy, text, buttons, mods)
    QApplication.sendEvent(win.canvas.viewport(), refused)
    assert not refused.isAccepted()
    QApplication.sendEvent(win.canvas.viewport(), QDragEnterEvent(QPoint(50, 50), copy, mime, buttons, mods))
    QApplication.sendEvent(win.canvas.viewport(), QDropEvent(QPointF(50, 50), copy, mime, buttons, mods))
    assert np.array_equal(win.doc.image, noise(40, 30, seed=5))
    win.open_path(out)
    assert win.doc.meta["seed"] == 7  # parameters come back with the file


def test_rerun_from_history_reproduces_the_result(qtbot, studio):
    win, engine = studio
    run_and_wait(qtbot, win, n=1)
    first = win.candidates.items[0].image.copy()
    win.prompt.set_prompt("something else")
    win.prompt.set_seed(99, "random")
    win.history.list.setCurrentRow(0)
    win.history.rerun.click()
    qtbot.waitUntil(lambda: len(win.history.entries) == 2, timeout=TIMEOUT)
    assert engine.calls[0] == engine.calls[1] == ("generate", "a red circle and a blue star")
    assert win.history.entries[0].seed == 7
    assert np.array_equal(win.candidates.items[0].image, first)


def test_seed_modes_and_ctrl_enter(qtbot, studio):
    win, engine = studio
    p = win.prompt
    p.set_seed(10, "increment")
    assert (p.take_seed(), p.take_seed()) == (10, 11)
    p.set_seed(10, "fixed")
    assert (p.take_seed(), p.take_seed()) == (10, 10)
    p.set_seed(10, "random")
    assert len({p.take_seed() for _ in range(5)}) > 1
    p.set_prompt("a pink square")
    p.prompt.setFocus()
    qtbot.keyClick(p.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: len(win.history.entries) == 1, timeout=TIMEOUT)
    assert engine.calls == [("generate", "a pink square")]  # exactly one run
    assert p.prompt_text() == "a pink square"  # and no newline was typed


def test_the_balanced_preset_is_the_engines_defaults(studio):
    win, _ = studio
    p = win.prompt
    assert p.preset.currentText() == "Balanced"
    settings = p.sampling()
    defaults = asdict(DEFAULTS)
    assert settings.pop("n") == defaults.pop("candidates")
    assert settings == defaults and settings["cdk_alpha"] is None
    p.apply_preset("Crisp (CD-K)")
    assert p.sampling()["cdk_alpha"] is not None and p.sampling()["retrieve"] == DEFAULTS.retrieve


def test_presets_are_saved_with_the_settings(studio, tessera_home):
    win, _ = studio
    p = win.prompt
    p.apply_preset("Faithful")
    assert p.sampling()["cfg"] == 6.0
    p.cdk.setChecked(True)
    p.cdk_alpha.setValue(0.3)
    p.save_preset("Mine")
    p.apply_preset("Creative")
    assert p.sampling()["cdk_alpha"] is None
    p.apply_preset("Mine")
    assert p.sampling()["cdk_alpha"] == pytest.approx(0.3) and p.sampling()["cfg"] == 6.0
    assert "Mine" in (tessera_home / "settings.json").read_text()


def test_shortcuts_dialog_brush_keys_and_theme(qtbot, studio):
    win, _ = studio
    dialog = win.show_shortcuts()
    names = [dialog.table.item(i, 0).text() for i in range(dialog.table.rowCount())]
    assert {"Run", "Cancel", "Smaller brush", "Bigger brush", "Brush", "Eraser"} <= set(names)
    dialog.close()
    size = win.canvas.brush_size
    win.canvas.setFocus()
    qtbot.keyClick(win.canvas, Qt.Key.Key_BracketRight)
    assert win.canvas.brush_size > size
    qtbot.keyClick(win.canvas, Qt.Key.Key_E)
    assert win.canvas.tool == "eraser"
    win.act["theme"].trigger()
    assert win.settings.theme == "light"
    win.act["theme"].trigger()
    assert win.settings.theme == "dark"
    assert all(a.toolTip() for a in win.act.values())


def idle_gap_ms(duration_ms: int = 300) -> float:
    """The largest gap between 5 ms ticks of an idle event loop: what the OS alone costs right now."""
    gaps, last = [], [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(5)
    timer.timeout.connect(tick)
    loop = QEventLoop()
    timer.start()
    QTimer.singleShot(duration_ms, loop.quit)
    loop.exec()
    timer.stop()
    gaps.append(time.perf_counter() - last[0])  # up to the end, so a loop that never ticked counts too
    return max(gaps) * 1000


def measure_stall(win, start_job) -> tuple[float, int]:
    """Run the event loop (as the studio does) until the job ends, with a 5 ms timer recording
    the gap between its ticks. Returns (largest gap in ms, number of ticks)."""
    gaps, last = [], [0.0]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    loop, job = QEventLoop(), []

    def ended(job_id, state, _result):
        if job and job_id == job[0]:
            assert state == "finished", win.queue.records[job_id].message
            loop.quit()

    win.queue.ended.connect(ended)
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(5)
    timer.timeout.connect(tick)
    last[0] = time.perf_counter()
    timer.start()
    QTimer.singleShot(0, lambda: job.append(start_job()))
    QTimer.singleShot(20_000, loop.quit)
    loop.exec()
    timer.stop()
    win.queue.ended.disconnect(ended)
    ticks = len(gaps)
    gaps.append(time.perf_counter() - last[0])
    return max(gaps) * 1000, ticks


def test_ui_never_stalls_during_streaming(qtbot, studio, tmp_path, record_property):
    """While 4 candidates stream into the window (row previews, progress, retrieval thumbnails, then
    candidates and history), and while an inpainting of a 256x256 image streams (each preview
    composited), the event loop never waits more than 50 ms between two 5 ms timer ticks.

    The machine is shared: a run in which the OS did not schedule us is repeated (5 tries at most);
    a real block in the UI thread would fail every try. When even an idle event loop already waits
    over 25 ms between ticks, a 50 ms bound cannot be measured here, and the test says so (skip)."""
    win, engine = studio
    idle = idle_gap_ms()
    if idle > 25:
        pytest.skip(f"machine too loaded to measure a 50 ms stall: an idle event loop waits {idle:.0f} ms")
    engine.step_delay = 0.004
    open_image(win, tmp_path, noise(256, 256))
    win.doc.edit_mask(M.cells_to_mask(np.eye(8, dtype=bool), win.doc.mask.shape), "diagonal")

    def generate():
        win.prompt.set_task("generate")
        win.prompt.candidates.setValue(4)
        win.prompt.set_prompt("a red circle and a blue star")
        return win.controller.run()

    def inpaint():
        win.prompt.set_task("inpaint")
        win.prompt.candidates.setValue(2)
        win.prompt.set_prompt("a green heart")
        return win.controller.run()

    tries = []
    for _ in range(5):
        (gen_ms, gen_ticks), (inp_ms, inp_ticks) = measure_stall(win, generate), measure_stall(win, inpaint)
        tries.append(max(gen_ms, inp_ms))
        assert gen_ticks > 20 and inp_ticks > 20, (gen_ticks, inp_ticks)
        if tries[-1] < 50:
            break
    record_property("max_stall_ms", [round(t, 1) for t in tries])
    print(f"\nevent-loop max gap while streaming, per try: {', '.join(f'{t:.1f} ms' for t in tries)}")
    # every finished job's candidates stay (4 generated, 2 inpainted per try) until accepted or discarded
    assert len(win.candidates.items) == 6 * len(tries) and len(win.history.entries) == 2 * len(tries)
    assert min(tries) < 50
