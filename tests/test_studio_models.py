"""File › Model: the installed bundles listed (the loaded one checked, a broken one disabled with its
reason), switching to another without restarting, the canvas taking the model's image size, tasks the
model lacks disabled with the bundle's reason, and Open model… remembering what it opened."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json
import shutil

import numpy as np
import pytest
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QFileDialog
from studio_fakes import FakeEngine, noise

from app.imageutil import png_bytes
from app.settings import StudioSettings
from app.window import MainWindow
from engine.bundle import DECODE_FILE, write_manifest
from engine.paths import default_bundle_dir, models_dir
from engine.task_table import EngineTask

TIMEOUT = 20_000
REASON = "needs the SigLIP image encoder, which was not imported"


@pytest.fixture
def studio(qtbot, tessera_home):
    win = MainWindow(FakeEngine, StudioSettings(), autosave=False, restore=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.engine_info is not None, timeout=TIMEOUT)
    return win


def t2i_only(tiny_bundle, path):
    """The tiny bundle (16 px) as an importer writes a text-to-image model: one task, reasons for others."""
    shutil.copytree(tiny_bundle, path)
    config = json.loads((path / "config.json").read_text())
    config.update(name="tiny-t2i", tasks=["t2i"], unsupported={"caption": REASON})
    (path / "config.json").write_text(json.dumps(config))
    write_manifest(path)
    return path


def entries(win) -> dict[str, object]:
    win.model_menu.aboutToShow.emit()
    return {a.text(): a for a in win.model_menu.actions() if a.text()}


def switch(qtbot, win, text: str) -> None:
    entries(win)[text].trigger()
    qtbot.waitUntil(lambda: win.queue.running() is None and not win.queue.pending(), timeout=TIMEOUT)


def test_the_menu_lists_bundles_and_switches_between_them(qtbot, studio, tiny_bundle, tmp_path):
    win = studio
    t2i_only(tiny_bundle, models_dir() / "tiny-t2i")
    (shutil.copytree(tiny_bundle, models_dir() / "broken") / DECODE_FILE).unlink()
    listed = entries(win)
    assert list(listed) == ["shapes-default  ·  64×64", "broken  (unavailable)", "tiny-t2i  ·  16×16",
                            "Open &model…", "Show the models folder"]
    assert not any(a.isChecked() for a in listed.values())  # the demo engine is no bundle
    broken = listed["broken  (unavailable)"]
    assert not broken.isEnabled() and "model/decode.onnx is missing" in broken.toolTip()
    assert "Generate, Caption, Ask, Inpaint" in listed["shapes-default  ·  64×64"].toolTip()

    win.prompt.set_task(EngineTask.CAPTION)
    switch(qtbot, win, "tiny-t2i  ·  16×16")
    assert win.engine_info["model_id"].startswith("tiny-t2i") and win.model_label.text().startswith("●  tiny")
    assert (win.doc.width, win.doc.height) == (16, 16) and win.doc.is_blank()  # the model's size
    buttons = {b.property("task"): b for b in win.prompt.task_group.buttons()}
    assert not buttons[EngineTask.CAPTION].isEnabled() and buttons[EngineTask.CAPTION].toolTip() == REASON
    assert "not trained" in buttons[EngineTask.INPAINT].toolTip()
    assert win.prompt.task_group.checkedButton() is buttons[EngineTask.GENERATE]
    assert [a.text() for a in entries(win).values() if a.isChecked()] == ["tiny-t2i  ·  16×16"]

    picture = tmp_path / "picture.png"
    picture.write_bytes(png_bytes(noise(30, 40, seed=3)))
    assert win.open_path(picture)  # a picture stays whatever the model
    switch(qtbot, win, "shapes-default  ·  64×64")
    assert win.engine_info["bundle"] == str(default_bundle_dir())
    assert (win.doc.width, win.doc.height) == (40, 30)
    assert all(b.isEnabled() for b in buttons.values())
    win.new_canvas()
    assert (win.doc.width, win.doc.height) == (64, 64)
    assert [a.text() for a in entries(win).values() if a.isChecked()] == ["shapes-default  ·  64×64"]
    win.doc.edit_mask(np.full_like(win.doc.mask, 255), "all")  # a started canvas keeps its size
    switch(qtbot, win, "tiny-t2i  ·  16×16")
    assert win.engine_info["model_id"].startswith("tiny-t2i") and (win.doc.width, win.doc.height) == (64, 64)


def test_open_model_remembers_what_loaded(qtbot, studio, tiny_bundle, tmp_path, monkeypatch):
    win = studio
    broken = shutil.copytree(tiny_bundle, tmp_path / "broken")
    (broken / DECODE_FILE).unlink()
    mine = t2i_only(tiny_bundle, tmp_path / "mine")
    for folder in (broken, mine):
        monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, f=folder: str(f))
        entries(win)["Open &model…"].trigger()
        qtbot.waitUntil(lambda: win.queue.running() is None and not win.queue.pending(), timeout=TIMEOUT)
    assert "decode.onnx is missing" in win.last_error.text()  # and it was not remembered
    assert win.settings.recent_models == [str(mine)] == StudioSettings.load().recent_models
    assert win.engine_info["bundle"] == str(mine) and entries(win)["tiny-t2i  ·  16×16"].isChecked()

    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()))
    entries(win)["Show the models folder"].trigger()
    assert opened == [str(models_dir())]
    assert np.array_equal(win.doc.image, np.zeros((16, 16, 4), np.uint8))
