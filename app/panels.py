"""Side panels: the candidates strip, the job queue view, and retrieval (this job's documents + library)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import theme
from app.imageutil import icon
from app.qtfix import Signal
from app.worker import JobQueue
from engine.jobs import ENDED, JobState

STATE_LABELS = {JobState.PENDING: "Queued", JobState.RUNNING: "Running…", JobState.FINISHED: "Done",
                JobState.CANCELLED: "Cancelled", JobState.FAILED: "Failed"}


@dataclass
class CandidateItem:
    image: np.ndarray  # RGBA, already composited for inpainting
    meta: dict = field(default_factory=dict)  # prompt, seed, settings, model_id, task
    kept: bool = False  # a variation the artist kept: survives the next job's results


@dataclass(frozen=True)
class LibraryItem:
    """One entry of the engine's user library as the panel shows it, read on the worker thread."""

    id: int
    path: str  # where the image was added from
    caption: str | None
    thumbnail: np.ndarray  # RGB uint8, the library's stored copy


class CandidatesStrip(QWidget):
    """Every finished job's results, newest job first and each job's best first: preview one, accept it
    onto the canvas (it then leaves the strip unless kept), keep it (★) or discard it. A new canvas
    clears all but the kept ones; beyond MAX_ITEMS the oldest unkept results make room."""

    accept_requested = Signal(object)  # CandidateItem
    preview_requested = Signal(object)  # RGBA image or None
    changed = Signal()  # items added, removed or kept (the autosave listens)

    MAX_ITEMS = 48

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.items: list[CandidateItem] = []
        self.list = QListWidget(objectName="candidateList")
        self.list.setViewMode(QListView.ViewMode.IconMode)
        self.list.setFlow(QListView.Flow.LeftToRight)
        self.list.setWrapping(False)
        self.list.setIconSize(QSize(88, 88))
        self.list.setMovement(QListView.Movement.Static)
        self.list.setFixedHeight(128 + self.list.horizontalScrollBar().sizeHint().height())  # numbers show
        self.list.setSpacing(6)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.list.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.currentRowChanged.connect(self._on_row)
        self.list.itemDoubleClicked.connect(lambda _: self.accept_current())
        self.title = QLabel("Candidates", objectName="stripTitle")
        self.accept = self._button("check", "Accept", "Put this candidate on the canvas (undoable) · Enter",
                                   self.accept_current)
        self.keep = self._button("star", "Keep", "Keep as a variation: it stays here after the next run",
                                 self.keep_current)
        self.discard = self._button("discard", "Discard", "Remove this candidate",
                                    self.discard_current)
        side = QVBoxLayout()
        side.setSpacing(4)
        side.addWidget(self.title)
        for b in (self.accept, self.keep, self.discard):
            side.addWidget(b)
        side.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addLayout(side)
        layout.addWidget(self.list, 1)
        self._sync()

    def _button(self, icon_name: str, text: str, tip: str, slot) -> QToolButton:
        b = QToolButton(text=text, toolTip=tip)
        theme.set_icon(b, icon_name)
        b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        b.setMinimumWidth(96)
        b.clicked.connect(slot)
        return b

    def add_candidates(self, items: list[CandidateItem]) -> None:
        """A job's results go first; earlier ones stay until accepted or discarded."""
        self.items = list(items) + self.items
        unkept = [i for i, c in enumerate(self.items) if not c.kept]
        excess = max(0, len(self.items) - self.MAX_ITEMS)
        drop = set(unkept[max(0, len(unkept) - excess):]) if excess else set()
        self.items = [c for i, c in enumerate(self.items) if i not in drop]
        self._rebuild(0 if items else -1)

    def clear_unkept(self) -> None:
        """A new canvas: results of the old one go, kept variations stay."""
        self.items = [c for c in self.items if c.kept]
        self._rebuild(-1)

    def set_items(self, items: list[CandidateItem]) -> None:
        self.items = list(items)
        self._rebuild(-1)

    def current(self) -> CandidateItem | None:
        row = self.list.currentRow()
        return self.items[row] if 0 <= row < len(self.items) else None

    def accept_current(self) -> None:
        item, row = self.current(), self.list.currentRow()
        if item is not None:
            self.preview_requested.emit(None)
            self.accept_requested.emit(item)
            if not item.kept:  # it is on the canvas now (and Undo brings the previous one back)
                del self.items[row]
                self._rebuild(-1)

    def keep_current(self) -> None:
        item = self.current()
        if item is not None:
            item.kept = not item.kept
            self._rebuild(self.list.currentRow())

    def discard_current(self) -> None:
        row = self.list.currentRow()
        if 0 <= row < len(self.items):
            del self.items[row]
            self._rebuild(min(row, len(self.items) - 1))

    def _rebuild(self, select: int) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for i, c in enumerate(self.items):
            label = f"{'★ ' if c.kept else ''}#{i + 1}"
            score = c.meta.get("score")
            item = QListWidgetItem(icon(c.image, 88), label)
            item.setToolTip(f"{c.meta.get('prompt', '')}\nseed {c.meta.get('seed')}"
                            + (f" · score {score:.3f}" if isinstance(score, float) else ""))
            self.list.addItem(item)
        self.list.blockSignals(False)
        self.list.setCurrentRow(select)
        if select < 0:
            self.preview_requested.emit(None)
        self._sync()
        self.changed.emit()

    def _on_row(self, row: int) -> None:
        self.preview_requested.emit(self.items[row].image if 0 <= row < len(self.items) else None)
        self._sync()

    def _sync(self) -> None:
        has = self.current() is not None
        for b in (self.accept, self.keep, self.discard):
            b.setEnabled(has)
        kept = sum(c.kept for c in self.items)
        self.title.setText(f"Candidates ({len(self.items)})" + (f"\n★ {kept} kept" if kept else ""))


