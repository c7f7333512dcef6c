"""The Layers panel: mask brush and look (size, hardness, colour, opacity, feather, clear, invert) and
the segmentation overlay (toggle, opacity, legend; click a region with the Region tool to mask it)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app import theme
from app.canvas import BRUSH_MIN, SEG_PALETTE, CanvasView
from app.qtfix import Signal


def _slider(lo: int, hi: int, value: int, tip: str) -> QSlider:
    return QSlider(Qt.Orientation.Horizontal, minimum=lo, maximum=hi, value=value, toolTip=tip)


def _swatch(color: QColor, size: int = 14) -> QIcon:
    pm = QPixmap(size, size)
    pm.fill(color)
    return QIcon(pm)


class LayersPanel(QWidget):
    feather_changed = Signal(int)
    export_mask_requested = Signal()

    def __init__(self, canvas: CanvasView, feather: int = 2, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.canvas = canvas
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self._mask_group(feather))
        layout.addWidget(self._seg_group())
        layout.addStretch(1)
        canvas.brush_changed.connect(self._sync_brush)
        canvas.doc.segmentation_changed.connect(self._sync_legend)
        self._sync_brush()
        self._sync_legend()

    # -- mask --------------------------------------------------------------------------------------
    def _mask_group(self, feather: int) -> QGroupBox:
        box = QGroupBox("Mask")
        form = QFormLayout(box)
        self.size = _slider(BRUSH_MIN, 256, self.canvas.brush_size,
                            "Brush diameter in screen pixels, whatever the zoom · [ ]")
        self.size.valueChanged.connect(lambda v: self.canvas.set_brush(size=v))
        self.size_label = QLabel()
        self.size_label.setMinimumWidth(44)
        row = QHBoxLayout()
        row.addWidget(self.size, 1)
        row.addWidget(self.size_label)
        form.addRow("Size", row)
        self.hardness = _slider(0, 100, int(self.canvas.hardness * 100), "0 = soft edge, 100 = hard edge")
        self.hardness.valueChanged.connect(lambda v: self.canvas.set_brush(hardness=v / 100))
        form.addRow("Hardness", self.hardness)
        self.feather = QSpinBox(minimum=0, maximum=16, value=feather, suffix=" px",
                                toolTip="Inpainting blends the result in over this many image pixels inside "
                                        "the mask edge; outside the mask nothing changes")
        self.feather.valueChanged.connect(self.feather_changed)
        form.addRow("Feather", self.feather)

        self.color = QToolButton(toolTip="Mask colour")
        self.color.clicked.connect(self._choose_color)
        self.opacity = _slider(5, 100, int(self.canvas.mask_opacity * 100), "Mask opacity on screen")
        self.opacity.valueChanged.connect(lambda v: self.canvas.set_mask_style(opacity=v / 100))
        self.visible = QCheckBox("Show", checked=True, toolTip="Show or hide the mask")
        self.visible.toggled.connect(self.canvas.mask_item.setVisible)
        row = QHBoxLayout()
        row.addWidget(self.color)
        row.addWidget(self.opacity, 1)
        row.addWidget(self.visible)
        form.addRow("Colour", row)
        self._sync_color()

        clear = QPushButton("Clear", toolTip="Clear the mask (Ctrl+Shift+A)")
        theme.set_icon(clear, "clear")
        clear.clicked.connect(self.canvas.doc.clear_mask)
        invert = QPushButton("Invert", toolTip="Invert the mask (Ctrl+I)")
        theme.set_icon(invert, "invert")
        invert.clicked.connect(self.canvas.doc.invert_mask)
        export = QPushButton("Export…", toolTip="Save the mask as a black and white PNG")
        theme.set_icon(export, "export-mask")
        export.clicked.connect(self.export_mask_requested)
        row = QHBoxLayout()
        for b in (clear, invert, export):
            row.addWidget(b)
        form.addRow(row)
        return box

    def _choose_color(self) -> None:
        color = QColorDialog.getColor(self.canvas.mask_color, self, "Mask colour")
        if color.isValid():
            self.canvas.set_mask_style(color=color)
            self._sync_color()

    def _sync_color(self) -> None:
        self.color.setIcon(_swatch(self.canvas.mask_color, 16))

    def _sync_brush(self) -> None:
        self.size.blockSignals(True)
        self.size.setMaximum(max(256, self.canvas.brush_size))
        self.size.setValue(self.canvas.brush_size)
        self.size.blockSignals(False)
        self.size_label.setText(f"{self.canvas.brush_size} px")
        self.hardness.blockSignals(True)
        self.hardness.setValue(round(self.canvas.hardness * 100))
        self.hardness.blockSignals(False)

    # -- segmentation ------------------------------------------------------------------------------
    def _seg_group(self) -> QGroupBox:
        box = QGroupBox("Segmentation")
        layout = QVBoxLayout(box)
        self.seg_visible = QCheckBox("Show overlay", checked=True, toolTip="Show or hide it (T)")
        self.seg_visible.toggled.connect(self.canvas.seg_item.setVisible)
        self.seg_opacity = _slider(5, 100, int(self.canvas.seg_item.opacity() * 100), "Overlay opacity")
        self.seg_opacity.valueChanged.connect(lambda v: self.canvas.seg_item.setOpacity(v / 100))
        row = QHBoxLayout()
        row.addWidget(self.seg_visible)
        row.addWidget(self.seg_opacity, 1)
        layout.addLayout(row)
        self.legend = QListWidget(objectName="legend")
        self.legend.setMaximumHeight(150)
        layout.addWidget(self.legend)
        self.seg_hint = QLabel(wordWrap=True, objectName="hint")
        layout.addWidget(self.seg_hint)
        return box

    def _sync_legend(self) -> None:
        doc = self.canvas.doc
        self.legend.clear()
        grid = doc.segmentation
        if grid is None:
            self.seg_hint.setText("Right-click the image › Segment to label its shapes.")
            return
        counts = np.bincount(np.asarray(grid).ravel(), minlength=len(doc.class_names))
        for cls in np.nonzero(counts)[0]:
            name = doc.class_names[cls] if cls < len(doc.class_names) else f"class {cls}"
            color = QColor(*SEG_PALETTE[cls % len(SEG_PALETTE)]) if cls else QColor(0, 0, 0, 0)
            item = QListWidgetItem(_swatch(color), f"{name}  ·  {counts[cls]} cells")
            self.legend.addItem(item)
        self.seg_hint.setText("Region tool (R): click a region to make it the mask, Shift+click to add.")
        self.seg_visible.setChecked(True)
