"""The model: loading one in the background, File › Model (every installed bundle, listed by
engine.installed: the loaded one checked, choosing another switches to it without restarting),
Open model… for any other folder (remembered in the settings), and the canvas size that follows the
model's image size. A mixin of MainWindow (app/window.py), which owns the widgets these read.

A bundle that fails to load leaves the previous model in place (the controller says why)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QUrl
from PySide6.QtGui import QActionGroup, QDesktopServices
from PySide6.QtWidgets import QFileDialog, QMenu

from app import theme
from app.prompt_panel import PANEL_TASKS
from engine.installed import BundleInfo, installed_bundles
from engine.jobs import JobState
from engine.paths import models_dir
from engine.task_table import TASKS, EngineTask

if TYPE_CHECKING:
    from engine.api import EngineAPI

RECENT_MODELS = 8  # folders Open model… remembers
NO_MODEL_SIZE = 64  # the canvas before a model says its size (app/document.py starts at it)


def _same(a: str | Path, b: str | Path | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


def entry_text(info: BundleInfo) -> str:
    name = info.name.replace("&", "&&")  # a menu would take "&" for a mnemonic
    return f"{name}  ·  {info.image_size}×{info.image_size}" if info.available else f"{name}  (unavailable)"


def entry_tip(info: BundleInfo) -> str:
    if not info.available:
        return info.error
    tasks = ", ".join(spec.label for task, spec in TASKS.items() if task in info.tasks)
    return f"{info.path} ({info.source}) · {tasks}"


class ModelCommands:
    """Mixed into MainWindow: reads its queue, settings, doc, canvas, panels, actions and status bar."""

    def build_model_menu(self, parent: QMenu) -> QMenu:
        """File › Model, filled each time it opens (bundles come and go while the studio runs)."""
        menu = parent.addMenu(theme.icon("model"), "&Model")
        menu.setObjectName("modelMenu")
        menu.setToolTipsVisible(True)
        self.model_group = QActionGroup(menu)  # the entries' actions leave it as the menu deletes them
        menu.aboutToShow.connect(self.fill_model_menu)
        self.model_menu = menu
        return menu

    def fill_model_menu(self) -> None:
        menu = self.model_menu
        menu.clear()
        current = (self.engine_info or {}).get("bundle")
        bundles = installed_bundles(self.settings.recent_models)
        for info in bundles:
            action = menu.addAction(entry_text(info))
            action.setCheckable(True)
            action.setChecked(_same(info.path, current))
            action.setEnabled(info.available)
            action.setToolTip(entry_tip(info))
            action.setStatusTip(entry_tip(info))
            action.setData(str(info.path))
            self.model_group.addAction(action)
            action.triggered.connect(lambda _=False, path=info.path: self.switch_model(path))
        if not bundles:
            menu.addAction("No model bundles found").setEnabled(False)
        menu.addSeparator()
        menu.addAction(self.act["model"])
        folder = menu.addAction("Show the models folder", self.show_models_folder)
        folder.setToolTip(f"{models_dir()}: put model bundles here to list them")

    def show_models_folder(self) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(models_dir())))

    def switch_model(self, path: str | Path, remember: bool = False) -> int | None:
        """Load the bundle at `path` in the background (None: it is the loaded one already)."""
        if _same(path, (self.engine_info or {}).get("bundle")):
            return None

        def factory(folder: str = str(path)):
            from engine.engine import Engine  # imported on the worker thread, with the model

            return Engine.load(folder)

        params = {"folder": str(path), "remember": remember}
        return self.load_engine(factory, f"Load {Path(path).name}", params)

    def open_model_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a model bundle")
        if folder:
            self.switch_model(folder, remember=True)

    def load_engine(self, factory: Callable[[], EngineAPI], label: str = "Load model",
                    params: dict | None = None) -> int:
        self.model_label.setText("Loading model…")
        return self.queue.load(factory, label, params)

    def _on_engine(self, info: dict) -> None:
        self.engine_info = info
        self.model_label.setText(self._model_text(info))
        self.model_label.setToolTip(f"Model {info['model_id']}, {info['provider']} execution provider")
        known = {t for t in info["tasks"] if t in PANEL_TASKS}
        self.prompt.set_available_tasks(known or None, info["unsupported"])
        self.compose.set_available(set(info["tasks"]) or None)
        if info["seg_class_names"]:
            self.compose.set_class_names(tuple(info["seg_class_names"]))
        for key, task in (("caption", EngineTask.CAPTION), ("segment", EngineTask.SEGMENT),
                          ("ask", EngineTask.ANSWER)):
            self.act[key].setEnabled(not known or task in known)  # untrained tasks: greyed out
        self.insight.describe.setEnabled(not known or EngineTask.CAPTION in known)
        self.insight.question.setEnabled(not known or EngineTask.ANSWER in known)
        self._fit_blank_canvas()
        self.statusBar().showMessage(f"Model ready: {info['model_id']} ({info['provider']})", 5000)

    @property
    def model_image_size(self) -> int:
        """The side of a new canvas: the loaded model's image size."""
        return (self.engine_info or {}).get("image_size") or NO_MODEL_SIZE

    def blank_canvas(self) -> None:
        """A transparent canvas of the model's size, fitted to the window."""
        self.doc.reset(np.zeros((self.model_image_size,) * 2 + (4,), np.uint8))
        self.canvas.fit()

    def _fit_blank_canvas(self) -> None:
        """An untouched blank canvas takes the new model's size; a picture or a started one stays."""
        doc, size = self.doc, self.model_image_size
        untouched = (doc.is_blank() and not doc.mask.any() and doc.undo.count() == 0 and not self.unsaved
                     and self.file_path is None)
        if untouched and (doc.width, doc.height) != (size, size):
            self.blank_canvas()

    @staticmethod
    def _model_text(info: dict) -> str:
        return f"●  {info['model_id']}  ·  {info['provider']}"

    def _on_load_ended(self, job_id: int, state: str, _result: object) -> None:
        """A bundle that fails to load leaves the previous model (if any) in place; one opened with
        Open model… that loads is remembered for File › Model."""
        record = self.queue.records.get(job_id)
        if record is None or record.task != "load":
            return
        if state != JobState.FINISHED:
            info = self.engine_info
            self.model_label.setText(self._model_text(info) if info else "●  no model")
        elif record.params.get("remember"):
            folder = record.params["folder"]
            recent = [folder, *(p for p in self.settings.recent_models if not _same(p, folder))]
            self.settings.recent_models = recent[:RECENT_MODELS]
            self._save_settings()
