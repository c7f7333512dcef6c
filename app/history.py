"""History: undo commands for canvas changes, and the list of past generations (prompt, seed, thumbnail)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QUndoCommand
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.imageutil import icon
from app.qtfix import Signal

if TYPE_CHECKING:
    from app.document import Document


class ImageCommand(QUndoCommand):
    """A new image on the canvas (an accepted result). Undo restores image, mask and metadata."""

    def __init__(self, doc: Document, image: np.ndarray, meta: dict, text: str) -> None:
        super().__init__(text)
        self.doc = doc
        self.before = (doc.image.copy(), doc.mask.copy(), dict(doc.meta))
        self.after = (np.ascontiguousarray(image), doc.mask.copy(), dict(meta))

    def redo(self) -> None:
        self.doc.set_state(*self.after)

    def undo(self) -> None:
        self.doc.set_state(*self.before)


class MaskCommand(QUndoCommand):
    def __init__(self, doc: Document, before: np.ndarray, after: np.ndarray, text: str) -> None:
        super().__init__(text)
        self.doc, self.before, self.after = doc, before, after

    def redo(self) -> None:
        self.doc.set_mask(self.after)

    def undo(self) -> None:
        self.doc.set_mask(self.before)


@dataclass
class HistoryEntry:
    """One finished generation: enough to show it and to run it again."""

    task: str
    prompt: str
    seed: int | None
    settings: dict
    model_id: str
    thumbnail: np.ndarray | None = field(default=None, repr=False)  # RGBA, small
    when: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("thumbnail")
        return d

    @classmethod
    def from_json(cls, d: dict, thumbnail: np.ndarray | None) -> HistoryEntry:
        return cls(d["task"], d.get("prompt", ""), d.get("seed"), dict(d.get("settings") or {}),
                   d.get("model_id", ""), thumbnail, float(d.get("when", 0.0)))

    def title(self) -> str:
        prompt = self.prompt if len(self.prompt) <= 60 else self.prompt[:57] + "…"
        stamp = time.strftime("%H:%M", time.localtime(self.when))
        return f"{prompt or '(no prompt)'}\n{self.task} · seed {self.seed} · {stamp}"


class HistoryPanel(QWidget):
    """Past generations, newest first; double-click or Re-run to run one again."""

    rerun_requested = Signal(object)  # HistoryEntry
    recall_requested = Signal(object)  # HistoryEntry: only load its settings into the prompt panel

    MAX_ENTRIES = 500

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.entries: list[HistoryEntry] = []
        self.search = QLineEdit(placeholderText="Search prompts…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._filter)
        self.list = QListWidget()
        self.list.setIconSize(QSize(48, 48))
        self.list.setWordWrap(True)
        self.list.itemDoubleClicked.connect(lambda item: self.rerun_requested.emit(self._entry(item)))
        self.list.currentRowChanged.connect(self._update_buttons)
        self.rerun = QPushButton("Re-run", toolTip="Run it again: same prompt, seed and settings")
        self.rerun.clicked.connect(lambda: self._emit(self.rerun_requested))
        self.recall = QPushButton("Use settings", toolTip="Load its prompt and settings")
        self.recall.clicked.connect(lambda: self._emit(self.recall_requested))
        buttons = QHBoxLayout()
        buttons.addWidget(self.recall)
        buttons.addWidget(self.rerun)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.search)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self._update_buttons()

    def add(self, entry: HistoryEntry) -> None:
        self.entries.insert(0, entry)
        del self.entries[self.MAX_ENTRIES :]
        self._rebuild()

    def set_entries(self, entries: list[HistoryEntry]) -> None:
        self.entries = list(entries)[: self.MAX_ENTRIES]
        self._rebuild()

    def _rebuild(self) -> None:
        self.list.clear()
        for i, entry in enumerate(self.entries):
            item = QListWidgetItem(entry.title())
            item.setData(Qt.ItemDataRole.UserRole, i)
            item.setToolTip(entry.prompt)
            if entry.thumbnail is not None:
                item.setIcon(icon(entry.thumbnail, 48))
            self.list.addItem(item)
        self._filter(self.search.text())
        self._update_buttons()

    def _filter(self, text: str) -> None:
        text = text.lower().strip()
        for row in range(self.list.count()):
            item = self.list.item(row)
            item.setHidden(bool(text) and text not in self._entry(item).prompt.lower())

    def _entry(self, item: QListWidgetItem) -> HistoryEntry:
        return self.entries[item.data(Qt.ItemDataRole.UserRole)]

    def _emit(self, signal) -> None:
        item = self.list.currentItem()
        if item is not None:
            signal.emit(self._entry(item))

    def _update_buttons(self, *_: object) -> None:
        selected = self.list.currentItem() is not None
        self.rerun.setEnabled(selected)
        self.recall.setEnabled(selected)
