"""The studio on the real engine (engine.engine.Engine) with the tiny random-weight bundle: the
engine's jobs and events drive the same UI as the fake. Output quality is meaningless here."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from app.window import MainWindow

TIMEOUT = 120_000


@pytest.mark.slow
def test_studio_runs_the_real_engine(qtbot, tiny_bundle, tessera_home):
    from engine.engine import Engine

    win = MainWindow(lambda: Engine.load(tiny_bundle), autosave=False, restore=False)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.engine_info is not None or win.last_error is not None, timeout=TIMEOUT)
    assert win.last_error is None
    info = win.engine_info
    assert win.model_label.text() == f"●  {info['model_id']}  ·  {info['provider']}"
    assert info["provider"] in ("CPU", "CUDA")
    for key, task in (("caption", "caption"), ("segment", "segment"), ("ask", "answer")):
        assert win.act[key].isEnabled() == (task in info["tasks"])

    win.prompt.set_prompt("a red circle")
    win.prompt.set_seed(3, "fixed")
    win.prompt.candidates.setValue(2)
    rows = []
    win.queue.event.connect(lambda _j, ev: rows.append(ev.rows_done) if hasattr(ev, "rows_done") else None)
    job = win.controller.run()
    qtbot.waitUntil(lambda: win.queue.records[job].state not in ("pending", "running"), timeout=TIMEOUT)
    assert win.queue.records[job].state == "finished", win.queue.records[job].message
    assert len(win.candidates.items) == 2 and rows and max(rows) == rows[-1]
    assert win.history.entries[0].seed == 3
    win.candidates.accept_current()
    assert win.doc.meta["model_id"] == info["model_id"]

    if "caption" in info["tasks"]:
        def is_caption(job_id, *_):
            return win.queue.records[job_id].task == "caption"

        with qtbot.waitSignal(win.queue.ended, timeout=TIMEOUT, check_params_cb=is_caption) as ended:
            win.controller.caption()
        _, state, finished = ended.args
        assert state == "finished" and win.insight.caption_text == (finished.candidates[0].text or "")
