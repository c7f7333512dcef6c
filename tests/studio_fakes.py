"""FakeEngine for the studio tests: the demo engine's API and streaming, plus knobs for tests.

- `calls` records every engine call (method, prompt-ish argument) in the order the worker made them;
- `fail_with` makes the next jobs end with `Failed(message)` after a few decode steps;
- `hold` (a threading.Event) keeps every job at its first step until the test sets it.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from app.demo_engine import DemoEngine
from engine.events import Failed
from engine.jobs import Job


class FakeEngine(DemoEngine):
    model_id = "fake-shapes"

    def __init__(self, step_delay: float = 0.002) -> None:
        super().__init__(step_delay)
        self.calls: list[tuple[str, str]] = []
        self.fail_with: str | None = None
        self.hold: threading.Event | None = None

    def _wrap(self, name: str, arg: str, job: Job) -> Job:
        self.calls.append((name, arg))
        if self.fail_with is None and self.hold is None:
            return job
        message, hold = self.fail_with, self.hold

        def body(outer: Job):
            for i, ev in enumerate(job):
                if hold is not None:
                    while not hold.wait(0.005):  # a step that waits, still cancellable within it
                        if outer.cancelled:
                            job.cancel()
                            return
                if outer.cancelled:
                    job.cancel()
                    return
                if message is not None and i == 3:
                    yield Failed(outer.id, message)
                    return
                yield _retag(ev, outer.id)

        return Job(body, job.task)

    def generate(self, prompt, **kw):
        return self._wrap("generate", prompt, super().generate(prompt, **kw))

    def inpaint(self, image, mask, prompt="", **kw):
        return self._wrap("inpaint", prompt, super().inpaint(image, mask, prompt, **kw))

    def edit(self, image, instruction, **kw):
        return self._wrap("edit", instruction, super().edit(image, instruction, **kw))

    def caption(self, image):
        return self._wrap("caption", "", super().caption(image))

    def answer(self, image, question):
        return self._wrap("answer", question, super().answer(image, question))

    def segment(self, image):
        return self._wrap("segment", "", super().segment(image))


def _retag(ev, job_id: int):
    """Events of the inner job carry its id; the wrapper's consumer expects the outer one."""
    return replace(ev, job_id=job_id)


def solid(h: int = 64, w: int = 64, rgb=(200, 40, 40), alpha: int = 255) -> np.ndarray:
    """A uniform RGBA test image."""
    image = np.empty((h, w, 4), np.uint8)
    image[:] = (*rgb, alpha)
    return image


def noise(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """An opaque RGBA image of random pixels: any accidental change to it shows."""
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.dstack([rgb, np.full((h, w), 255, np.uint8)])

