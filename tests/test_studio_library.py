"""The studio's library panel against the engine's own user library: engine.Engine.library (a real
engine.library.UserLibrary in the user data folder) with a stand-in retriever, no model."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PIL import Image
from studio_fakes import noise

from app.demo_engine import PaletteEmbedder
from app.imageutil import png_bytes
from app.window import MainWindow
from engine.engine import Engine
from engine.library import UserLibrary

TIMEOUT = 10_000


def engine_without_model(retriever) -> Engine:
    """A real Engine object with nothing behind it but a retriever: all the library flow uses."""
    engine = Engine.__new__(Engine)
    engine.model_id, engine.provider, engine.tasks = "library-only", "CPU", frozenset()
    engine.seg_class_names = ("background",)
    engine.retriever, engine._library = retriever, None
    return engine


@pytest.fixture
def studio(qtbot, tessera_home):
    def make(retriever):
        engine = engine_without_model(retriever)
        win = MainWindow(lambda: engine, autosave=False, restore=False)
        qtbot.addWidget(win)
        win.show()
        qtbot.waitUntil(lambda: win.model_label.text().startswith("●"), timeout=TIMEOUT)
        jobs = list(win.queue.records)
        qtbot.waitUntil(lambda: all(win.queue.records[j].state == "finished" for j in jobs), timeout=TIMEOUT)
        messages = []
        win.controller.message.connect(messages.append)
        return win, engine, messages
    return make


def texts(win) -> list[str]:
    return [win.retrieval.library.item(i).text() for i in range(win.retrieval.library.count())]


def test_add_list_remove_through_the_engines_library(qtbot, studio, tmp_path, tessera_home):
    win, engine, messages = studio(PaletteEmbedder())
    folder = tmp_path / "refs"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (215, 35, 35)).save(folder / "red.png")
    (folder / "sub" / "noise.png").write_bytes(png_bytes(noise(32, 32)))
    Image.new("RGB", (30, 30), (40, 75, 220)).save(folder / "blue.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image")
    seen = []
    win.queue.event.connect(lambda j, ev: seen.append((ev.done, ev.total)))
    win.retrieval.add_folder_requested.emit(str(folder))
    qtbot.waitUntil(lambda: len(win.retrieval.library_ids()) == 3, timeout=TIMEOUT)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)] and not win.retrieval.progress.isVisible()
    assert messages[-1].startswith("Added 3 image(s) to the library. Skipped broken.png (")

    library = engine.library
    assert type(library) is UserLibrary and library.folder == tessera_home / "library"
    entries = library.list()
    assert win.retrieval.library_ids() == [e.id for e in entries]
    assert texts(win) == [e.path for e in entries]  # no captions: the file each came from
    red = next(i for i, e in enumerate(entries) if e.path.endswith("red.png"))
    thumb = win.retrieval.library.item(red).icon().pixmap(48).toImage()
    assert thumb.pixelColor(24, 24).name() == "#d72323"  # the library's stored thumbnail

    win.retrieval.library.item(red).setSelected(True)
    win.retrieval.remove_button.click()
    qtbot.waitUntil(lambda: len(win.retrieval.library_ids()) == 2, timeout=TIMEOUT)
    assert messages[-1] == "Removed 1 image(s) from the library."
    assert [e.path for e in UserLibrary(PaletteEmbedder()).list()] == texts(win)  # saved on disk

    assert win.open_path(folder / "red.png")
    win.act["reference"].trigger()
    qtbot.waitUntil(lambda: len(win.retrieval.library_ids()) == 3, timeout=TIMEOUT)
    assert str(tessera_home / "references") in texts(win)[-1]


def test_a_model_without_a_retriever_has_no_library(qtbot, studio, tmp_path):
    win, _, _ = studio(None)
    assert win.retrieval.library_ids() == [] and not win.retrieval.remove_button.isEnabled()
    win.retrieval.add_folder_requested.emit(str(tmp_path))
    qtbot.waitUntil(lambda: win.last_error is not None, timeout=TIMEOUT)
    assert "no retriever" in win.last_error.text() and not win.retrieval.progress.isVisible()
