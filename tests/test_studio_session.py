"""Autosave and crash restore (app/session.py), including a studio process killed with SIGKILL,
and the `tessera studio --screenshot FILE --demo` command."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from studio_fakes import FakeEngine, noise

from app import mask as M
from app.document import Document
from app.imageutil import png_bytes
from app.window import MainWindow
from engine.imageio import load_image

TIMEOUT = 10_000
REPO = Path(__file__).resolve().parent.parent

# The studio as `tessera studio` starts it (app.main.create_studio), driven a little, then left running.
DRIVER = """
import sys
from argparse import Namespace
from app import mask as M
from app.main import create_studio

app, win = create_studio(Namespace(bundle=None, screenshot=None, demo=False))
win.session.timer.setInterval(200)
win.show()
win.open_path(sys.argv[1])
win.doc.begin_stroke(10, 10, M.brush_kernel(40, 1.0), erase=False)
win.doc.stroke_to(30, 20)
win.doc.end_stroke()
win.prompt.set_prompt("a red circle")
win.prompt.set_seed(7, "fixed")
win.prompt.candidates.setValue(1)
win.controller.run()  # queued behind the model load
sys.exit(app.exec())
"""

# `tessera studio ...` through app/commands.py alone: the full CLI would also import the training
# commands (and torch), which has nothing to do with the studio.
CLI = """
import argparse, sys
from app.commands import register
parser = argparse.ArgumentParser(prog="tessera")
register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def painted(image: np.ndarray) -> np.ndarray:
    """The mask the driver paints, computed here the same way."""
    doc = Document()
    doc.reset(image)
    doc.begin_stroke(10, 10, M.brush_kernel(40, 1.0), erase=False)
    doc.stroke_to(30, 20)
    doc.end_stroke()
    return doc.mask


def window(qtbot, restore=True, autosave=False):
    engine = FakeEngine()
    win = MainWindow(lambda: engine, autosave=autosave, restore=restore)
    qtbot.addWidget(win)
    return win


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_studio_comes_back_with_canvas_mask_history_and_prompt(qtbot, tessera_home, tmp_path):
    image = noise(48, 40, seed=4)
    start = tmp_path / "start.png"
    start.write_bytes(png_bytes(image))
    env = {**os.environ, "TESSERA_HOME": str(tessera_home), "TESSERA_FAKE_ENGINE": "1",
           "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(start)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = tessera_home / "session" / "state.json"

    def autosaved() -> bool:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return False
        return len(state["history"]) == 1 and state["prompt"]["prompt"] == "a red circle"

    try:
        deadline = time.monotonic() + 120  # ~3 s on a quiet machine; generous for a loaded one
        while not autosaved() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert autosaved(), "no autosave within 120 s"
    finally:
        proc.send_signal(signal.SIGKILL)  # no chance to save anything on the way out
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    win = window(qtbot)
    assert np.array_equal(win.doc.image, image)
    assert np.array_equal(win.doc.mask, painted(image))
    entry = win.history.entries[0]
    assert (entry.task, entry.prompt, entry.seed) == ("generate", "a red circle", 7)
    assert entry.thumbnail is not None and entry.thumbnail.shape == (64, 64, 4)
    assert win.prompt.prompt_text() == "a red circle" and win.prompt.seed.value() == 7
    assert win.file_path == str(start)


def test_autosave_every_few_seconds_and_restore_everything(qtbot, tessera_home, tmp_path):
    win = window(qtbot, restore=False, autosave=True)
    qtbot.waitUntil(lambda: win.model_label.text().startswith("●"), timeout=TIMEOUT)
    win.session.timer.setInterval(100)
    image = noise(64, 64, seed=2)
    (tmp_path / "a.png").write_bytes(png_bytes(image))
    win.open_path(tmp_path / "a.png")
    win.doc.invert_mask()
    grid = np.zeros((8, 8), np.int64)
    grid[2:5, 3:6] = 2
    win.doc.set_segmentation(grid, ("background", "circle", "square"))
    win.insight.set_caption("a noisy square")
    win.prompt.set_prompt("a purple star")
    with qtbot.waitSignal(win.session.saved, timeout=TIMEOUT):
        pass  # the timer saves on its own
    assert not win.session.dirty
    win.close()

    back = window(qtbot)
    assert np.array_equal(back.doc.image, image)
    assert back.doc.mask.min() == 255
    assert np.array_equal(back.doc.segmentation, grid) and back.doc.class_names[2] == "square"
    assert back.insight.caption_text == "a noisy square"
    assert back.prompt.prompt_text() == "a purple star"


def test_unchanged_images_are_not_rewritten_and_old_ones_are_removed(qtbot, tessera_home):
    win = window(qtbot, restore=False)
    win.doc.reset(noise(32, 32, seed=1))
    win.session.save()
    blobs = tessera_home / "session" / "blobs"
    first = {p.name: p.stat().st_mtime_ns for p in blobs.iterdir()}
    time.sleep(0.01)
    win.prompt.set_prompt("only the prompt changed")
    win.session.save()
    assert {p.name: p.stat().st_mtime_ns for p in blobs.iterdir()} == first
    win.doc.reset(noise(32, 32, seed=2))
    win.session.save()
    now = {p.name for p in blobs.iterdir()}
    assert len(now) == 3 and now != set(first)  # new canvas blob, old one deleted; mask and layout kept
    assert not list((tessera_home / "session").glob("*.tmp")) and not list(blobs.glob(".*"))


def test_a_broken_session_is_moved_aside_and_the_studio_starts_clean(qtbot, tessera_home):
    folder = tessera_home / "session"
    folder.mkdir()
    (folder / "state.json").write_text('{"version": 1, "canvas": "missing.png"')
    win = window(qtbot)
    assert win.doc.is_blank()
    assert "Could not restore" in win.last_error.windowTitle() or "restore" in win.last_error.text()
    assert not folder.exists()
    assert len(list(tessera_home.glob("session-broken-*"))) == 1


def test_screenshot_command_renders_the_demo_offscreen(tmp_path):
    out = tmp_path / "shots" / "caption.png"
    home = tmp_path / "home"
    env = {**os.environ, "TESSERA_HOME": str(home), "QT_QPA_PLATFORM": "offscreen"}
    env.pop("TESSERA_FAKE_ENGINE", None)
    done = subprocess.run([sys.executable, "-c", CLI, "studio", "--screenshot", str(out), "--demo"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    shot = load_image(out, size=None, alpha=True)
    assert shot.shape == (900, 1440, 4)
    assert len(np.unique(shot.reshape(-1, 4), axis=0)) > 500  # a real rendering, not a blank window
    assert not (home / "session").exists()  # the demo never touches the artist's session
    assert "caption" in done.stdout
