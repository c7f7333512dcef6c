"""The job queue: one worker thread owns the engine and runs jobs one at a time, in order.

UI thread                                   worker thread (QThread running _Worker.run)
  JobQueue.submit(task, call) -> id  --put-->  queue.Queue --get--> call(engine, progress)
  JobQueue.cancel(id)  --(lock)-->  the running engine Job's cancel(), or a mark that skips it
  JobQueue signals  <--queued signals--  started / event / ended

Jobs carry studio ids (assigned at submit, before the engine job exists) so a cancel can never
hit another job: a queued job is skipped when its turn comes, a running one is cancelled through
the engine Job object the worker holds for exactly that id. Every engine call, including loading
the model, happens on the worker thread; the UI thread only ever sees events.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, QThread, Slot

from app.qtfix import Signal
from engine.errors import TesseraError
from engine.events import Cancelled, Failed, Finished, Progress
from engine.jobs import ENDED, JobState

if TYPE_CHECKING:
    from engine.api import EngineAPI

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.03  # s: Progress events are coalesced to ~30 per second; the rest are dropped

# call(engine, progress) -> an engine Job (iterated for events) or a plain result.
# progress(done, total) reports the progress of plain calls (indexing a library folder).
JobCall = Callable[[Any, Callable[[int, int], None]], Any]


class NoModelError(TesseraError):
    """A job needs the model but none is loaded."""


@dataclass
class JobRecord:
    id: int
    task: str  # "generate", "inpaint", ..., "library", "load"
    label: str  # what the queue view shows
    state: JobState = JobState.PENDING  # the engine's job states (engine/jobs.py)
    params: dict = field(default_factory=dict)  # prompt and settings: history, re-run, PNG metadata
    context: Any = None  # studio-side data the result needs (e.g. the original image of an inpaint)
    message: str = ""  # the error of a failed job


@dataclass
class _Task:
    id: int
    call: JobCall
    load: bool = False  # the result is the new engine


class _Worker(QObject):
    started = Signal(int)
    event = Signal(int, object)
    ended = Signal(int, str, object)  # id, JobState it ended in, Finished / plain result / error message
    engine_changed = Signal(object)  # EngineInfo-like dict, read on the worker thread

    def __init__(self) -> None:
        super().__init__()
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._lock = threading.Lock()
        self._cancelled: set[int] = set()
        self._running_id: int | None = None
        self._running_job = None
        self.engine: EngineAPI | None = None

    # -- called from the UI thread -----------------------------------------------------------------
    def put(self, task: _Task) -> None:
        self._queue.put(task)

    def cancel(self, job_id: int) -> None:
        with self._lock:
            self._cancelled.add(job_id)
            if self._running_id == job_id and self._running_job is not None:
                self._running_job.cancel()

    def stop(self) -> None:
        """Cancel the running job (even one whose engine call has not returned yet) and end run()."""
        with self._lock:
            if self._running_id is not None:
                self._cancelled.add(self._running_id)
            if self._running_job is not None:
                self._running_job.cancel()
        self._queue.put(None)

    # -- the worker thread -------------------------------------------------------------------------
    @Slot()
    def run(self) -> None:
        while (task := self._queue.get()) is not None:
            with self._lock:
                if task.id in self._cancelled:
                    self._cancelled.discard(task.id)
                    skipped = True
                else:
                    skipped = False
                    self._running_id, self._running_job = task.id, None
            if skipped:
                self.ended.emit(task.id, JobState.CANCELLED, None)
                continue
            self.started.emit(task.id)
            try:
                self._execute(task)
            finally:
                with self._lock:
                    self._running_id = self._running_job = None
                    self._cancelled.discard(task.id)

    def _execute(self, task: _Task) -> None:
        def progress(done: int, total: int) -> None:
            self.event.emit(task.id, Progress(task.id, done, total, 0.0))

        try:
            result = task.call(self.engine, progress)
        except Exception as exc:  # TesseraError: a plain message; anything else: a bug, logged in full
            if not isinstance(exc, TesseraError):
                log.exception("job %d failed", task.id)
            self.ended.emit(task.id, JobState.FAILED, _message(exc))
            return
        if task.load:
            self.engine = result
            self.engine_changed.emit(engine_info(result))
            self.ended.emit(task.id, JobState.FINISHED, None)
        elif isinstance(result, Iterator) and hasattr(result, "cancel"):
            self._stream(task.id, result)
        else:
            self.ended.emit(task.id, JobState.FINISHED, result)

    def _stream(self, job_id: int, job) -> None:
        with self._lock:
            self._running_job = job
            if job_id in self._cancelled:  # cancelled between dequeue and the engine call returning
                job.cancel()
        last_progress, pending = 0.0, None
        try:
            for ev in job:
                if isinstance(ev, Progress):
                    now = time.perf_counter()
                    if now - last_progress < PROGRESS_INTERVAL and ev.done < ev.total:
                        pending = ev
                        continue
                    last_progress, pending = now, None
                elif isinstance(ev, Finished):
                    if pending is not None:
                        self.event.emit(job_id, pending)
                    self.ended.emit(job_id, JobState.FINISHED, ev)
                    return
                elif isinstance(ev, Cancelled):
                    self.ended.emit(job_id, JobState.CANCELLED, None)
                    return
                elif isinstance(ev, Failed):
                    self.ended.emit(job_id, JobState.FAILED, ev.message)
                    return
                self.event.emit(job_id, ev)
        except Exception as exc:  # an engine whose iterator raises instead of yielding Failed
            log.exception("job %d raised", job_id)
            self.ended.emit(job_id, JobState.FAILED, _message(exc))
            return
        self.ended.emit(job_id, JobState.FAILED, "the job ended without a result")


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TesseraError) else f"{type(exc).__name__}: {exc}"


def engine_info(engine: EngineAPI) -> dict:
    """What the UI needs to know about the engine, read on the worker thread that owns it; "bundle" is
    the folder of a bundle's engine (File › Model checks it), None for the demo's."""
    bundle = getattr(engine, "bundle", None)
    return {
        "model_id": str(getattr(engine, "model_id", "unknown model")),
        "provider": str(getattr(engine, "provider", "CPU")),
        "tasks": frozenset(getattr(engine, "tasks", ()) or ()),
        "seg_class_names": tuple(getattr(engine, "seg_class_names", ()) or ()),
        "image_size": int(getattr(engine, "image_size", 0) or 0),
        "unsupported": dict(getattr(engine, "unsupported", {}) or {}),
        "bundle": str(bundle.root) if bundle is not None else None,
    }


class JobQueue(QObject):
    """The UI side of the queue: job records and their states, signals for the views."""

    changed = Signal(int)  # a job was added or changed state
    event = Signal(int, object)  # Progress / PartialImage / Retrieved of a running job
    ended = Signal(int, str, object)  # id, the JobState it ended in, result or message
    engine_changed = Signal(object)  # engine_info()

    MAX_RECORDS = 200

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.records: dict[int, JobRecord] = {}
        self._next_id = 1
        self._thread = QThread()
        self._thread.setObjectName("tessera-engine")
        self._worker = _Worker()
        self._worker.moveToThread(self._thread)
        # Queued: run() starts inside the thread's event loop, so quit() at shutdown ends that loop
        # as soon as run() returns (a direct call would run before exec() and miss the quit).
        self._thread.started.connect(self._worker.run, Qt.ConnectionType.QueuedConnection)
        self._worker.started.connect(self._on_started)
        self._worker.event.connect(self._on_event)
        self._worker.ended.connect(self._on_ended)
        self._worker.engine_changed.connect(self.engine_changed)
        self._thread.start()

    def load(self, factory: Callable[[], EngineAPI], label: str = "Load model",
             params: dict | None = None) -> int:
        return self._add("load", label, lambda engine, progress: factory(), params or {}, None, load=True)

    def submit(self, task: str, label: str, call: JobCall, params: dict | None = None,
               context: Any = None) -> int:
        def guarded(engine, progress):
            if engine is None:
                raise NoModelError("No model is loaded: choose one in File › Model")
            return call(engine, progress)

        return self._add(task, label, guarded, params or {}, context)

    def _add(self, task: str, label: str, call: JobCall, params: dict, context: Any,
             load: bool = False) -> int:
        job_id = self._next_id
        self._next_id += 1
        self.records[job_id] = JobRecord(job_id, task, label, params=params, context=context)
        self._prune()
        self._worker.put(_Task(job_id, call, load))
        self.changed.emit(job_id)
        return job_id

    def cancel(self, job_id: int) -> bool:
        """Cancel that job and only that one. False if it already ended."""
        record = self.records.get(job_id)
        if record is None or record.state in ENDED:
            return False
        self._worker.cancel(job_id)
        if record.state == JobState.PENDING:  # the worker will skip it; report it at once
            record.state = JobState.CANCELLED
            self.changed.emit(job_id)
            self.ended.emit(job_id, JobState.CANCELLED, None)
        return True

    def cancel_all(self) -> None:
        for job_id in list(self.records):
            self.cancel(job_id)

    def running(self) -> JobRecord | None:
        return next((r for r in self.records.values() if r.state == JobState.RUNNING), None)

    def pending(self) -> list[JobRecord]:
        return [r for r in self.records.values() if r.state not in ENDED]

    def shutdown(self, timeout_ms: int = 5000) -> None:
        if not self._thread.isRunning():
            return
        for job_id in list(self.records):
            if self.records[job_id].state == JobState.PENDING:
                self._worker.cancel(job_id)
        self._worker.stop()
        self._thread.quit()
        if not self._thread.wait(timeout_ms):
            log.warning("the engine thread did not stop within %d ms", timeout_ms)

    # -- worker signals (queued onto the UI thread) ------------------------------------------------
    def _on_started(self, job_id: int) -> None:
        record = self.records.get(job_id)
        if record is not None and record.state == JobState.PENDING:
            record.state = JobState.RUNNING
            self.changed.emit(job_id)

    def _on_event(self, job_id: int, ev: object) -> None:
        record = self.records.get(job_id)
        if record is not None and record.state == JobState.RUNNING:
            self.event.emit(job_id, ev)

    def _on_ended(self, job_id: int, name: str, result: object) -> None:
        record = self.records.get(job_id)
        if record is None or record.state in ENDED:  # a queued job already reported as cancelled
            return
        record.state = state = JobState(name)  # a plain str after the queued signal
        if state == JobState.FAILED:
            record.message = str(result)
        self.changed.emit(job_id)
        self.ended.emit(job_id, state, result)

    def _prune(self) -> None:
        done = [i for i, r in self.records.items() if r.state in ENDED]
        for job_id in done[: max(0, len(self.records) - self.MAX_RECORDS)]:
            del self.records[job_id]
