"""The prompt panel: task picker, prompt box (Ctrl+Enter runs), sampling settings, seeds and presets."""

from __future__ import annotations

import random
from dataclasses import asdict, replace

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QAbstractButton,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import theme
from app.qtfix import Signal
from engine.settings import DEFAULTS
from engine.task_table import TASKS, EngineTask

# The prompt panel's tasks (layout and regions are the Compose panel's): icon and prompt placeholder.
# Their labels and whether they read the prompt are the engine's (engine/task_table.py).
T = EngineTask
PANEL_TASKS: dict[EngineTask, tuple[str, str]] = {
    T.GENERATE: ("generate", "Describe the image, e.g. “a red circle and a blue star”"),
    T.INPAINT: ("inpaint", "What to paint inside the mask, e.g. “a yellow heart”"),
    T.EDIT: ("edit", "An instruction, e.g. “make the circle blue”"),
    T.CAPTION: ("caption", "Caption needs no prompt: it describes the canvas"),
    T.SEGMENT: ("segment", "Segment needs no prompt: it labels the shapes on the canvas"),
    T.ANSWER: ("ask", "A question about the canvas, e.g. “what colour is the star?”"),
}
SEED_MODES = ("random", "fixed", "increment")
MAX_SEED = 2**31 - 1
CDK_ON = {"cdk_alpha": 0.1, "cdk_k": 8}  # CD-K's values when it is switched on (the Crisp preset's)
RETRIEVE_ON = 2  # documents retrieved when retrieval is switched on


def _preset(**changes) -> dict:
    """The engine's defaults (engine/settings.py) with some changed, in the engine's names; the number
    of candidates is no part of a preset."""
    values = asdict(replace(DEFAULTS, **changes))
    del values["candidates"]
    return values


BUILTIN_PRESETS: dict[str, dict] = {
    "Balanced": _preset(),
    "Faithful": _preset(cfg=6.0, temperature=0.7, top_p=0.8),
    "Creative": _preset(cfg=2.0, temperature=1.2, top_p=0.95),
    "Crisp (CD-K)": _preset(top_p=1.0, **CDK_ON),
}


class PromptEdit(QPlainTextEdit):
    submitted = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and \
                event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.submitted.emit()
            event.accept()
            return
        super().keyPressEvent(event)


