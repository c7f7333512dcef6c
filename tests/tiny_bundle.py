"""The tiny test bundle, checked in at tests/data/tiny-bundle so that the engine's tests need neither
torch nor an export (~15-50 s): random weights, every component real but tiny (training/export.py's
build_tiny_bundle: 16 px images, 4x4 codes). After a change to the bundle format or to the build,
regenerate it (test_bundle.py's slow test says when):

    python tests/tiny_bundle.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

CHECKED_IN = Path(__file__).resolve().parent / "data" / "tiny-bundle"
# Every SFT task, so the engine's tests reach every task with the tiny random-weight model.
TINY_TASKS = ("t2i", "caption", "caption_infill", "vqa", "infill", "edit", "segment", "seg2img", "grounded")


def extra() -> dict:
    from training.data.shapes import SEG_CLASSES

    return {"tasks": list(TINY_TASKS), "seg_classes": list(SEG_CLASSES)}


def build(path: Path) -> Path:
    """A fresh build through training.export's cache (torch)."""
    from training.export import make_tiny_bundle

    return make_tiny_bundle(path, extra=extra())


def opens(path: Path) -> bool:
    """Whether this engine runs the bundle (generate, caption, segment, inpaint); it does not once the
    bundle format has changed."""
    from engine.selftest import run_self_test

    return run_self_test(path, out=lambda *_: None) == 0


def regenerate() -> None:
    from training.export import build_tiny_bundle

    with tempfile.TemporaryDirectory() as tmp:
        fresh = build_tiny_bundle(Path(tmp) / "bundle", extra=extra())
        shutil.rmtree(CHECKED_IN, ignore_errors=True)
        shutil.copytree(fresh, CHECKED_IN)
    print(f"wrote {CHECKED_IN}")


if __name__ == "__main__":
    sys.path.insert(0, str(CHECKED_IN.parents[2]))
    regenerate()
