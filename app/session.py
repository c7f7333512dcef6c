"""Autosave and crash restore of the session: canvas, mask, segmentation, layout, boxes, prompt,
caption, answers, candidates, history, the mask's look, whether the canvas is saved, and the jobs
that had not finished (offered again after a crash). The undo history is not kept: after a restore
it starts at the restored state, and the status bar says so.

Layout of user_data_dir()/session/:
    state.json          everything small, and the names of the image blobs it uses; written last
    blobs/<hash>.png    canvas, mask, layout, candidates and thumbnails, named by a hash of their pixels

Every file is written atomically (engine.io), and a blob is never rewritten once it exists, so
state.json always points at complete files whatever moment the process is killed at: a restore
sees either the previous snapshot or the new one, never a mix. Unreferenced blobs are deleted
after each save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QObject, QTimer
from PySide6.QtGui import QColor

from app.history import HistoryEntry
from app.imageutil import decode_png, png_bytes
from app.panels import CandidateItem
from app.qtfix import Signal
from app.regions import Region
from engine.io import atomic_write_bytes, atomic_write_text
from engine.paths import user_data_dir

if TYPE_CHECKING:
    from app.window import MainWindow

log = logging.getLogger(__name__)
VERSION = 1
RERUNNABLE = ("generate", "inpaint", "edit", "layout", "ground")  # jobs a restart offers to run again


def session_dir() -> Path:
    return user_data_dir() / "session"


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple, Path)):
        return list(value) if not isinstance(value, Path) else str(value)
    return repr(value)  # settings are informative: never let one odd value stop an autosave


class Session(QObject):
    saved = Signal(str)  # the state.json path

    def __init__(self, win: MainWindow, interval_s: float = 3.0, folder: Path | None = None) -> None:
        super().__init__(win)
        self.win = win
        self.folder = folder or session_dir()
        self.dirty = False
        self.interrupted: list[HistoryEntry] = []  # image jobs that had not finished when the studio ended
        self.interrupted_labels: list[str] = []
        self.timer = QTimer(self)
        self.timer.setInterval(int(interval_s * 1000))
        self.timer.timeout.connect(self.save_if_dirty)
        win.doc.modified.connect(self.mark_dirty)
        win.history.list.model().rowsInserted.connect(self.mark_dirty)
        win.prompt.prompt.textChanged.connect(self.mark_dirty)
        win.controller.caption_ready.connect(self.mark_dirty)
        for signal in (win.layout.changed, win.regions.changed, win.queue.changed, win.candidates.changed,
                       win.insight.answered):
            signal.connect(self.mark_dirty)

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def mark_dirty(self, *_: object) -> None:
        self.dirty = True

    def save_if_dirty(self) -> None:
        if self.dirty:
            self.save()

    # -- save --------------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a snapshot now. Errors are logged and shown in the status bar, never raised."""
        try:
            path = self._save()
        except (OSError, ValueError) as exc:
            log.exception("autosave failed")
            self.win.statusBar().showMessage(f"Autosave failed: {exc}", 8000)
            return None
        self.dirty = False
        self.saved.emit(str(path))
        return path

    def _save(self) -> Path:
        win, doc = self.win, self.win.doc
        used: set[str] = set()

        def blob(a: np.ndarray) -> str:
            a = np.ascontiguousarray(a)
            name = hashlib.blake2b(a.tobytes() + str(a.shape).encode(), digest_size=12).hexdigest() + ".png"
            path = self.folder / "blobs" / name
            if not path.exists():
                atomic_write_bytes(path, png_bytes(a))
            used.add(name)
            return name

        history = []
        for entry in win.history.entries:
            item = entry.to_json()
            item["thumbnail"] = blob(entry.thumbnail) if entry.thumbnail is not None else None
            history.append(item)
        candidates = [{"image": blob(c.image), "meta": c.meta, "kept": c.kept} for c in win.candidates.items]
        jobs = []
        for record in win.queue.pending():  # queued or running: offered again after a crash
            if record.task in RERUNNABLE:
                layout = record.params.get("layout")
                jobs.append({**{k: record.params.get(k) for k in ("task", "prompt", "seed", "settings")},
                             "label": record.label, "layout": None if layout is None else blob(layout),
                             "boxes": record.params.get("boxes")})
        canvas = win.canvas
        state = {
            "version": VERSION,
            "saved_at": time.time(),
            "canvas": blob(doc.image),
            "mask": blob(doc.mask),
            "meta": doc.meta,
            "segmentation": None if doc.segmentation is None else np.asarray(doc.segmentation).tolist(),
            "class_names": list(doc.class_names),
            "path": win.file_path,
            "prompt": win.prompt.state(),
            "caption": win.insight.caption_text,
            "history": history,
            "layout": blob(win.layout.classes),
            "regions": [r.to_json() for r in win.regions.boxes],
            "answers": win.insight.qa,
            "candidates": candidates,
            "mask_style": {"opacity": canvas.mask_opacity, "color": canvas.mask_color.name()},
            "unsaved": win.unsaved,
            "jobs": jobs,
        }
        path = self.folder / "state.json"
        atomic_write_text(path, json.dumps(state, default=_jsonable))
        for old in (self.folder / "blobs").glob("*.png"):
            if old.name not in used:
                old.unlink(missing_ok=True)
        return path

    # -- restore -----------------------------------------------------------------------------------
    def restore(self) -> bool:
        """Load the last snapshot, if any. A broken one is moved aside (kept for inspection)."""
        path = self.folder / "state.json"
        if not path.exists():
            return False
        try:
            self._restore(json.loads(path.read_text(encoding="utf-8")))
        except Exception as exc:  # anything wrong in the files: start clean, keep the evidence
            log.exception("could not restore the session from %s", path)
            aside = self.folder.with_name(f"session-broken-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                self.folder.rename(aside)
            except OSError:
                log.exception("could not move the broken session aside")
            self.win.show_error("Could not restore the last session",
                                f"{exc}\n\nIt was moved to {aside}; the studio starts with an empty canvas.")
            return False
        self.dirty = False
        return True

    def _restore(self, state: dict) -> None:
        if state.get("version") != VERSION:
            raise ValueError(f"session format {state.get('version')} is not {VERSION}")

        def load(name: str | None, grey: bool = False) -> np.ndarray | None:
            return None if name is None else decode_png((self.folder / "blobs" / name).read_bytes(), grey)

        win, doc = self.win, self.win.doc
        image = load(state["canvas"])
        mask = load(state["mask"], grey=True)
        history = [HistoryEntry.from_json(h, load(h.get("thumbnail"))) for h in state.get("history", [])]
        doc.reset(image, mask, state.get("meta") or {})
        if state.get("segmentation") is not None:
            doc.set_segmentation(np.array(state["segmentation"]), tuple(state.get("class_names", ())))
        win.file_path = state.get("path")
        win.prompt.restore(state.get("prompt") or {})
        win.insight.set_caption(state.get("caption", ""))
        win.history.set_entries(history)
        win.layout.restore(load(state.get("layout"), grey=True))
        win.regions.set_boxes([Region.from_json(b) for b in state.get("regions", [])])
        for question, answer in reversed(state.get("answers", [])):
            win.insight.add_answer(question, answer)
        win.candidates.set_items([CandidateItem(load(c["image"]), dict(c.get("meta") or {}), bool(c["kept"]))
                                  for c in state.get("candidates", [])])
        style = state.get("mask_style") or {}
        if "color" in style:
            win.canvas.set_mask_style(color=QColor(style["color"]))
        if "opacity" in style:
            win.layers.opacity.setValue(round(float(style["opacity"]) * 100))
        win.unsaved = bool(state.get("unsaved", False))
        self.interrupted, self.interrupted_labels = [], []
        for job in state.get("jobs", []):
            settings = dict(job.get("settings") or {})
            if job.get("layout"):
                settings["layout"] = load(job["layout"], grey=True)
            if job.get("boxes"):
                settings["boxes"] = job["boxes"]
            entry = HistoryEntry(job["task"], job.get("prompt") or "", job.get("seed"), settings, "")
            self.interrupted.append(entry)
            self.interrupted_labels.append(job.get("label") or job["task"])
