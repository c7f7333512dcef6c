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


def open_log() -> Path:
    """Open the log file in the desktop's text viewer (created empty when missing)."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)
    QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))
    return path


def error_box(parent: QWidget, title: str, message: str) -> QMessageBox:
    """Show an error without blocking: the studio keeps running behind it."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("errorBox")
    box.setWindowModality(Qt.WindowModality.NonModal)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    view_log = box.addButton("View log", QMessageBox.ButtonRole.ActionRole)
    view_log.setObjectName("viewLogButton")
    view_log.clicked.connect(open_log)
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