class QueuePanel(QWidget):
    """Every job with its id and state; cancel one, or all."""

    def __init__(self, queue: JobQueue, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.queue = queue
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["#", "Job", "State", ""])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        for col in (0, 2, 3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.cancel_all = QPushButton("Cancel all", toolTip="Cancel the running job and everything queued")
        theme.set_icon(self.cancel_all, "stop")
        self.cancel_all.clicked.connect(queue.cancel_all)
        self.clear_done = QPushButton("Clear finished")
        self.clear_done.clicked.connect(self._clear_finished)
        buttons = QHBoxLayout()
        buttons.addWidget(self.clear_done)
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_all)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        self._rows: dict[int, int] = {}
        queue.changed.connect(self._on_changed)

    def row_of(self, job_id: int) -> int | None:
        return self._rows.get(job_id)

    def cancel_button(self, job_id: int) -> QToolButton | None:
        row = self._rows.get(job_id)
        return None if row is None else self.table.cellWidget(row, 3)

    def _on_changed(self, job_id: int) -> None:
        record = self.queue.records.get(job_id)
        if record is None or record.task == "load":
            return
        row = self._rows.get(job_id)
        if row is None:
            row = self.table.rowCount()
            self.table.insertRow(row)
            self._rows[job_id] = row
            self.table.setItem(row, 0, QTableWidgetItem(str(job_id)))
            self.table.setItem(row, 1, QTableWidgetItem(record.label))
            button = QToolButton(toolTip=f"Cancel job {job_id}")
            theme.set_icon(button, "discard")
            button.clicked.connect(lambda _=False, i=job_id: self.queue.cancel(i))
            self.table.setCellWidget(row, 3, button)
        state = QTableWidgetItem(STATE_LABELS[record.state])
        if record.state == JobState.FAILED:
            state.setToolTip(record.message)
        self.table.setItem(row, 2, state)
        button = self.table.cellWidget(row, 3)
        button.setEnabled(record.state not in ENDED)
        self.cancel_all.setEnabled(bool(self.queue.pending()))

    def _clear_finished(self) -> None:
        for job_id in sorted(self._rows, key=self._rows.get, reverse=True):
            record = self.queue.records.get(job_id)
            if record is None or record.state in ENDED:
                self.table.removeRow(self._rows.pop(job_id))
        self._rows = {job_id: i for i, job_id in enumerate(sorted(self._rows, key=self._rows.get))}


