"""Typed events a job yields while it runs. The studio and the CLI only ever listen to these.

A job is an iterator of events ending with exactly one of `Finished`, `Cancelled` or `Failed`.
Images are numpy arrays, (H, W, 3) uint8 RGB; segmentation maps are (h, w) int class grids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Progress:
    job_id: int
    done: int  # tokens generated so far (all candidates count once)
    total: int
    tokens_per_s: float


@dataclass(frozen=True)
class PartialImage:
    """Preview after a finished row of codes; rows not generated yet are drawn neutral."""

    job_id: int
    candidate: int
    rows_done: int
    rows_total: int
    image: np.ndarray


@dataclass(frozen=True)
class RetrievedDocument:
    text: str
    image: np.ndarray | None
    score: float
    source: str  # "bundle" or "library"


@dataclass(frozen=True)
class Retrieved:
    job_id: int
    documents: tuple[RetrievedDocument, ...]


@dataclass(frozen=True)
class Candidate:
    image: np.ndarray | None = None
    text: str | None = None
    segmentation: np.ndarray | None = None
    score: float | None = None  # retriever text-image score used for re-ranking


@dataclass(frozen=True)
class Finished:
    """The job's result: candidates best first, and every setting needed to reproduce it."""

    job_id: int
    task: str
    candidates: tuple[Candidate, ...]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Cancelled:
    job_id: int


@dataclass(frozen=True)
class Failed:
    job_id: int
    message: str


Event = Progress | PartialImage | Retrieved | Finished | Cancelled | Failed
TERMINAL_EVENTS = (Finished, Cancelled, Failed)
