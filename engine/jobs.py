"""A job: a lazily run, cancellable iterator of typed events (engine/events.py).

The work runs in whichever thread consumes the iterator (the studio's worker thread, the CLI's
main thread), one step per `next()`. No producer thread: nothing runs ahead of the consumer, a
cancelled job wastes at most the step in flight, and a job nobody reads costs nothing.

`cancel()` may be called from any thread. The body checks `job.cancelled` between decode steps
(and the job checks it between events), so a cancelled job ends with `Cancelled` within one step.
Every job ends with exactly one of `Finished`, `Cancelled`, `Failed`; an exception in the body
becomes `Failed(message)` and never escapes into the consumer.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from enum import Enum

from engine.errors import TesseraError
from engine.events import TERMINAL_EVENTS, Cancelled, Event, Failed, Finished

log = logging.getLogger(__name__)

_ids = itertools.count(1)  # next() on itertools.count is atomic under the GIL


class JobState(str, Enum):
    """A job's life, in the engine (`Job.state`) and in the studio's queue (app/worker.py) alike."""

    def __str__(self) -> str:
        return self.value

    PENDING = "pending"  # not started: the engine job not yet iterated, the studio job still queued
    RUNNING = "running"
    FINISHED = "finished"  # ended with `Finished`
    CANCELLED = "cancelled"
    FAILED = "failed"


ENDED = frozenset({JobState.FINISHED, JobState.CANCELLED, JobState.FAILED})
_END_STATE = {Finished: JobState.FINISHED, Cancelled: JobState.CANCELLED, Failed: JobState.FAILED}


class JobFailedError(TesseraError):
    """Raised by `Job.result()` when the job ended with `Failed`."""


class JobCancelledError(TesseraError):
    """Raised by `Job.result()` when the job ended with `Cancelled`."""


class Job:
    """Iterate it for events; `cancel()` from anywhere; `result()` to run it to the end.

    `body(job)` is a generator function yielding non-terminal events and finally one `Finished`.
    It reads `job.id` for its events and `job.cancelled` to stop early (it may simply return).
    """

    def __init__(self, body: Callable[[Job], Iterator[Event]], task: str = "") -> None:
        self.id: int = next(_ids)
        self.task = task
        self._body = body
        self._gen: Iterator[Event] | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()  # one next() at a time, whatever thread calls it
        self._terminal: Event | None = None

    # -- control ------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the job to stop; harmless after it ended. The iterator then yields `Cancelled`."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called (the body polls this between steps)."""
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._terminal is not None

    @property
    def state(self) -> JobState:
        terminal = self._terminal
        if terminal is None:
            return JobState.PENDING if self._gen is None else JobState.RUNNING
        return _END_STATE[type(terminal)]

    @property
    def terminal(self) -> Event | None:
        """The final event once the job ended, else None."""
        return self._terminal

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Job:
        return self

    def __next__(self) -> Event:
        with self._lock:
            if self._terminal is not None:
                raise StopIteration
            if self._cancel.is_set():
                return self._end(Cancelled(self.id))
            try:
                if self._gen is None:
                    self._gen = iter(self._body(self))
                event = next(self._gen)
            except StopIteration:
                if self._cancel.is_set():  # the body noticed cancel() and returned
                    return self._end(Cancelled(self.id))
                return self._end(Failed(self.id, "internal error: the job ended without a result"))
            except TesseraError as exc:
                return self._end(Failed(self.id, str(exc)))
            except Exception as exc:  # a bug or a runtime failure: report it, keep the engine alive
                log.exception("job %d (%s) failed", self.id, self.task)
                return self._end(Failed(self.id, f"{type(exc).__name__}: {exc}"))
            except BaseException:  # KeyboardInterrupt, SystemExit: end the job, let it propagate
                self._end(Cancelled(self.id))
                raise
            if isinstance(event, TERMINAL_EVENTS):
                return self._end(event)
            if self._cancel.is_set():  # the step that just ran is thrown away
                return self._end(Cancelled(self.id))
            return event

    def _end(self, event: Event) -> Event:
        self._terminal = event
        if self._gen is not None and hasattr(self._gen, "close"):
            try:
                self._gen.close()  # runs the body's finally blocks now, not at garbage collection
            except Exception:
                log.exception("job %d: error while closing", self.id)
        self._gen = None
        return event

    def result(self, on_event: Callable[[Event], None] | None = None) -> Finished:
        """Run to the end (calling `on_event` for every event) and return `Finished`.

        Raises JobCancelledError / JobFailedError (TesseraErrors, so the CLI prints them plainly).
        """
        for event in self:
            if on_event is not None:
                on_event(event)
        terminal = self._terminal
        if isinstance(terminal, Finished):
            return terminal
        if isinstance(terminal, Cancelled):
            raise JobCancelledError(f"{self.task or 'job'} cancelled")
        assert isinstance(terminal, Failed)
        raise JobFailedError(terminal.message)

    def __repr__(self) -> str:
        return f"Job(id={self.id}, task={self.task!r}, state={self.state!r})"
