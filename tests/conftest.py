"""Shared fixtures: a tiny exported model bundle (built once per session) and an isolated user dir."""

from __future__ import annotations

import pytest

# Every SFT task, so the engine's tests reach every task with the tiny random-weight model.
TINY_TASKS = ("t2i", "caption", "caption_infill", "vqa", "infill", "edit", "segment", "seg2img", "grounded")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A complete, verifiable model bundle with a tiny random-weight model (16 px images, 4x4 codes).
    Built through training.export's cache: seconds once cached, ~1 min the first time."""
    from training.data.shapes import SEG_CLASSES
    from training.export import make_tiny_bundle

    extra = {"tasks": list(TINY_TASKS), "seg_classes": list(SEG_CLASSES)}
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle", extra=extra)


@pytest.fixture
def tessera_home(tmp_path, monkeypatch):
    """$TESSERA_HOME in a fresh folder, so no test touches the real user library."""
    home = tmp_path / "tessera_home"
    home.mkdir()
    monkeypatch.setenv("TESSERA_HOME", str(home))
    return home
