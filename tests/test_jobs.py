"""Job: lazy event iterator, exactly one terminal event, cancel from another thread, errors -> Failed."""

from __future__ import annotations

import threading
import time

import pytest

from engine.errors import BadInputError
from engine.events import Cancelled, Failed, Finished, Progress
from engine.jobs import Job, JobCancelledError, JobFailedError


def _steps(n: int, delay: float = 0.0, started: threading.Event | None = None, log: list | None = None):
    def body(job: Job):
        for i in range(n):
            if job.cancelled:
                return
            if started is not None:
                started.set()
            time.sleep(delay)
            if log is not None:
                log.append(i)
            yield Progress(job.id, i + 1, n, 0.0)
        yield Finished(job.id, "test", (), {"n": n})

    return body


def test_events_end_with_exactly_one_terminal():
    job = Job(_steps(3), task="test")
    events = list(job)
    assert [type(e) for e in events] == [Progress, Progress, Progress, Finished]
    assert all(e.job_id == job.id for e in events)
    assert job.state == "finished" and job.done
    assert list(job) == []  # exhausted for good


def test_lazy_nothing_runs_before_iteration():
    log: list[int] = []
    job = Job(_steps(3, log=log))
    assert log == [] and job.state == "pending"
    next(job)
    assert log == [0] and job.state == "running"


def test_ids_are_unique():
    assert len({Job(_steps(1)).id for _ in range(50)}) == 50


def test_cancel_before_start():
    log: list[int] = []
    job = Job(_steps(3, log=log))
    job.cancel()
    assert list(job) == [Cancelled(job.id)]
    assert log == [] and job.state == "cancelled"


def test_cancel_from_another_thread_stops_within_one_step():
    started = threading.Event()
    log: list[int] = []
    job = Job(_steps(1000, delay=0.01, started=started, log=log))
    events: list = []
    consumer = threading.Thread(target=lambda: events.extend(job))
    consumer.start()
    assert started.wait(5)
    time.sleep(0.05)
    job.cancel()
    steps_at_cancel = len(log)
    consumer.join(5)
    assert not consumer.is_alive()
    assert isinstance(events[-1], Cancelled)
    assert sum(isinstance(e, (Finished, Cancelled, Failed)) for e in events) == 1
    # at most the step in flight (plus the one the body was about to start) ran after cancel()
    assert len(log) <= steps_at_cancel + 1


def test_cancel_after_finish_is_harmless():
    job = Job(_steps(2))
    events = list(job)
    job.cancel()
    assert isinstance(events[-1], Finished) and job.state == "finished"


def test_exception_becomes_failed_and_closes_the_body():
    closed = []

    def body(job):
        try:
            yield Progress(job.id, 1, 2, 0.0)
            raise RuntimeError("boom")
        finally:
            closed.append(True)

    job = Job(body)
    events = list(job)
    assert isinstance(events[-1], Failed) and "RuntimeError: boom" in events[-1].message
    assert closed == [True]


def test_tessera_error_message_is_kept_verbatim():
    def body(job):
        raise BadInputError("the mask is 3x3, the image 8x8")
        yield  # pragma: no cover

    events = list(Job(body))
    assert events == [Failed(events[0].job_id, "the mask is 3x3, the image 8x8")]


def test_body_without_result_is_a_failure():
    def body(job):
        yield Progress(job.id, 1, 1, 0.0)

    events = list(Job(body))
    assert isinstance(events[-1], Failed) and "without a result" in events[-1].message


def test_cancel_closes_generator_early():
    closed = []

    def body(job):
        try:
            for i in range(100):
                yield Progress(job.id, i, 100, 0.0)
            yield Finished(job.id, "t", ())
        finally:
            closed.append(True)

    job = Job(body)
    next(job)
    job.cancel()
    assert isinstance(next(job), Cancelled)
    assert closed == [True]
    with pytest.raises(StopIteration):
        next(job)


def test_result_helpers():
    assert Job(_steps(2)).result().settings == {"n": 2}
    seen = []
    Job(_steps(2)).result(on_event=seen.append)
    assert len(seen) == 3
    job = Job(_steps(2))
    job.cancel()
    with pytest.raises(JobCancelledError):
        job.result()

    def bad(job):
        raise ValueError("nope")
        yield  # pragma: no cover

    with pytest.raises(JobFailedError, match="nope"):
        Job(bad).result()


def test_concurrent_consumers_see_each_event_once():
    job = Job(_steps(200))
    seen: list = []
    lock = threading.Lock()

    def consume():
        for event in job:
            with lock:
                seen.append(event)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    progress = [e.done for e in seen if isinstance(e, Progress)]
    assert sorted(progress) == list(range(1, 201))
    assert sum(isinstance(e, Finished) for e in seen) == 1
