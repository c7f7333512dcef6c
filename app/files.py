"""The main window's file commands: new canvas, open (dialog or drop), save PNG, export the mask, quit,
and the Save/Discard/Cancel question before anything replaces unsaved work. A mixin of MainWindow
(app/window.py), which owns the widgets these read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shiboken6
from PySide6.QtWidgets import QFileDialog

from app.dialogs import ask_unsaved
from engine.errors import TesseraError
from engine.imageio import load_image

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)"


class FileCommands:
    """Mixed into MainWindow: reads its doc, canvas, insight, candidates, caption bar and status bar."""

    @property
    def unsaved(self) -> bool:
        """Changes not saved as a file: the title's mark, and New/Open/drop/Quit ask first."""
        return self.restored_unsaved or not self.doc.undo.isClean()

    @unsaved.setter
    def unsaved(self, value: bool) -> None:
        self.restored_unsaved = value
        if not value:
            self.doc.undo.setClean()
        self._update_title()

    def confirm_replace(self, action: str) -> bool:
        """True when the canvas may be replaced: nothing unsaved, or the artist saved or discarded it."""
        if not self.unsaved:
            return True
        answer = ask_unsaved(self, action)
        if answer == "save":
            self.save_dialog()
            return not self.unsaved
        return answer == "discard"

    def new_canvas(self) -> None:
        if not self.confirm_replace("start a new canvas"):
            return
        self.blank_canvas()  # the loaded model's image size (app/models_menu.py)
        self.file_path = None
        self._fresh_canvas()

    def _fresh_canvas(self) -> None:
        """A new or opened canvas: nothing of the old one's caption, answers or results stays."""
        self.restored_unsaved = False
        self.caption_bar.setVisible(False)
        self.insight.set_caption("")
        self.candidates.clear_unkept()
        self._update_title()

    def open_dialog(self) -> None:
        if not self.confirm_replace("open another image"):
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open image", "", IMAGE_FILTER)
        if path:
            self.open_path(path)

    def open_dropped(self, paths: list[str]) -> None:
        if self.confirm_replace("open the dropped image"):
            self.open_path(paths[0])

    def quit(self) -> None:
        if self.confirm_replace("quit"):
            self.close()

    def open_path(self, path: str | Path) -> bool:
        try:
            image = load_image(path, size=None, alpha=True)  # the engine's loader: EXIF-upright
        except TesseraError as exc:
            self.show_error("Could not open the image", str(exc))
            return False
        meta = self._read_params(path)
        self.doc.reset(image, meta=meta)
        self.file_path = str(path)
        self.canvas.fit()
        self._fresh_canvas()
        hint = f" · made with “{meta['prompt']}”, seed {meta.get('seed')}" if meta.get("prompt") else ""
        size = f"{image.shape[1]}×{image.shape[0]}"
        self.statusBar().showMessage(f"Opened {Path(path).name} ({size}){hint}", 8000)
        return True

    @staticmethod
    def _read_params(path: str | Path) -> dict:
        from engine.pngmeta import read_params

        try:
            return read_params(path) if str(path).lower().endswith(".png") else {}
        except TesseraError:  # no parameters: an ordinary image
            return {}

    def save_dialog(self) -> None:
        start = self.file_path or "tessera.png"
        start = str(Path(start).with_suffix(".png"))
        path, _ = QFileDialog.getSaveFileName(self, "Save PNG", start, "PNG (*.png)")
        if path:
            self.save_png(path)

    def save_png(self, path: str | Path) -> bool:
        """Save the canvas; its generation parameters go into the PNG's "tessera" text chunk."""
        from engine.pngmeta import save_png

        image = self.doc.image if self.doc.image[..., 3].min() < 255 else self.doc.image[..., :3]
        try:
            save_png(path, image, self.doc.meta or None)
        except (OSError, TesseraError) as exc:
            self.show_error("Could not save", f"{path}: {exc}")
            return False
        self.file_path = str(path)
        self.unsaved = False
        self.statusBar().showMessage(f"Saved {path}", 6000)
        return True

    def export_mask_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export mask", "mask.png", "PNG (*.png)")
        if path:
            self.export_mask(path)

    def export_mask(self, path: str | Path) -> bool:
        """White = masked, at the image's resolution (what `tessera inpaint --mask` reads)."""
        from engine.pngmeta import save_png

        masked = self.doc.engine_mask()  # the pixels inpainting regenerates: pure black and white
        try:
            save_png(path, np.where(masked, 255, 0).astype(np.uint8))
        except (OSError, TesseraError) as exc:
            self.show_error("Could not export the mask", f"{path}: {exc}")
            return False
        self.statusBar().showMessage(f"Mask exported to {path}", 6000)
        return True

    def _update_title(self, *_: object) -> None:
        if not shiboken6.isValid(self.doc.undo):  # a late signal while the window is being destroyed
            return
        name = Path(self.file_path).name if self.file_path else "Untitled"
        star = " •" if self.unsaved else ""
        self.setWindowTitle(f"{name}{star} — Tessera Studio")
