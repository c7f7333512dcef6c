"""The Describe panel: the canvas caption (copy it to the prompt) and questions about the image (VQA)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app import theme
from app.qtfix import Signal


class InsightPanel(QWidget):
    caption_requested = Signal()
    copy_to_prompt = Signal(str)
    ask_requested = Signal(str)
    answered = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        caption_box = QGroupBox("Caption")
        self.caption = QLabel("Right-click the image › Caption, or press Describe.", wordWrap=True,
                              objectName="captionText")
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.describe = QPushButton("Describe", toolTip="Caption the canvas (Ctrl+Shift+D)")
        theme.set_icon(self.describe, "caption")
        self.describe.clicked.connect(self.caption_requested)
        self.to_prompt = QPushButton("Copy to prompt", toolTip="Use the caption as the prompt")
        theme.set_icon(self.to_prompt, "copy")
        self.to_prompt.clicked.connect(lambda: self.copy_to_prompt.emit(self.caption_text))
        self.to_clipboard = QPushButton("Copy", toolTip="Copy the caption to the clipboard")
        self.to_clipboard.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.caption_text))
        row = QHBoxLayout()
        row.addWidget(self.describe)
        row.addStretch(1)
        row.addWidget(self.to_clipboard)
        row.addWidget(self.to_prompt)
        box = QVBoxLayout(caption_box)
        box.addWidget(self.caption)
        box.addLayout(row)

        ask_box = QGroupBox("Ask about the image")
        self.question = QLineEdit(placeholderText="e.g. what colour is the star?")
        self.question.returnPressed.connect(self._ask)
        ask = QPushButton("Ask")
        theme.set_icon(ask, "ask")
        ask.clicked.connect(self._ask)
        row = QHBoxLayout()
        row.addWidget(self.question, 1)
        row.addWidget(ask)
        self.answers = QListWidget(objectName="answers")
        self.answers.setWordWrap(True)
        box = QVBoxLayout(ask_box)
        box.addLayout(row)
        box.addWidget(self.answers, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(caption_box)
        layout.addWidget(ask_box, 1)
        self.caption_text = ""
        self.qa: list[tuple[str, str]] = []  # (question, answer), newest first
        self._sync()

    def set_caption(self, text: str) -> None:
        self.caption_text = text
        self.caption.setText(f"“{text}”" if text else "")
        self._sync()

    def add_answer(self, question: str, answer: str) -> None:
        self.qa.insert(0, (question, answer))
        self.answers.insertItem(0, f"Q: {question}\nA: {answer}")
        self.answered.emit()

    def focus_question(self) -> None:
        self.question.setFocus()
        self.question.selectAll()

    def _ask(self) -> None:
        text = self.question.text().strip()
        if text:
            self.ask_requested.emit(text)
            self.question.clear()  # the next question starts fresh (the answer lists the question)

    def _sync(self) -> None:
        self.to_prompt.setEnabled(bool(self.caption_text))
        self.to_clipboard.setEnabled(bool(self.caption_text))
