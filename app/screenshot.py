"""`tessera studio --screenshot FILE [--demo] [--bundle DIR]`: render the window offscreen and exit.

The studio is driven through its real job pipeline - with the bundled model (or --bundle), or with
the demo engine (--demo), which streams events through the worker thread exactly as a model would -
into one of these states, picked by FILE's name: generating.png (mid-stream), mask.png,
segmentation.png, caption.png, layout.png (layout painting), regions.png (labelled boxes); any
other name shows an image, a painted mask, a segmentation overlay and a caption at once. The
guide's screenshots are made with the bundled model by `python docs/screenshots/make.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QEventLoop, Qt
from PySide6.QtWidgets import QApplication

from app.demo_engine import COLORS
from app.window import MainWindow
from engine.events import PartialImage
from engine.jobs import ENDED

log = logging.getLogger(__name__)
STATES = ("generating", "mask", "segmentation", "caption", "layout", "regions")
SCENE = "a large red circle, a blue star and a yellow triangle"


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    app = QApplication.instance()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        time.sleep(0.002)
    return True


def _settle(win: MainWindow) -> None:
    for _ in range(5):
        QApplication.processEvents()
        time.sleep(0.01)
    win.canvas.fit()
    QApplication.processEvents()


def _finish(win: MainWindow, job_id: int | None) -> None:
    """Wait for a job (a model on a busy machine may take minutes)."""
    if job_id is None or not wait_until(lambda: win.queue.records[job_id].state in ENDED, 600):
        raise RuntimeError(f"screenshot job {job_id} did not finish")


def _generate(win: MainWindow, prompt: str, seed: int, n: int = 3, accept: bool = True) -> None:
    win.prompt.set_task("generate")
    win.prompt.set_prompt(prompt)
    win.prompt.set_seed(seed, "fixed")
    win.prompt.candidates.setValue(n)
    _finish(win, win.controller.run())
    if accept:
        win.candidates.accept_current()


def _paint_mask(win: MainWindow) -> None:
    """A brush stroke over the star, drawn the way the mouse would (one undoable stroke)."""
    x, y = _colour_centre(win, "blue")
    doc = win.doc
    win.canvas.set_brush(size=140, hardness=0.6)
    doc.begin_stroke(x - 6, y - 4, win.canvas.brush_kernel(), erase=False)
    for dx, dy in ((2, 3), (7, -2), (3, 7)):
        doc.stroke_to(x + dx, y + dy)
    doc.end_stroke()


def _colour_centre(win: MainWindow, colour: str) -> tuple[float, float]:
    """The centre of the pixels of one of the demo's shape colours (where to paint or click)."""
    rgb = win.doc.engine_image().astype(np.int32)
    near = np.abs(rgb - np.array(COLORS[colour])).sum(axis=2) < 60
    ys, xs = np.nonzero(near)
    if not len(xs):
        return win.doc.width / 2, win.doc.height / 2
    return float(xs.mean()), float(ys.mean())


def _stage(win: MainWindow, state: str) -> Callable[[], None] | None:
    """Drive the studio into `state`; returns a grab function when the grab must happen mid-job.
    A demo engine draws exactly what the prompts name; a model draws what it learned."""
    if state == "generating":
        _generate(win, "a purple heart on a cream background", 11, n=2)
        _generate(win, "a green cross and a pink square", 5, n=2, accept=False)
        win.show_panel("retrieval")
        win.prompt.set_prompt(SCENE)
        win.prompt.set_seed(7, "fixed")
        return lambda: win.controller.run()
    _generate(win, SCENE, 7)
    if state == "layout":
        _layout(win)
        return None
    if state == "regions":
        _regions(win)
        return None
    if state in ("mask", "all"):
        _paint_mask(win)
        win.prompt.set_task("inpaint")
        win.prompt.set_prompt("a green heart")
        win.act["brush"].trigger()
        x, y = _colour_centre(win, "red")  # the brush cursor, as if the mouse were over the circle
        r = win.canvas.brush_size / 2 / win.doc.scale
        win.canvas.cursor_item.setRect(x - r, y - r, 2 * r, 2 * r)
        win.canvas.cursor_item.setVisible(True)
    if state in ("segmentation", "all"):
        _finish(win, win.controller.segment())
        win.act["region"].trigger()
    if state in ("caption", "all"):
        _finish(win, win.controller.caption())
        win.show_panel("describe")
        _finish(win, win.controller.ask("what colour is the star?"))
        win.insight.question.setText("how many shapes are there?")
    if state in ("mask", "segmentation"):
        win.show_panel("layers")
    return None


def _layout(win: MainWindow) -> None:
    """Segment the image, start the layout from it, paint a star in the corner, generate from it."""
    _finish(win, win.controller.segment())
    win.layout.from_segmentation()
    win.layers.seg_visible.setChecked(False)
    names = win.engine_info["seg_class_names"] if win.engine_info else ()
    star = names.index("star") if "star" in names else 1
    win.compose.swatches.button(star).click()
    win.canvas.set_brush(size=150)
    for x, y, drag in ((46, 46, False), (54, 50, True), (50, 56, True)):
        win.layout.drag(x, y) if drag else win.layout.press(x, y, Qt.KeyboardModifier.NoModifier)
    win.layout.release()
    win.prompt.set_prompt("a red circle and a yellow star")
    win.show_panel("compose")
    _finish(win, win.controller.run_layout())
    win.candidates.list.setCurrentRow(0)


def _regions(win: MainWindow) -> None:
    """Two labelled boxes, the second selected, and the images generated with them."""
    win.act["boxes"].trigger()
    win.regions.add("a red circle", (16, 24, 120, 128))
    win.regions.add("a blue star", (136, 120, 240, 232))
    win.prompt.set_prompt("a red circle and a blue star")
    win.show_panel("compose")
    _finish(win, win.controller.run_regions())
    win.candidates.list.setCurrentRow(0)


def take_screenshot(win: MainWindow, path: str | Path) -> int:
    path = Path(path)
    state = path.stem if path.stem in STATES else "all"
    win.resize(1440, 900)
    win.show()
    if not wait_until(lambda: win.queue.records and all(
            r.state in ENDED for r in win.queue.records.values()), 600):
        log.warning("the model did not finish loading before the screenshot")
    start = _stage(win, state)
    if start is not None:  # grab mid-stream: once the image is five rows in
        grabbed: list = []

        def on_event(_job_id, ev):
            if isinstance(ev, PartialImage) and ev.rows_done >= 5 and not grabbed:
                QApplication.processEvents()
                grabbed.append(win.grab())

        win.queue.event.connect(on_event)
        start()
        wait_until(lambda: bool(grabbed), 600)
        win.cancel_active()
        image = grabbed[0] if grabbed else win.grab()
    else:
        _settle(win)
        image = win.grab()
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = image.save(str(path), "PNG")
    win.close()
    print(f"screenshot: {path} ({state})" if ok else f"could not write {path}")
    return 0 if ok else 1