class PromptPanel(QWidget):
    run_requested = Signal()
    cancel_requested = Signal()
    task_changed = Signal(str)
    presets_changed = Signal()

    def __init__(self, user_presets: dict[str, dict] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.user_presets: dict[str, dict] = dict(user_presets or {})
        self._task = EngineTask.GENERATE

        self.task_group = QButtonGroup(self)
        self.task_group.setExclusive(True)
        tasks = QGridLayout()
        tasks.setSpacing(4)
        for i, (name, (icon_name, _)) in enumerate(PANEL_TASKS.items()):
            button = QToolButton(text=TASKS[name].label, checkable=True, objectName="taskButton")
            theme.set_icon(button, icon_name)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            button.setProperty("task", name)
            self.task_group.addButton(button)
            tasks.addWidget(button, i // 3, i % 3)
        self.task_group.buttonToggled.connect(self._on_task_button)

        self.prompt = PromptEdit(objectName="promptEdit")
        self.prompt.setTabChangesFocus(True)
        self.prompt.setMinimumHeight(70)
        self.prompt.setMaximumHeight(120)
        self.prompt.submitted.connect(self.run_requested)

        self.run_button = QPushButton(objectName="runButton")
        theme.set_icon(self.run_button, "run", "#ffffff")
        self.run_button.setToolTip("Run the task (Ctrl+Enter)")
        self.run_button.clicked.connect(self.run_requested)
        self.cancel_button = QPushButton("Cancel", objectName="cancelButton")
        theme.set_icon(self.cancel_button, "stop")
        self.cancel_button.setToolTip("Stop the running job; the canvas stays as it was (Esc)")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        run_row = QHBoxLayout()
        run_row.addWidget(self.run_button, 3)
        run_row.addWidget(self.cancel_button, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(tasks)
        layout.addWidget(self.prompt)
        layout.addLayout(run_row)
        layout.addWidget(self._build_settings())
        layout.addStretch(1)
        self.set_task("generate")
        self.apply_preset("Balanced")

    # -- settings widgets --------------------------------------------------------------------------
    def _build_settings(self) -> QGroupBox:
        box = QGroupBox("Settings")
        form = QFormLayout(box)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)

        self.preset = QComboBox(toolTip="Sampling presets; save your own with “Save…”")
        self.preset.activated.connect(lambda _: self.apply_preset(self.preset.currentText()))
        save = QToolButton(text="Save…", toolTip="Save the current settings as a preset")
        save.clicked.connect(self._ask_preset_name)
        row = QHBoxLayout()
        row.addWidget(self.preset, 1)
        row.addWidget(save)
        form.addRow("Preset", row)
        self._refresh_presets()

        self.seed = QSpinBox(minimum=0, maximum=MAX_SEED, toolTip="The random seed: same seed, same image")
        self.seed_mode = QComboBox(toolTip="Random: a new seed every run · Fixed: keep it (lock) · "
                                           "Increment: +1 after every run")
        self.seed_mode.addItems([m.capitalize() for m in SEED_MODES])
        self.seed_mode.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)  # "Increment" whole
        dice = QToolButton(toolTip="New random seed")
        theme.set_icon(dice, "dice")
        dice.clicked.connect(lambda: self.seed.setValue(random.randint(0, MAX_SEED)))
        row = QHBoxLayout()
        row.addWidget(self.seed, 1)
        row.addWidget(self.seed_mode)
        row.addWidget(dice)
        form.addRow("Seed", row)

        self.candidates = QSpinBox(minimum=1, maximum=8, value=DEFAULTS.candidates,
                                   toolTip="Images generated together as one batch, best first")
        form.addRow("Candidates", self.candidates)
        self.cfg = _dspin(0.0, 15.0, 0.5, 1, "Classifier-free guidance: higher follows the prompt closer")
        form.addRow("CFG scale", self.cfg)
        self.temperature = _dspin(0.05, 2.0, 0.05, 2, "Lower is safer and plainer, higher is more varied")
        form.addRow("Temperature", self.temperature)
        self.top_p = _dspin(0.05, 1.0, 0.05, 2, "Nucleus sampling: keep likely tokens up to this mass")
        form.addRow("Top-p", self.top_p)

        self.cdk = QCheckBox("CD-K", toolTip="Contrastive decoding top-k (CM3Leon §3.1)")
        self.cdk_alpha = _dspin(0.0, 1.0, 0.05, 2, "α: keep tokens at least α times the k-th most likely one")
        self.cdk_k = QSpinBox(minimum=1, maximum=256, toolTip="k of contrastive top-k")
        self.cdk_alpha.setValue(CDK_ON["cdk_alpha"])
        self.cdk_k.setValue(CDK_ON["cdk_k"])
        self.cdk.toggled.connect(self._sync_enabled)
        row = QHBoxLayout()
        row.addWidget(self.cdk)
        row.addWidget(QLabel("α"))
        row.addWidget(self.cdk_alpha)
        row.addWidget(QLabel("k"))
        row.addWidget(self.cdk_k)
        form.addRow("Decoding", row)

        self.retrieval = QCheckBox("On", toolTip="Retrieve related documents (the model's memory and "
                                                 "your library) as context")
        self.retrieve_k = QSpinBox(minimum=1, maximum=8, value=RETRIEVE_ON,
                                   toolTip="How many documents to retrieve")
        self.retrieval.toggled.connect(self._sync_enabled)
        row = QHBoxLayout()
        row.addWidget(self.retrieval)
        row.addWidget(QLabel("k"))
        row.addWidget(self.retrieve_k, 1)
        form.addRow("Retrieval", row)
        return box

    def _sync_enabled(self) -> None:
        self.cdk_alpha.setEnabled(self.cdk.isChecked())
        self.cdk_k.setEnabled(self.cdk.isChecked())
        self.retrieve_k.setEnabled(self.retrieval.isChecked())

    # -- tasks -------------------------------------------------------------------------------------
    def task(self) -> EngineTask:
        return self._task

    def set_task(self, task: str) -> None:
        for button in self.task_group.buttons():
            if button.property("task") == task:
                button.setChecked(True)

    def set_available_tasks(self, tasks: set[str] | None, reasons: dict[str, str] | None = None) -> None:
        """Disable tasks the model was not trained for (None: all), saying why where the model does."""
        for button in self.task_group.buttons():
            task = button.property("task")
            ok = tasks is None or task in tasks
            button.setEnabled(ok)
            why = (reasons or {}).get(task) or "The loaded model was not trained for this task"
            button.setToolTip("" if ok else why)
        checked = self.task_group.checkedButton()
        enabled = [b for b in self.task_group.buttons() if b.isEnabled()]
        if checked is not None and not checked.isEnabled() and enabled:  # a task the new model lacks
            enabled[0].setChecked(True)

    def _on_task_button(self, button: QAbstractButton, checked: bool) -> None:
        if not checked:
            return
        self._task = EngineTask(button.property("task"))
        spec = TASKS[self._task]
        self.prompt.setPlaceholderText(PANEL_TASKS[self._task][1])
        self.prompt.setEnabled(spec.prompt != "none")
        self.run_button.setText(f"{spec.label}   Ctrl+↵")
        self.task_changed.emit(self._task)

    # -- values ------------------------------------------------------------------------------------
    def prompt_text(self) -> str:
        return self.prompt.toPlainText().strip()

    def set_prompt(self, text: str) -> None:
        self.prompt.setPlainText(text)

    def sampling(self) -> dict:
        """The engine's keyword arguments for generate()."""
        return {
            "n": self.candidates.value(),
            "cfg": self.cfg.value(),
            "temperature": self.temperature.value(),
            "top_p": self.top_p.value(),
            "cdk_alpha": self.cdk_alpha.value() if self.cdk.isChecked() else None,
            "cdk_k": self.cdk_k.value() if self.cdk.isChecked() else None,
            "retrieve": self.retrieve_k.value() if self.retrieval.isChecked() else 0,
        }

    def take_seed(self) -> int:
        """The seed for the run being started; moves the seed on as the mode says."""
        mode = SEED_MODES[self.seed_mode.currentIndex()]
        if mode == "random":
            self.seed.setValue(random.randint(0, MAX_SEED))
        seed = self.seed.value()
        if mode == "increment":
            self.seed.setValue((seed + 1) % (MAX_SEED + 1))
        return seed

    def set_seed(self, seed: int, mode: str = "fixed") -> None:
        self.seed.setValue(int(seed))
        self.seed_mode.setCurrentIndex(SEED_MODES.index(mode))

    def set_running(self, running: bool) -> None:
        self.cancel_button.setEnabled(running)

    # -- presets -----------------------------------------------------------------------------------
    def preset_values(self) -> dict:
        """The sampling settings in the engine's names (engine/settings.GenerationSettings)."""
        return {k: v for k, v in self.sampling().items() if k != "n"}

    def apply_preset(self, name: str) -> None:
        values = {**BUILTIN_PRESETS["Balanced"], **BUILTIN_PRESETS.get(name, self.user_presets.get(name, {}))}
        self.set_values(values)
        self.preset.setCurrentText(name)

    def set_values(self, values: dict) -> None:
        """Settings in the engine's names; a missing (or None) one leaves its widget. cdk_alpha None is
        CD-K off and retrieve 0 retrieval off (their spin boxes keep the values to switch back on to)."""
        for key, spin in (("cfg", self.cfg), ("temperature", self.temperature), ("top_p", self.top_p)):
            if values.get(key) is not None:
                spin.setValue(float(values[key]))
        if "cdk_alpha" in values:
            on = values["cdk_alpha"] is not None and values.get("cdk_k") is not None
            self.cdk.setChecked(on)
            if on:
                self.cdk_alpha.setValue(float(values["cdk_alpha"]))
                self.cdk_k.setValue(int(values["cdk_k"]))
        if "retrieve" in values:
            k = int(values["retrieve"] or 0)
            self.retrieval.setChecked(k > 0)
            if k:
                self.retrieve_k.setValue(k)
        if "n" in values:
            self.candidates.setValue(int(values["n"]))
        self._sync_enabled()

    def save_preset(self, name: str) -> None:
        name = name.strip()
        if not name or name in BUILTIN_PRESETS:
            raise ValueError(f"choose another name than {name!r}")
        self.user_presets[name] = self.preset_values()
        self._refresh_presets()
        self.preset.setCurrentText(name)
        self.presets_changed.emit()

    def _ask_preset_name(self) -> None:
        name, ok = QInputDialog.getText(self, "Save preset", "Preset name:")
        if ok and name.strip() and name.strip() not in BUILTIN_PRESETS:
            self.save_preset(name)

    def _refresh_presets(self) -> None:
        self.preset.clear()
        self.preset.addItems([*BUILTIN_PRESETS, *sorted(self.user_presets)])

    # -- history and session -----------------------------------------------------------------------
    def recall(self, task: str, prompt: str, seed: int | None, settings: dict) -> None:
        """Load a past run: its task, prompt, seed (locked) and settings."""
        self.set_task(task)
        self.set_prompt(prompt)
        if seed is not None:
            self.set_seed(seed, "fixed")
        self.set_values(settings)

    def state(self) -> dict:
        return {"task": self._task, "prompt": self.prompt.toPlainText(), "seed": self.seed.value(),
                "seed_mode": SEED_MODES[self.seed_mode.currentIndex()], "n": self.candidates.value(),
                "preset": self.preset.currentText(), **self.preset_values()}

    def restore(self, state: dict) -> None:
        self.set_task(state.get("task", "generate"))
        self.set_prompt(state.get("prompt", ""))
        mode = state.get("seed_mode", "random")
        self.set_seed(int(state.get("seed", 0)), mode if mode in SEED_MODES else "random")
        self.set_values(state)
        self.preset.setCurrentText(state.get("preset", "Balanced"))


def _dspin(lo: float, hi: float, step: float, decimals: int, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox(minimum=lo, maximum=hi, singleStep=step, decimals=decimals, toolTip=tip)
    spin.setKeyboardTracking(False)
    return spin
