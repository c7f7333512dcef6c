"""The job queue (app/worker.py): one engine thread, job ids and states, cancel hits the right job."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading

import pytest
from studio_fakes import FakeEngine

from app.worker import JobQueue
from engine.errors import BundleError
from engine.events import PartialImage, Progress
from engine.jobs import JobState

TIMEOUT = 10_000


@pytest.fixture
def queue(qtbot):
    q = JobQueue()
    yield q
    q.shutdown()


@pytest.fixture
def engine():
    return FakeEngine()


def loaded(qtbot, queue, engine):
    with qtbot.waitSignal(queue.engine_changed, timeout=TIMEOUT) as blocker:
        queue.load(lambda: engine)
    return blocker.args[0]


def generate(queue, prompt, **kw):
    return queue.submit("generate", prompt, lambda eng, _: eng.generate(prompt, seed=1, **kw),
                        {"prompt": prompt})


def wait_done(qtbot, queue, *ids):
    qtbot.waitUntil(lambda: all(queue.records[i].state in ("finished", "cancelled", "failed") for i in ids),
                    timeout=TIMEOUT)


def test_the_engine_is_loaded_and_read_on_the_worker_thread(qtbot, queue):
    threads = []

    class Tiny:
        model_id, provider, tasks, seg_class_names = "m", "CUDA", {"generate"}, ("background", "x")
        image_size, unsupported = 384, {"caption": "no image encoder"}

        def __init__(self):
            threads.append(threading.get_ident())

    with qtbot.waitSignal(queue.engine_changed, timeout=TIMEOUT) as blocker:
        queue.load(Tiny)
    assert blocker.args[0] == {"model_id": "m", "provider": "CUDA", "tasks": frozenset({"generate"}),
                               "seg_class_names": ("background", "x"), "image_size": 384,
                               "unsupported": {"caption": "no image encoder"}, "bundle": None}
    assert threads and threads[0] != threading.get_ident()


def test_a_job_goes_through_the_engines_job_states_with_events(qtbot, queue, engine):
    loaded(qtbot, queue, engine)
    changes, events, ended, engine_jobs = [], [], [], []
    # the load job's own "finished" may still be on its way: keep only this job's signals
    queue.changed.connect(lambda i: changes.append((i, queue.records[i].state)))
    queue.event.connect(lambda i, ev: events.append(ev))
    queue.ended.connect(lambda i, state, result: ended.append((i, state, result)))

    def call(eng, _):
        engine_jobs.append(eng.generate("a red circle", seed=1, n=2))
        return engine_jobs[-1]

    job = queue.submit("generate", "a red circle", call)
    wait_done(qtbot, queue, job)
    states = [state for i, state in changes if i == job]
    assert states == [JobState.PENDING, JobState.RUNNING, JobState.FINISHED]
    assert all(type(s) is JobState for s in states)  # one set of states: the engine's
    assert engine_jobs[0].state == queue.records[job].state == JobState.FINISHED
    ended = [e for e in ended if e[0] == job]
    assert {type(e) for e in events} >= {Progress, PartialImage}
    rows = [e.rows_done for e in events if isinstance(e, PartialImage) and e.candidate == 0]
    assert rows == list(range(1, 9))  # row by row
    assert ended[0][:2] == (job, "finished") and len(ended[0][2].candidates) == 2


def test_cancel_hits_exactly_the_right_job_among_several(qtbot, queue, engine):
    loaded(qtbot, queue, engine)
    engine.hold = threading.Event()  # every job waits inside its steps until released
    ids = [generate(queue, f"job {i}") for i in range(4)]
    qtbot.waitUntil(lambda: queue.records[ids[0]].state == "running", timeout=TIMEOUT)
    assert queue.cancel(ids[2])  # queued: cancelled at once, never reaches the engine
    assert queue.records[ids[2]].state == "cancelled"
    assert [queue.records[i].state for i in ids] == ["running", "pending", "cancelled", "pending"]
    assert queue.cancel(ids[0])  # running: its engine job is cancelled
    qtbot.waitUntil(lambda: queue.records[ids[0]].state == "cancelled", timeout=TIMEOUT)
    qtbot.waitUntil(lambda: queue.records[ids[1]].state == "running", timeout=TIMEOUT)
    engine.hold.set()
    wait_done(qtbot, queue, *ids)
    assert [queue.records[i].state for i in ids] == ["cancelled", "finished", "cancelled", "finished"]
    assert [prompt for _, prompt in engine.calls] == ["job 0", "job 1", "job 3"]
    assert not queue.cancel(ids[1])  # finished jobs cannot be cancelled


def test_cancel_stops_within_one_step(qtbot, queue):
    engine = FakeEngine(step_delay=0.02)
    loaded(qtbot, queue, engine)
    after = []
    cancelled = []
    job = generate(queue, "slow")
    qtbot.waitUntil(lambda: queue.records[job].state == "running", timeout=TIMEOUT)
    qtbot.wait(100)

    def on_event(i, ev):
        if cancelled:
            after.append(ev)

    queue.event.connect(on_event)
    cancelled.append(True)
    queue.cancel(job)
    wait_done(qtbot, queue, job)
    assert queue.records[job].state == "cancelled"
    assert len([e for e in after if isinstance(e, Progress)]) <= 1  # at most the step in flight


def test_cancel_all(qtbot, queue, engine):
    loaded(qtbot, queue, engine)
    engine.hold = threading.Event()
    ids = [generate(queue, f"job {i}") for i in range(3)]
    qtbot.waitUntil(lambda: queue.records[ids[0]].state == "running", timeout=TIMEOUT)
    queue.cancel_all()
    wait_done(qtbot, queue, *ids)
    assert [queue.records[i].state for i in ids] == ["cancelled"] * 3
    assert queue.pending() == []


def test_failures_end_the_job_and_the_queue_goes_on(qtbot, queue, engine):
    loaded(qtbot, queue, engine)
    engine.fail_with = "the model ran out of tokens"
    failed = generate(queue, "a")

    def boom(eng, _):
        raise RuntimeError("a bug")

    def raising_iterator(eng, _):
        class Bad:
            def cancel(self):
                pass

            def __iter__(self):
                return self

            def __next__(self):
                raise ValueError("broken iterator")

        return Bad()

    crashed = queue.submit("generate", "bug", boom)
    broken = queue.submit("generate", "iter", raising_iterator)
    wait_done(qtbot, queue, failed, crashed, broken)
    engine.fail_with = None
    ok = generate(queue, "b")
    wait_done(qtbot, queue, ok)
    assert queue.records[failed].state == "failed"
    assert queue.records[failed].message == "the model ran out of tokens"
    assert queue.records[crashed].message == "RuntimeError: a bug"
    assert queue.records[broken].message == "ValueError: broken iterator"
    assert queue.records[ok].state == "finished"


def test_without_a_model_jobs_fail_with_a_clear_message(qtbot, queue):
    def incompatible():
        raise BundleError("bundle format 9 is newer than this Tessera (1)")

    load = queue.load(incompatible)
    job = generate(queue, "a")
    wait_done(qtbot, queue, load, job)
    assert queue.records[load].message == "bundle format 9 is newer than this Tessera (1)"
    assert "No model is loaded" in queue.records[job].message


def test_plain_calls_report_progress(qtbot, queue, engine):
    loaded(qtbot, queue, engine)
    progress = []
    queue.event.connect(lambda i, ev: progress.append((ev.done, ev.total)))

    def index(eng, report):
        for i in range(3):
            report(i + 1, 3)
        return "indexed"

    with qtbot.waitSignal(queue.ended, timeout=TIMEOUT,  # the load job's own end may arrive late
                          check_params_cb=lambda job_id, *_: job_id == job) as blocker:
        job = queue.submit("library", "index", index)
    assert blocker.args == [job, "finished", "indexed"]
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_shutdown_with_a_running_job_is_prompt(qtbot, engine):
    q = JobQueue()
    loaded(qtbot, q, engine)
    engine.hold = threading.Event()
    generate(q, "never ends")
    qtbot.waitUntil(lambda: q.running() is not None, timeout=TIMEOUT)
    q.shutdown(timeout_ms=2000)
    assert not q._thread.isRunning()
