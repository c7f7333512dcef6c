"""The studio's job logic: turn the prompt panel and the canvas into engine jobs, and job events back
into previews, candidates, captions, overlays and history entries.

Each job captures copies of what it reads (image, mask, prompt, seed) at submit time, so whatever
the artist does while it waits in the queue cannot change it. Results never touch the document
directly: images go to the candidates strip and only an explicit Accept puts them on the canvas.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QObject

from app.history import HistoryEntry
from app.imageutil import png_bytes, resize, rgba
from app.panels import CandidateItem, LibraryItem
from app.qtfix import Signal
from app.regions import Region
from engine.errors import UnsupportedTaskError
from engine.events import Finished, PartialImage, Progress, Retrieved
from engine.io import atomic_write_bytes
from engine.jobs import JobState
from engine.paths import user_data_dir
from engine.task_table import IMAGE_TASKS, TASKS, EngineTask

if TYPE_CHECKING:
    from app.window import MainWindow
    from engine.library import AddReport, UserLibrary



def _short(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


class Controller(QObject):
    message = Signal(str)  # for the status bar
    error = Signal(str, str)  # title, message
    progress = Signal(int, int, float)  # done, total, tokens/s; total 0 hides the bar
    caption_ready = Signal(str)

    def __init__(self, win: MainWindow) -> None:
        super().__init__(win)
        self.win = win
        self.model_id = ""
        self.class_names: tuple[str, ...] = ()
        self.feather = 2
        self._active: int | None = None  # the running job: its events drive the preview and progress
        win.queue.event.connect(self._on_event)
        win.queue.ended.connect(self._on_ended)
        win.queue.changed.connect(self._on_changed)
        win.queue.engine_changed.connect(self._on_engine)

    # -- submitting ---------------------------------------------------------------------------------------
    def run(self) -> int | None:
        """Run the task picked in the prompt panel. Returns the job id, or None (with a message)."""
        panel, doc = self.win.prompt, self.win.doc
        task, text = panel.task(), panel.prompt_text()
        if TASKS[task].prompt == "required" and not text:
            what = "question" if task == EngineTask.ANSWER else "prompt"
            return self._refuse(f"Type a {what} first.")
        if TASKS[task].output != "image" and doc.is_blank():
            return self._refuse("The canvas is empty: generate or open an image first.")
        if task == EngineTask.CAPTION:
            return self.caption()
        if task == EngineTask.SEGMENT:
            return self.segment()
        if task == EngineTask.ANSWER:
            return self.ask(text)
        return self._submit(task, text, panel.take_seed(), panel.sampling())

    def run_layout(self) -> int | None:
        """Generate from the painted layout (Compose panel), with the prompt as its optional caption."""
        layer = self.win.layout
        if layer.is_empty():
            return self._refuse("Paint a layout first: Layout brush (L) with a class from the Compose panel, "
                                "or start from the segmentation.")
        panel = self.win.prompt
        return self._submit(EngineTask.LAYOUT, panel.prompt_text(), panel.take_seed(), panel.sampling(),
                            layout=layer.classes.copy())

    def run_regions(self) -> int | None:
        """Generate with the boxes on the canvas (Compose panel) and the prompt."""
        panel = self.win.prompt
        if not self.win.regions.boxes:
            return self._refuse("Draw a box first: Boxes tool (X), then drag on the canvas.")
        if not panel.prompt_text():
            return self._refuse("Type a prompt first: it describes the whole picture.")
        return self._submit(EngineTask.GROUND, panel.prompt_text(), panel.take_seed(), panel.sampling(),
                            boxes=self.win.regions.engine_boxes())

    def _submit(self, task: EngineTask, text: str, seed: int, sampling: dict,
                layout: np.ndarray | None = None, boxes: list | None = None) -> int | None:
        """Queue an image task; what it reads (canvas, mask, layout, boxes) is copied now."""
        doc = self.win.doc
        if task in (EngineTask.INPAINT, EngineTask.EDIT) and doc.is_blank():
            return self._refuse("The canvas is empty: generate or open an image first.")
        if task == EngineTask.INPAINT and not doc.has_mask():
            return self._refuse("Paint a mask over the part to regenerate first (brush: B).")
        sampling = {k: sampling[k] for k in TASKS[task].sampling if k in sampling}  # what the request takes
        params = {"task": task, "prompt": text, "seed": seed, "settings": {**sampling, "seed": seed},
                  "layout": layout, "boxes": boxes}  # what an interrupted job needs to run again
        label = f"{TASKS[task].label} · {_short(text)}"
        if task == EngineTask.GENERATE:
            def call(engine, _):
                return engine.generate(text, seed=seed, **sampling)
            return self.win.queue.submit(task, label, call, params)
        if task == EngineTask.LAYOUT:
            def call(engine, _):
                return engine.from_layout(layout, text, seed=seed, **sampling)
            return self.win.queue.submit(task, label, call, params)
        if task == EngineTask.GROUND:
            def call(engine, _):
                return engine.ground(text, boxes, seed=seed, **sampling)
            return self.win.queue.submit(task, label, call, params)
        image = doc.engine_image()
        if task == EngineTask.INPAINT:
            mask = doc.alpha(self.feather)  # coverage, feathered: the engine blends its result by it
            context = {"original": doc.image.copy(), "untouched": mask == 0}

            def call(engine, _):
                return engine.inpaint(image, mask, text, seed=seed, **sampling)
        else:
            context = {"size": (doc.width, doc.height)}

            def call(engine, _):
                return engine.edit(image, text, seed=seed, **sampling)
        return self.win.queue.submit(task, label, call, params, context)

    def rerun(self, entry: HistoryEntry) -> int | None:
        """Run a past generation again with its own seed and settings; the prompt panel (its seed mode
        included) stays as the artist set it. Inpainting and editing read the current canvas."""
        settings = entry.settings
        seed = entry.seed if entry.seed is not None else self.win.prompt.take_seed()
        layout = np.asarray(settings["layout"]) if entry.task == EngineTask.LAYOUT else None
        boxes = [(label, tuple(box)) for label, box in settings.get("boxes", [])] or None
        return self._submit(EngineTask(entry.task), entry.prompt, seed, settings, layout=layout, boxes=boxes)

    def recall(self, entry: HistoryEntry) -> None:
        """"Use settings": the prompt panel gets the entry's task, prompt, seed and settings; a layout
        or boxes go back onto the canvas (undoably)."""
        self.win.prompt.recall(entry.task, entry.prompt, entry.seed, entry.settings)
        if entry.task == EngineTask.LAYOUT and "layout" in entry.settings:
            self.win.layout.replace(np.asarray(entry.settings["layout"]), "Layout from history")
        if entry.task == EngineTask.GROUND and entry.settings.get("boxes"):
            boxes = [Region.from_json(b) for b in entry.settings["boxes"]]
            self.win.regions.edit(boxes, "Boxes from history")

    def caption(self) -> int | None:
        if self.win.doc.is_blank():
            return self._refuse("The canvas is empty: nothing to caption.")
        image = self.win.doc.engine_image()
        return self.win.queue.submit(EngineTask.CAPTION, "Caption", lambda engine, _: engine.caption(image))

    def segment(self) -> int | None:
        if self.win.doc.is_blank():
            return self._refuse("The canvas is empty: nothing to segment.")
        image = self.win.doc.engine_image()
        return self.win.queue.submit(EngineTask.SEGMENT, "Segment", lambda engine, _: engine.segment(image))

    def ask(self, question: str) -> int | None:
        if self.win.doc.is_blank():
            return self._refuse("The canvas is empty: nothing to ask about.")
        image = self.win.doc.engine_image()
        return self.win.queue.submit(EngineTask.ANSWER, f"Ask · {_short(question)}",
                                     lambda engine, _: engine.answer(image, question), {"prompt": question})

    def add_reference(self) -> int | None:
        """Save the canvas into the references folder and add it to the engine's library."""
        if self.win.doc.is_blank():
            return self._refuse("The canvas is empty: nothing to add as a reference.")
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}"
        path = user_data_dir() / "references" / f"ref-{stamp}.png"
        atomic_write_bytes(path, png_bytes(self.win.doc.image))
        return self.win.queue.submit("library", "Add reference", lambda engine, progress: _library_call(
            engine, lambda lib: _added(lib.add([path], progress=progress))))

    def add_library_folder(self, folder: str) -> int:
        self.win.retrieval.set_indexing(0, 1)
        return self.win.queue.submit("library", f"Index · {_short(folder, 30)}", lambda engine, progress: (
            _library_call(engine, lambda lib: _added(lib.add([folder], progress=progress)))))

    def remove_library(self, ids: list[int]) -> int:
        return self.win.queue.submit("library", "Remove references", lambda engine, _: _library_call(
            engine, lambda lib: f"Removed {lib.remove(ids)} image(s) from the library."))

    def refresh_library(self) -> int:
        """Show what the library already holds; a model without a retriever simply has none."""
        def listing(engine, _):
            try:
                return _library_call(engine, None)
            except UnsupportedTaskError:
                return [], None
        return self.win.queue.submit("library", "Library", listing, {"quiet": True})  # no "Done" message

    def _refuse(self, text: str) -> None:
        self.message.emit(text)
        return None

    # -- results --------------------------------------------------------------------------------------------
    def _on_engine(self, info: dict) -> None:
        self.model_id = info["model_id"]
        self.class_names = info["seg_class_names"]
        self.refresh_library()

    def _on_changed(self, job_id: int) -> None:
        record = self.win.queue.records.get(job_id)
        if record is not None and record.state == JobState.RUNNING and record.task != "load":
            self._active = job_id
            self.message.emit(f"Running: {record.label}…")
            if record.task in IMAGE_TASKS:
                self.win.retrieval.set_retrieved(())

    def _on_event(self, job_id: int, ev: object) -> None:
        record = self.win.queue.records[job_id]
        if isinstance(ev, Progress):
            if record.task == "library":
                self.win.retrieval.set_indexing(ev.done, ev.total)
            else:
                self.progress.emit(ev.done, ev.total, ev.tokens_per_s)
        elif isinstance(ev, PartialImage) and ev.candidate == 0 and record.task in IMAGE_TASKS:
            self.win.canvas.show_preview(self._result_image(record, ev.image))
        elif isinstance(ev, Retrieved):
            self.win.retrieval.set_retrieved(ev.documents)

    def _on_ended(self, job_id: int, state: str, result: object) -> None:
        record = self.win.queue.records[job_id]
        if job_id == self._active:  # the streaming job ended: the canvas shows the document again
            self._active = None
            self.win.canvas.show_preview(None)
            self.progress.emit(0, 0, 0.0)
        if record.task == "library" and state != JobState.FINISHED:
            self.win.retrieval.set_indexing(None)
        # "Done" replaces "Running"; the load and quiet jobs have messages of their own
        if state == JobState.FINISHED and record.task != "load" and not record.params.get("quiet"):
            self.message.emit(f"Done: {record.label}")
        if state == JobState.CANCELLED:
            self.message.emit(f"Cancelled: {record.label}")
        elif state == JobState.FAILED:
            if record.task == "load":
                kept = "the previous model stays loaded" if self.model_id else "no model is loaded"
                self.error.emit("Could not load the model", f"{result}\n\nThe studio keeps running ({kept}); "
                                "choose another in File › Model.")
            else:
                self.error.emit(f"{record.label} failed", str(result))
        elif record.task in IMAGE_TASKS:
            self._images_done(record, result)
        elif record.task == EngineTask.CAPTION:
            text = result.candidates[0].text or ""
            self.win.insight.set_caption(text)
            self.caption_ready.emit(text)
            self.message.emit("Caption ready: copy it to the prompt from the Describe panel.")
        elif record.task == EngineTask.ANSWER:
            self.win.insight.add_answer(record.params.get("prompt", ""), result.candidates[0].text or "")
            self.win.show_panel("describe")
        elif record.task == EngineTask.SEGMENT:
            grid = np.asarray(result.candidates[0].segmentation)
            self.win.doc.set_segmentation(grid, self.class_names)
            self.message.emit("Segmented. Pick the Region tool (R) and click a region to make it the mask.")
        elif record.task == "library":
            items, note = result
            self.win.retrieval.set_indexing(None)
            self.win.retrieval.set_library(items)
            if note:
                self.message.emit(note)

    def _images_done(self, record, finished: Finished) -> None:
        settings = {**record.params.get("settings", {}), **(finished.settings or {})}
        base = {"task": record.task, "prompt": record.params.get("prompt", ""),
                "seed": settings.get("seed", record.params.get("seed")), "settings": settings,
                "model_id": self.model_id}
        items = [CandidateItem(self._result_image(record, c.image), {**base, "rank": i, "score": c.score})
                 for i, c in enumerate(finished.candidates) if c.image is not None]
        if not items:
            self.error.emit(f"{record.label} failed", "The model returned no image.")
            return
        self.win.candidates.add_candidates(items)
        thumb = resize(items[0].image, 64, 64)
        self.win.history.add(HistoryEntry(record.task, base["prompt"], base["seed"], settings, self.model_id,
                                          thumb))
        self.message.emit(f"{len(items)} candidate(s) in {finished.seconds:.1f} s. "
                          "Accept one onto the canvas (Enter), keep it or discard it.")

    def _result_image(self, record, image: np.ndarray) -> np.ndarray:
        """A model image as the canvas will get it. Inpainting comes composited by the engine (an RGB
        world): where the mask is 0 the canvas keeps its own RGBA pixels, transparency included."""
        out = rgba(image)
        if record.task == EngineTask.INPAINT:
            original, untouched = record.context["original"], record.context["untouched"]
            out = np.where(untouched[..., None], original, out)
        elif record.task == EngineTask.EDIT:
            out = resize(out, *record.context["size"])
        return out


def _library_call(engine, operation: Callable[[UserLibrary], str | None] | None
                  ) -> tuple[list[LibraryItem], str | None]:
    """On the worker thread: run a library operation, then read the library's new contents, thumbnails
    included (the panel never touches the library). Returns them and the operation's status message."""
    library = engine.library
    note = operation(library) if operation is not None else None
    return [LibraryItem(e.id, e.path, e.caption, library.image(e.id)) for e in library.list()], note


def _added(report: AddReport) -> str:
    text = f"Added {len(report.added)} image(s) to the library."
    if report.skipped:
        path, reason = report.skipped[0]
        more = f" and {len(report.skipped) - 1} more" if len(report.skipped) > 1 else ""
        text += f" Skipped {Path(path).name} ({reason}){more}."
    return text
