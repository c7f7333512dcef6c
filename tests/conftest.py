"""Shared fixtures: a tiny model bundle (the checked-in one, copied once per session) and an isolated
user dir."""

from __future__ import annotations

import shutil
import warnings

import pytest
from tiny_bundle import CHECKED_IN, build, opens


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A complete, verifiable model bundle with a tiny random-weight model (16 px images, 4x4 codes):
    a copy of tests/data/tiny-bundle, so no test can change it. Where this engine no longer runs that
    one (the bundle format changed), a fresh build through training.export (torch, ~15-50 s)."""
    path = tmp_path_factory.mktemp("tiny") / "bundle"
    shutil.copytree(CHECKED_IN, path)
    if opens(path):
        return path
    warnings.warn("tests/data/tiny-bundle is out of date: building one "
                  "(regenerate: python tests/tiny_bundle.py)", stacklevel=1)
    shutil.rmtree(path)
    return build(path)


@pytest.fixture
def tessera_home(tmp_path, monkeypatch):
    """$TESSERA_HOME in a fresh folder, so no test touches the real user library."""
    home = tmp_path / "tessera_home"
    home.mkdir()
    monkeypatch.setenv("TESSERA_HOME", str(home))
    return home
