"""EngineAPI: what the studio (and any other front end) needs of an engine.

`engine.engine.Engine` (a model bundle) and `app.demo_engine.DemoEngine` (numpy drawings, for demos
and studio tests) both satisfy it; tests/test_engine_api.py holds their signatures to this one, so
the stand-in cannot drift from the real thing. Every request returns a `Job` streaming typed events
(engine/events.py); bad input raises `BadInputError` at the call, a task the model cannot do
`UnsupportedTaskError`. `tasks` says which requests it serves (engine/task_table.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from engine.settings import DEFAULTS

if TYPE_CHECKING:
    import numpy as np

    from engine.jobs import Job
    from engine.library import UserLibrary
    from engine.task_table import EngineTask

D = DEFAULTS


class EngineAPI(Protocol):
    model_id: str
    provider: str  # the execution provider, "CPU" / "CUDA"
    tasks: frozenset[EngineTask]
    seg_class_names: tuple[str, ...]
    image_size: int  # the side of the square images it makes (the studio's new canvas)
    unsupported: dict[str, str]  # task -> why it is refused, where the bundle says (an imported model)

    @property
    def library(self) -> UserLibrary:
        """The artist's reference library."""
        ...

    def generate(self, prompt: str, *, n: int = 1, seed: int | None = None, cfg: float | None = D.cfg,
                 temperature: float = D.temperature, top_p: float = D.top_p,
                 cdk_alpha: float | None = D.cdk_alpha, cdk_k: int | None = D.cdk_k,
                 retrieve: int = D.retrieve) -> Job: ...

    def ground(self, prompt: str, boxes: Sequence[tuple[str, Sequence[int]]], *, n: int = 1,
               seed: int | None = None, cfg: float | None = D.cfg, temperature: float = D.temperature,
               top_p: float = D.top_p) -> Job: ...

    def from_layout(self, layout: np.ndarray, prompt: str = "", *, n: int = 1, seed: int | None = None,
                    cfg: float | None = D.cfg, temperature: float = D.temperature,
                    top_p: float = D.top_p) -> Job: ...

    def caption(self, image: np.ndarray, *, temperature: float | None = None, seed: int | None = None,
                retrieve: int = 0) -> Job: ...

    def answer(self, image: np.ndarray, question: str, *, temperature: float | None = None,
               seed: int | None = None) -> Job: ...

    def segment(self, image: np.ndarray) -> Job: ...

    def edit(self, image: np.ndarray, instruction: str, *, n: int = 1, seed: int | None = None,
             cfg: float | None = D.cfg, temperature: float = D.temperature,
             top_p: float = D.top_p) -> Job: ...

    def inpaint(self, image: np.ndarray, mask: np.ndarray, prompt: str = "", *, n: int = 1,
                seed: int | None = None, cfg: float | None = D.cfg, temperature: float = D.temperature,
                top_p: float = D.top_p) -> Job: ...
