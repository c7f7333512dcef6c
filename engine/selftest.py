"""`tessera --self-test`: load the bundled model and run each task headless, one line per step.

Works from source and inside the frozen build alike: it imports only the runtime (no torch, no
training, no Qt). A task the bundled model was not trained for is reported as skipped, not failed:
the self-test checks the installation, the model card states the model's abilities.
Exit status 0 when every step that ran passed, 1 otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.errors import UnsupportedTaskError

PROMPT = "a red circle above a blue square"


def run_self_test(bundle_dir: str | Path | None = None, out=print) -> int:
    failures = 0
    state: dict = {}

    def step(name: str, fn: Callable[[], str]) -> bool:
        nonlocal failures
        t0 = time.perf_counter()
        try:
            detail = fn()
        except UnsupportedTaskError as exc:
            out(f"self-test: {name:<8} SKIP  {exc}")
            return False
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the next step still runs
            failures += 1
            out(f"self-test: {name:<8} FAIL  {type(exc).__name__}: {exc}")
            return False
        out(f"self-test: {name:<8} ok    {detail} ({time.perf_counter() - t0:.2f} s)")
        return True

    def load() -> str:
        from engine.engine import Engine

        state["engine"] = engine = Engine.load(bundle_dir)
        return f"{engine.model_id} on {engine.provider}, tasks: {', '.join(sorted(engine.tasks))}"

    def generate() -> str:
        finished = state["engine"].generate(PROMPT, seed=0).result()
        image = finished.candidates[0].image
        _check(
            image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, f"bad image {image.shape}"
        )
        state["image"] = image
        return f"{image.shape[1]}x{image.shape[0]} image for {PROMPT!r}"

    def caption() -> str:
        text = state["engine"].caption(state["image"]).result().candidates[0].text
        _check(isinstance(text, str), "no caption text")
        return f"caption {text[:60]!r}"

    def segment() -> str:
        engine = state["engine"]
        grid = np.asarray(engine.segment(state["image"]).result().candidates[0].segmentation)
        _check(grid.shape == tuple(engine.vocab.image_grid), f"class grid of shape {grid.shape}")
        _check(grid.min() >= 0 and grid.max() < len(engine.seg_class_names), "class id out of range")
        names = sorted({engine.seg_class_names[c] for c in np.unique(grid)})
        return f"{grid.shape[0]}x{grid.shape[1]} class grid: {', '.join(names)}"

    def inpaint() -> str:
        image = state["image"]
        mask = np.zeros(image.shape[:2], bool)
        h, w = mask.shape
        mask[h // 4 : h // 2, w // 4 : 3 * w // 4] = True
        result = state["engine"].inpaint(image, mask, seed=0).result().candidates[0].image
        _check(result.shape == image.shape, f"result of shape {result.shape}")
        _check(np.array_equal(result[~mask], image[~mask]), "pixels outside the mask changed")
        return f"{int(mask.sum())} pixels regenerated, the other {int((~mask).sum())} unchanged"

    if not step("load", load):
        out("self-test: FAILED (the model did not load)")
        return 1
    if not step("generate", generate):
        state["image"] = _disc()  # the other steps still check their task on a drawn picture
    for name, fn in (("caption", caption), ("segment", segment), ("inpaint", inpaint)):
        step(name, fn)
    if failures:
        out(f"self-test: FAILED ({failures} step{'s' if failures > 1 else ''})")
        return 1
    out("self-test: passed")
    return 0


def _disc(size: int = 64) -> np.ndarray:
    """A red disc on white."""
    y, x = np.mgrid[:size, :size]
    inside = (y - size / 2) ** 2 + (x - size / 2) ** 2 < (size / 4) ** 2
    image = np.full((size, size, 3), 255, np.uint8)
    image[inside] = (220, 30, 30)
    return image


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)
