"""Non-modal error messages with a "View log" button, the log file itself, and the shortcuts dialog."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from PySide6.QtCore import Qt, QtMsgType, QUrl, qInstallMessageHandler
from PySide6.QtGui import QAction, QDesktopServices
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QMessageBox,
    QPlainTextEdit,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.paths import user_data_dir

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path() -> Path:
    return user_data_dir() / "logs" / "tessera.log"


def configure_logging() -> Path:
    """Log to user_data_dir()/logs/tessera.log (rotated at 1 MB, 3 kept); returns the path."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=1_000_000, backupCount=3,
                                                       encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def route_qt_messages() -> None:
    """Send Qt's own warnings to the log file instead of the terminal."""
    qt_log = logging.getLogger("qt")
    levels = {QtMsgType.QtDebugMsg: logging.DEBUG, QtMsgType.QtInfoMsg: logging.INFO,
              QtMsgType.QtWarningMsg: logging.WARNING}

    def handler(kind, _context, message: str) -> None:
        if "propagateSizeHints" in message:  # the offscreen platform's harmless complaint
            return
        qt_log.log(levels.get(kind, logging.ERROR), message)

    qInstallMessageHandler(handler)


LOG_TAIL = 200_000  # characters of the log the window shows (its end)


class LogWindow(QDialog):
    """The log file's end in a window, newest line last; it works whatever the desktop can open."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("logWindow")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.path = log_path()
        self.setWindowTitle(f"Log — {self.path}")
        self.text = QPlainTextEdit(readOnly=True, objectName="logText")
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        reload = buttons.addButton("Reload", QDialogButtonBox.ButtonRole.ActionRole)
        reload.clicked.connect(self.load)
        external = buttons.addButton("Open in editor", QDialogButtonBox.ButtonRole.ActionRole)
        external.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.path))))
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(buttons)
        self.resize(900, 560)
        self.load()

    def load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            text = f"(no log yet: {exc})"
        self.text.setPlainText(text[-LOG_TAIL:] or "(the log is empty)")
        bar = self.text.verticalScrollBar()
        bar.setValue(bar.maximum())


def open_log(parent: QWidget | None = None) -> LogWindow:
    """Show the log in a window (not the desktop's viewer: there may be none for .log files)."""
    window = LogWindow(parent)
    window.show()
    return window


def ask_unsaved(parent: QWidget, action: str) -> str:
    """Before `action` ("start a new canvas") replaces unsaved work: "save", "discard" or "cancel"."""
    buttons = QMessageBox.StandardButton
    box = QMessageBox(QMessageBox.Icon.Question, "Unsaved changes",
                      f"The canvas has changes that are not saved as a file. Save them before you {action}?",
                      buttons.Save | buttons.Discard | buttons.Cancel, parent)
    box.setObjectName("unsavedBox")
    box.setDefaultButton(buttons.Save)
    answer = box.exec()
    return {buttons.Save: "save", buttons.Discard: "discard"}.get(buttons(answer), "cancel")


def error_box(parent: QWidget, title: str, message: str) -> QMessageBox:
    """Show an error without blocking: the studio keeps running behind it."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("errorBox")
    box.setWindowModality(Qt.WindowModality.NonModal)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    view_log = box.addButton("View log", QMessageBox.ButtonRole.ActionRole)
    view_log.setObjectName("viewLogButton")
    view_log.clicked.connect(lambda: open_log(parent))
    box.show()
    return box


class ShortcutsDialog(QDialog):
    """Every action that has a shortcut, as a two-column table."""

    def __init__(self, actions: list[QAction], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        rows = [(a.text().replace("&", ""), a.shortcut().toString())
                for a in actions if not a.shortcut().isEmpty()]
        rows += [("Pan (hold and drag)", "Space / middle button"), ("Zoom", "Mouse wheel"),
                 ("Add a region to the mask", "Shift+click (Region tool)")]
        table = QTableWidget(len(rows), 2)
        table.setHorizontalHeaderLabels(["Action", "Shortcut"])
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for i, (name, keys) in enumerate(rows):
            table.setItem(i, 0, QTableWidgetItem(name))
            table.setItem(i, 1, QTableWidgetItem(keys))
        self.table = table
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(table)
        layout.addWidget(buttons)
        self.resize(460, 560)
