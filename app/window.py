"""The main window: canvas in the middle, prompt panel on the left, tabbed panels on the right,
candidates under the canvas, job progress and the model in the status bar."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import theme
from app.canvas import CanvasView
from app.compose_panel import ComposePanel
from app.controller import Controller
from app.dialogs import ShortcutsDialog, error_box, open_log
from app.document import Document
from app.files import FileCommands
from app.history import HistoryPanel
from app.insight_panel import InsightPanel
from app.layers_panel import LayersPanel
from app.layout_tool import LayoutLayer
from app.models_menu import ModelCommands
from app.panels import CandidatesStrip, QueuePanel, RetrievalPanel
from app.prompt_panel import PromptPanel
from app.regions import Regions
from app.session import Session
from app.settings import StudioSettings
from app.worker import JobQueue
from engine.jobs import JobState

if TYPE_CHECKING:
    from engine.api import EngineAPI

log = logging.getLogger(__name__)


class MainWindow(FileCommands, ModelCommands, QMainWindow):
    def __init__(self, engine_factory: Callable[[], EngineAPI] | None, settings: StudioSettings | None = None,
                 autosave: bool = True, restore: bool = True) -> None:
        super().__init__()
        self.settings = settings or StudioSettings()
        self.file_path: str | None = None
        self.restored_unsaved = False  # a restored session had unsaved changes (its undo stack is gone)
        self.last_error = None  # the most recent error box (tests and screenshots look at it)
        self.engine_info: dict | None = None  # model_id, provider, tasks, seg_class_names
        self.setWindowTitle("Tessera Studio")
        self.setWindowIcon(theme.icon("model", theme.ACCENT))
        self.setDockNestingEnabled(True)
        self.resize(1440, 900)

        self.doc = Document(self)
        self.queue = JobQueue(self)
        self.canvas = CanvasView(self.doc)
        self.prompt = PromptPanel(self.settings.presets)
        self.candidates = CandidatesStrip()
        self.layers = LayersPanel(self.canvas, self.settings.feather)
        self.insight = InsightPanel()
        self.retrieval = RetrievalPanel()
        self.queue_panel = QueuePanel(self.queue)
        self.history = HistoryPanel()
        self.layout = LayoutLayer(self.canvas, self)
        self.regions = Regions(self.canvas, self)
        self.compose = ComposePanel(self.layout, self.regions)
        self.controller = Controller(self)
        self.controller.feather = self.settings.feather

        self._build_central()
        self._build_docks()
        self._build_actions()
        self._build_status()
        self._connect()

        self.session = Session(self, self.settings.autosave_seconds)
        self.autosave = autosave
        if restore and self.session.restore():
            self.statusBar().showMessage("Restored your last session (canvas, mask, layout, boxes, "
                                        "candidates, history, answers); undo starts from here.", 10000)
        if autosave:
            self.session.start()
        if engine_factory is not None:
            self.load_engine(engine_factory)
        if self.session.interrupted:
            self.offer_interrupted()
        self._update_title()

    def offer_interrupted(self) -> QMessageBox:
        """After a crash: name the jobs that had not finished and offer to run them again."""
        labels = "\n".join(f"• {label}" for label in self.session.interrupted_labels)
        box = QMessageBox(QMessageBox.Icon.Information, "Interrupted jobs",
                          f"The studio ended while these jobs had not finished:\n{labels}", parent=self)
        box.setObjectName("interruptedBox")
        box.setWindowModality(Qt.WindowModality.NonModal)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        again = box.addButton("Run again", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Dismiss", QMessageBox.ButtonRole.RejectRole)
        entries, self.session.interrupted = self.session.interrupted, []
        again.clicked.connect(lambda: [self.controller.rerun(e) for e in entries])
        box.show()
        self.interrupted_box = box
        return box

    # -- layout ------------------------------------------------------------------------------------
    def _build_central(self) -> None:
        self.caption_bar = QFrame(objectName="captionBar")
        self.caption_label = QLabel(wordWrap=True, objectName="captionBarText")
        copy = QPushButton("Copy to prompt", toolTip="Use this caption as the prompt")
        theme.set_icon(copy, "copy")
        copy.clicked.connect(lambda: self.prompt.set_prompt(self.insight.caption_text))
        close = QToolButton(toolTip="Hide the caption")
        theme.set_icon(close, "discard")
        close.clicked.connect(lambda: self.caption_bar.setVisible(False))
        row = QHBoxLayout(self.caption_bar)
        row.setContentsMargins(10, 6, 6, 6)
        caption_icon = QLabel()
        caption_icon.setPixmap(theme.icon("caption").pixmap(18, 18))
        row.addWidget(caption_icon)
        row.addWidget(self.caption_label, 1)
        row.addWidget(copy)
        row.addWidget(close)
        self.caption_bar.setVisible(False)

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.caption_bar)
        layout.addWidget(self.candidates)
        self.setCentralWidget(central)

    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea, name: str) -> QDockWidget:
        dock = QDockWidget(title, self, objectName=f"{name}Dock")
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        return dock

    def _build_docks(self) -> None:
        scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        scroll.setWidget(self.prompt)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(self.prompt.sizeHint().width() + 12)
        left, right = Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea
        prompt = self._dock("Prompt", scroll, left, "prompt")
        self.docks = {
            "history": self._dock("History", self.history, left, "history"),
            "layers": self._dock("Layers", self.layers, right, "layers"),
            "describe": self._dock("Describe", self.insight, right, "describe"),
            "retrieval": self._dock("Retrieval", self.retrieval, right, "retrieval"),
            "compose": self._dock("Compose", self.compose, right, "compose"),
            "queue": self._dock("Queue", self.queue_panel, right, "queue"),
        }
        self.splitDockWidget(prompt, self.docks["history"], Qt.Orientation.Vertical)
        tabs = [self.docks[k] for k in ("layers", "compose", "describe", "retrieval", "queue")]
        for a, b in zip(tabs, tabs[1:], strict=False):
            self.tabifyDockWidget(a, b)
        self.resizeDocks([tabs[0]], [360], Qt.Orientation.Horizontal)
        self.resizeDocks([prompt, self.docks["history"]], [560, 300], Qt.Orientation.Vertical)
        self.show_panel("layers")

    def show_panel(self, name: str) -> None:
        self.docks[name].show()
        self.docks[name].raise_()

    def _action(self, text: str, slot, shortcut: str | QKeySequence | None = None, icon: str | None = None,
                tip: str | None = None, checkable: bool = False) -> QAction:
        action = QAction(text, self, checkable=checkable)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        if icon:
            theme.set_icon(action, icon)
        keys = f" ({action.shortcut().toString()})" if shortcut else ""
        action.setToolTip((tip or text.replace("&", "").replace("…", "")) + keys)
        action.setStatusTip(tip or "")
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        c, doc, cv = self.controller, self.doc, self.canvas
        A = self._action
        self.act = {
            "new": A("&New canvas", self.new_canvas, QKeySequence.StandardKey.New, "new"),
            "open": A("&Open image…", self.open_dialog, QKeySequence.StandardKey.Open, "open"),
            "model": A("Open &model…", self.open_model_dialog, None, "model", "Load another model bundle"),
            "save": A("&Save PNG…", self.save_dialog, QKeySequence.StandardKey.Save, "save",
                      "Save the canvas as PNG, with its generation parameters"),
            "export_mask": A("&Export mask…", self.export_mask_dialog, "Ctrl+Shift+E", "export-mask"),
            "quit": A("&Quit", self.quit, QKeySequence.StandardKey.Quit),
            "undo": A("&Undo", doc.undo.undo, QKeySequence.StandardKey.Undo, "undo"),
            "redo": A("&Redo", doc.undo.redo, "Ctrl+Shift+Z", "redo"),
            "clear_mask": A("&Clear mask", doc.clear_mask, "Ctrl+Shift+A", "clear"),
            "invert_mask": A("&Invert mask", doc.invert_mask, "Ctrl+I", "invert"),
            "smaller": A("Smaller brush", lambda: cv.grow_brush(-1), "["),
            "bigger": A("Bigger brush", lambda: cv.grow_brush(1), "]"),
            "fit": A("&Fit to window", cv.fit, "Ctrl+0", "fit"),
            "actual": A("&Actual size (100 %)", cv.actual_size, "Ctrl+1", "zoom-actual"),
            "zoom_in": A("Zoom &in", lambda: cv.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn),
            "zoom_out": A("Zoom &out", lambda: cv.zoom_by(0.8), QKeySequence.StandardKey.ZoomOut),
            "toggle_seg": A("Show &segmentation", self.layers.seg_visible.toggle, "T"),
            "run": A("&Run", c.run, "Ctrl+Return", "run", "Run the selected task"),
            "cancel": A("&Cancel", self.cancel_active, "Esc", "stop", "Cancel the running job"),
            "caption": A("&Caption", c.caption, "Ctrl+Shift+D", "caption", "Describe the canvas in words"),
            "segment": A("Se&gment", c.segment, "Ctrl+Shift+G", "segment", "Label the shapes on the canvas"),
            "ask": A("&Ask…", self.ask_dialog, "Ctrl+Shift+Q", "ask", "Ask a question about the canvas"),
            "reference": A("Use as &reference", c.add_reference, None, "reference",
                           "Add the canvas to your reference library"),
            "shortcuts": A("&Keyboard shortcuts", self.show_shortcuts, "F1", "keyboard"),
            "log": A("View &log", lambda: open_log(self), None, "log", "Show the log in a window"),
        }
        # Accept/discard act on the candidates strip: only while the canvas or the strip has focus,
        # so Enter in the prompt box or the question field keeps its usual meaning.
        strip = self.candidates
        for key, text, slot, sc in (("accept", "Accept candidate", strip.accept_current, "Return"),
                                    ("discard", "Discard candidate", strip.discard_current, "Delete")):
            action = QAction(text, self, shortcut=QKeySequence(sc))
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            action.triggered.connect(slot)
            self.centralWidget().addAction(action)
            self.act[key] = action
        self.tool_group = QActionGroup(self)
        for tool, text, key, tip in (("brush", "&Brush", "B", "Paint the mask"),
                                     ("eraser", "&Eraser", "E", "Erase the mask"),
                                     ("region", "&Region", "R", "Click a segmentation region to mask it"),
                                     ("layout", "&Layout brush", "L", "Paint the layout with the class "
                                                                      "picked in the Compose panel"),
                                     ("boxes", "Bo&xes", "X", "Draw, move and resize labelled boxes"),
                                     ("pan", "&Pan", "H", "Drag to move around (or hold Space)")):
            action = A(text, lambda _=False, t=tool: cv.set_tool(t), key, tool, tip, checkable=True)
            self.tool_group.addAction(action)
            self.act[tool] = action
        self.act["brush"].setChecked(True)
        self.act["theme"] = A("&Light theme", self.toggle_theme, None, "theme", checkable=True)
        self.act["theme"].setChecked(self.settings.theme == "light")

        menus = {
            "&File": ("new", "open", "models", None, "save", "export_mask", None, "quit"),
            "&Edit": ("undo", "redo", None, "clear_mask", "invert_mask", None, "smaller", "bigger"),
            "&View": ("fit", "actual", "zoom_in", "zoom_out", None, "toggle_seg", "theme"),
            "&Image": ("run", "cancel", None, "caption", "segment", "ask", "reference"),
            "&Tools": ("brush", "eraser", "region", "layout", "boxes", "pan"),
            "&Help": ("shortcuts", "log"),
        }
        for title, keys in menus.items():
            menu = self.menuBar().addMenu(title)
            for key in keys:
                if key == "models":  # File › Model, with Open model… in it
                    self.build_model_menu(menu)
                else:
                    menu.addSeparator() if key is None else menu.addAction(self.act[key])
            if title == "&View":
                panels = menu.addMenu("Panels")
                for dock in self.findChildren(QDockWidget):
                    panels.addAction(dock.toggleViewAction())
        bar = self.addToolBar("Main")
        bar.setObjectName("mainToolbar")
        bar.setMovable(False)
        for key in ("new", "open", "save", None, "undo", "redo", None, "brush", "eraser", "region", "layout",
                    "boxes", "pan",
                    None, "fit", "actual", None, "caption", "segment", None, "theme"):
            bar.addSeparator() if key is None else bar.addAction(self.act[key])

    def _build_status(self) -> None:
        bar = self.statusBar()
        self.progress = QProgressBar(objectName="jobProgress")
        self.progress.setFixedWidth(280)
        self.progress.setVisible(False)
        self.zoom_label = QLabel(objectName="zoomLabel")
        self.brush_label = QLabel(objectName="brushLabel")
        self.model_label = QLabel("Loading model…", objectName="modelLabel")
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.brush_label)
        bar.addPermanentWidget(self.zoom_label)
        bar.addPermanentWidget(self.model_label)

    def _connect(self) -> None:
        c = self.controller
        self.prompt.run_requested.connect(c.run)
        self.prompt.cancel_requested.connect(self.cancel_active)
        self.prompt.presets_changed.connect(self._save_presets)
        self.candidates.accept_requested.connect(self.accept_candidate)
        self.candidates.preview_requested.connect(self._preview)
        self.insight.caption_requested.connect(c.caption)
        self.insight.copy_to_prompt.connect(self.prompt.set_prompt)
        self.insight.ask_requested.connect(c.ask)
        self.retrieval.add_folder_requested.connect(c.add_library_folder)
        self.retrieval.remove_requested.connect(c.remove_library)
        self.history.rerun_requested.connect(c.rerun)
        self.history.recall_requested.connect(c.recall)
        self.compose.generate_layout.connect(c.run_layout)
        self.compose.generate_regions.connect(c.run_regions)
        self.compose.from_segmentation.connect(self.layout_from_segmentation)
        self.compose.tool_requested.connect(lambda tool: self.act[tool].trigger())
        self.layers.feather_changed.connect(self._set_feather)
        self.layers.export_mask_requested.connect(self.export_mask_dialog)
        self.canvas.context_requested.connect(self._context_menu)
        self.canvas.files_dropped.connect(self.open_dropped)
        self.canvas.zoom_changed.connect(self._update_zoom_label)
        self.doc.image_changed.connect(self._update_zoom_label)
        self.canvas.brush_changed.connect(self._update_brush_label)
        self.canvas.message.connect(lambda m: self.statusBar().showMessage(m, 6000))
        c.message.connect(lambda m: self.statusBar().showMessage(m, 8000))
        c.error.connect(self.show_error)
        c.progress.connect(self._on_progress)
        c.caption_ready.connect(self._show_caption)
        self.queue.changed.connect(lambda _: self.prompt.set_running(self.queue.running() is not None))
        self.queue.engine_changed.connect(self._on_engine)
        self.queue.ended.connect(self._on_load_ended)
        self.doc.undo.cleanChanged.connect(self._update_title)
        self.doc.undo.indexChanged.connect(self._update_title)
        self.doc.undo.indexChanged.connect(self._update_undo_texts)
        QApplication.instance().focusChanged.connect(self._on_focus)
        self._update_brush_label()

    def accept_candidate(self, item) -> None:
        """Put a candidate on the canvas as one undoable step; the old image's caption goes."""
        self.doc.accept_image(item.image, item.meta, f"Accept {item.meta.get('task', 'result')}")
        self.insight.set_caption("")
        self.caption_bar.setVisible(False)

    def _preview(self, image) -> None:
        """A candidate over the canvas hides what describes the canvas (segmentation, caption)."""
        self.canvas.show_preview(image)
        self.canvas.seg_item.setVisible(image is None and self.layers.seg_visible.isChecked())
        self.caption_bar.setVisible(image is None and bool(self.insight.caption_text))

    def layout_from_segmentation(self) -> None:
        """Start the layout from the canvas's segmentation, segmenting the canvas first if needed."""
        if self.layout.from_segmentation():
            self.act["layout"].trigger()
            return
        job_id = self.controller.segment()
        if job_id is None:
            return

        def ended(ended_id: int, state: str, _result: object) -> None:
            if ended_id == job_id:
                self.queue.ended.disconnect(ended)
                if state == JobState.FINISHED and self.layout.from_segmentation():
                    self.act["layout"].trigger()

        self.queue.ended.connect(ended)  # after the controller's handler: the segmentation is set

    def cancel_active(self) -> None:
        record = self.queue.running()
        if record is not None:
            self.queue.cancel(record.id)
            self.statusBar().showMessage(f"Cancelling: {record.label}…", 4000)

    # -- small handlers ----------------------------------------------------------------------------
    def show_error(self, title: str, message: str) -> None:
        log.warning("%s: %s", title, message)
        self.last_error = error_box(self, title, message)

    def ask_dialog(self) -> None:
        self.show_panel("describe")
        self.insight.focus_question()

    def show_shortcuts(self) -> ShortcutsDialog:
        dialog = ShortcutsDialog(list(self.act.values()), self)
        dialog.show()
        return dialog

    def toggle_theme(self, light: bool) -> None:
        self.settings.theme = "light" if light else "dark"
        theme.apply(QApplication.instance(), self.settings.theme)
        theme.refresh_icons(self)
        self._save_settings()

    def _set_feather(self, value: int) -> None:
        self.controller.feather = self.settings.feather = value
        self._save_settings()

    def _save_presets(self) -> None:
        self.settings.presets = dict(self.prompt.user_presets)
        self._save_settings()

    def _save_settings(self) -> None:
        try:
            self.settings.save()
        except OSError as exc:
            log.warning("could not save settings: %s", exc)

    def _context_menu(self, global_pos, scene_pos) -> QMenu:
        menu = QMenu(self)
        for key in ("caption", "segment", "ask", "reference"):
            menu.addAction(self.act[key])
        menu.addSeparator()
        for key in ("clear_mask", "invert_mask", "toggle_seg"):
            menu.addAction(self.act[key])
        menu.popup(global_pos)
        return menu

    def _show_caption(self, text: str) -> None:
        self.caption_label.setText(f"“{text}”")
        self.caption_bar.setVisible(bool(text))

    def _on_progress(self, done: int, total: int, rate: float) -> None:
        self.progress.setVisible(total > 0)
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self.progress.setFormat(f"%v/%m tokens · {rate:.0f} tok/s")

    def _update_undo_texts(self, *_: object) -> None:
        """Edit › Undo / Redo name the canvas change they act on ("Undo Brush")."""
        for key, text in (("undo", self.doc.undo.undoText()), ("redo", self.doc.undo.redoText())):
            self.act[key].setText(f"&{key.capitalize()} {text}".rstrip())

    def _on_focus(self, _old, new) -> None:
        """Ctrl+Z in a text field undoes typing there: say so, and where the canvas's undo is."""
        text_field = isinstance(new, (QPlainTextEdit, QLineEdit))
        if text_field and shiboken6.isValid(self) and self.isAncestorOf(new):
            self.statusBar().showMessage("Ctrl+Z here undoes typing; Edit › Undo (or Ctrl+Z on the canvas) "
                                         "undoes canvas changes.", 5000)

    def _update_zoom_label(self, *_: object) -> None:
        """The zoom of an image; an empty canvas has none to speak of."""
        blank = self.doc.is_blank()
        self.zoom_label.setText("" if blank else f"{self.canvas.zoom() * 100:.0f} %")

    def _update_brush_label(self) -> None:
        self.brush_label.setText(f"{self.canvas.tool.capitalize()} · {self.canvas.brush_size} px on screen")

    def closeEvent(self, event) -> None:  # noqa: N802
        # The window manager's close button asks like Quit does; a close() from code does not.
        if event.spontaneous() and not self.confirm_replace("quit"):
            event.ignore()
            return
        self.session.stop()
        if self.autosave:
            self.session.save_if_dirty()
        self.queue.shutdown()
        super().closeEvent(event)
