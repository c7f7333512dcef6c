"""The Compose panel: paint a layout with one brush per segmentation class, or draw labelled boxes, and
generate from either. The jobs go through the same queue, streaming, candidates and history as the
prompt panel's tasks (app/controller.py: run_layout, run_regions); the prompt panel's prompt and
sampling settings apply."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import theme
from app.layout_tool import LayoutLayer
from app.qtfix import Signal
from app.regions import Regions
from engine.layout import PALETTE


def swatch(rgb, size: int = 14) -> QIcon:
    pm = QPixmap(size, size)
    pm.fill(QColor(*(int(v) for v in rgb)))
    return QIcon(pm)


class ComposePanel(QWidget):
    generate_layout = Signal()
    generate_regions = Signal()
    from_segmentation = Signal()
    tool_requested = Signal(str)  # "layout" or "boxes"

    def __init__(self, layout: LayoutLayer, regions: Regions, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.layer, self.regions = layout, regions
        outer = QVBoxLayout(self)
        outer.setContentsMargins(6, 6, 6, 6)
        outer.addWidget(self._layout_group())
        outer.addWidget(self._regions_group(), 1)
        regions.changed.connect(self._sync_boxes)
        self.set_class_names(("background", *(f"class {i}" for i in range(1, 7))))
        self._sync_boxes()

    # -- layout ------------------------------------------------------------------------------------
    def _layout_group(self) -> QGroupBox:
        box = QGroupBox("Layout")
        layout = QVBoxLayout(box)
        hint = QLabel("Paint where each kind of shape goes (Layout brush, L); background erases.",
                      wordWrap=True, objectName="hint")
        layout.addWidget(hint)
        self.swatches = QButtonGroup(self)
        self.swatches.setExclusive(True)
        self.swatches.idClicked.connect(self._pick_class)
        self.swatch_grid = QGridLayout()
        self.swatch_grid.setSpacing(3)
        layout.addLayout(self.swatch_grid)
        start = QPushButton("From segmentation", toolTip="Start from the canvas's segmentation "
                                                         "(segments the canvas first if needed)")
        theme.set_icon(start, "segment")
        start.clicked.connect(self.from_segmentation)
        clear = QPushButton("Clear", toolTip="Clear the layout (undoable)")
        theme.set_icon(clear, "clear")
        clear.clicked.connect(self.layer.clear)
        row = QHBoxLayout()
        row.addWidget(start, 1)
        row.addWidget(clear)
        layout.addLayout(row)
        self.layout_visible = QCheckBox("Show", checked=True, toolTip="Show or hide the layout")
        self.layout_visible.toggled.connect(self.layer.item.setVisible)
        self.layout_opacity = QSlider(Qt.Orientation.Horizontal, minimum=10, maximum=100,
                                      value=round(self.layer.item.opacity() * 100), toolTip="Layout opacity")
        self.layout_opacity.valueChanged.connect(lambda v: self.layer.item.setOpacity(v / 100))
        row = QHBoxLayout()
        row.addWidget(self.layout_visible)
        row.addWidget(self.layout_opacity, 1)
        layout.addLayout(row)
        self.layout_button = QPushButton("Generate from layout", objectName="runButton",
                                         toolTip="An image that follows the layout; the prompt, if any, "
                                                 "is its caption")
        theme.set_icon(self.layout_button, "generate", "#ffffff")
        self.layout_button.clicked.connect(self.generate_layout)
        layout.addWidget(self.layout_button)
        return box

    def set_class_names(self, names: tuple[str, ...]) -> None:
        """One swatch per class of the loaded model, in the overlay's colours."""
        for button in self.swatches.buttons():
            self.swatches.removeButton(button)
            button.deleteLater()
        for cls, name in enumerate(names):
            button = QToolButton(text=name, checkable=True, objectName="swatch")
            button.setIcon(swatch(PALETTE[cls % len(PALETTE)]))
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            button.setToolTip(f"Paint {name}" if cls else "Paint background (erases the layout)")
            self.swatches.addButton(button, cls)
            self.swatch_grid.addWidget(button, cls // 2, cls % 2)
        current = self.swatches.button(min(self.layer.current, len(names) - 1))
        if current is not None:
            current.setChecked(True)

    def _pick_class(self, cls: int) -> None:
        self.layer.current = cls
        self.tool_requested.emit("layout")

    # -- regions -----------------------------------------------------------------------------------
    def _regions_group(self) -> QGroupBox:
        box = QGroupBox("Regions")
        layout = QVBoxLayout(box)
        hint = QLabel("Boxes tool (X): drag on the canvas to draw a box, drag inside it to move it, drag a "
                      "corner to resize it. Double-click a label to rename it.", wordWrap=True)
        hint.setObjectName("hint")
        layout.addWidget(hint)
        self.new_label = QLineEdit(self.regions.new_label, placeholderText="e.g. a red star",
                                   toolTip="The label the next box gets")
        self.new_label.textChanged.connect(self._set_new_label)
        row = QHBoxLayout()
        row.addWidget(QLabel("New box"))
        row.addWidget(self.new_label, 1)
        layout.addLayout(row)
        self.box_list = QListWidget(objectName="boxList")
        self.box_list.currentRowChanged.connect(self._on_row)
        self.box_list.itemChanged.connect(lambda it: self.regions.relabel(self.box_list.row(it), it.text()))
        layout.addWidget(self.box_list, 1)
        self.delete_button = QPushButton("Delete", toolTip="Delete the selected box (Delete)")
        theme.set_icon(self.delete_button, "trash")
        self.delete_button.clicked.connect(lambda: self.regions.delete())
        clear = QPushButton("Clear", toolTip="Delete every box (undoable)")
        theme.set_icon(clear, "clear")
        clear.clicked.connect(self.regions.clear)
        self.boxes_visible = QCheckBox("Show", checked=True, toolTip="Show or hide the boxes")
        self.boxes_visible.toggled.connect(self.regions.set_visible)
        row = QHBoxLayout()
        row.addWidget(self.delete_button)
        row.addWidget(clear)
        row.addStretch(1)
        row.addWidget(self.boxes_visible)
        layout.addLayout(row)
        self.regions_button = QPushButton("Generate with regions", objectName="runButton",
                                          toolTip="An image with each labelled thing in its box; the prompt "
                                                  "describes the whole picture")
        theme.set_icon(self.regions_button, "generate", "#ffffff")
        self.regions_button.clicked.connect(self.generate_regions)
        layout.addWidget(self.regions_button)
        return box

    def _set_new_label(self, text: str) -> None:
        self.regions.new_label = " ".join(text.split()) or "a shape"

    def _on_row(self, row: int) -> None:
        if row != (-1 if self.regions.selected is None else self.regions.selected):
            self.regions.select(row if row >= 0 else None)

    def _sync_boxes(self) -> None:
        self.box_list.blockSignals(True)
        self.box_list.clear()
        for i, region in enumerate(self.regions.boxes):
            x0, y0, x1, y1 = region.box
            item = QListWidgetItem(region.label)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            item.setToolTip(f"Box {i + 1}: ({x0}, {y0}) → ({x1}, {y1}) on the 0–255 grid")
            self.box_list.addItem(item)
        if self.regions.selected is not None:
            self.box_list.setCurrentRow(self.regions.selected)
        self.box_list.blockSignals(False)
        self.delete_button.setEnabled(self.regions.selected is not None)

    def set_available(self, tasks: frozenset[str] | set[str] | None) -> None:
        """Disable what the loaded model was not trained for (None: all)."""
        for button, task in ((self.layout_button, "layout"), (self.regions_button, "ground")):
            ok = tasks is None or task in tasks
            button.setEnabled(ok)
            if not ok:
                button.setToolTip("The loaded model was not trained for this task")