class RetrievalPanel(QWidget):
    """What the model retrieved for the current job, and the artist's own reference library."""

    add_folder_requested = Signal(str)
    remove_requested = Signal(list)  # library item ids

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.retrieved = _doc_list(56)
        self.retrieved_title = QLabel("Retrieved for the current job", objectName="sectionTitle")
        self.library = _doc_list(48)
        self.library.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.add_button = QPushButton("Add folder…", toolTip="Index a folder of your images")
        theme.set_icon(self.add_button, "folder-add")
        self.add_button.clicked.connect(self._choose_folder)
        self.remove_button = QPushButton("Remove", toolTip="Remove the selected references from the library")
        theme.set_icon(self.remove_button, "trash")
        self.remove_button.clicked.connect(self._remove_selected)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.progress.setFormat("Indexing %v/%m")
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.retrieved_title)
        layout.addWidget(self.retrieved, 1)
        layout.addWidget(QLabel("Your library", objectName="sectionTitle"))
        layout.addWidget(self.library, 1)
        layout.addWidget(self.progress)
        layout.addLayout(buttons)
        self.set_retrieved(())
        self.set_library(())

    def set_retrieved(self, documents) -> None:
        self.retrieved.clear()
        for doc in documents:
            text = f"{doc.text}\n{doc.source} · {doc.score:.2f}"
            item = QListWidgetItem(text)
            if doc.image is not None:
                item.setIcon(icon(doc.image, 56))
            item.setToolTip(doc.text)
            self.retrieved.addItem(item)
        if not documents:
            hint = QListWidgetItem("Nothing retrieved yet: generate with retrieval on.")
            hint.setFlags(Qt.ItemFlag.NoItemFlags)
            self.retrieved.addItem(hint)

    def set_library(self, items: Sequence[LibraryItem]) -> None:
        self.library.clear()
        if not items:
            hint = QListWidgetItem("Add a folder of your own images: the model can then retrieve them "
                                   "as references while it generates.")
            hint.setFlags(Qt.ItemFlag.NoItemFlags)
            self.library.addItem(hint)
        for it in items:
            text = f"{it.caption}\n{it.path}" if it.caption else it.path
            item = QListWidgetItem(icon(it.thumbnail, 48), text)
            item.setData(Qt.ItemDataRole.UserRole, it.id)
            item.setToolTip(it.path)
            self.library.addItem(item)
        self.remove_button.setEnabled(bool(items))

    def library_ids(self) -> list[int]:
        items = (self.library.item(i) for i in range(self.library.count()))
        ids = [item.data(Qt.ItemDataRole.UserRole) for item in items]
        return [i for i in ids if i is not None]

    def set_indexing(self, done: int | None, total: int = 0) -> None:
        """Show indexing progress; None hides it."""
        self.progress.setVisible(done is not None)
        self.add_button.setEnabled(done is None)
        if done is not None:
            self.progress.setRange(0, max(total, 1))
            self.progress.setValue(done)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of reference images")
        if folder:
            self.add_folder_requested.emit(folder)

    def _remove_selected(self) -> None:
        ids = [item.data(Qt.ItemDataRole.UserRole) for item in self.library.selectedItems()]
        if ids:
            self.remove_requested.emit(ids)


def _doc_list(icon: int) -> QListWidget:
    lst = QListWidget()
    lst.setIconSize(QSize(icon, icon))
    lst.setWordWrap(True)
    lst.setTextElideMode(Qt.TextElideMode.ElideRight)
    return lst
