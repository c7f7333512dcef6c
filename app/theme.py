"""Look: qdarkstyle (dark or light) plus a few studio rules; Fusion when qdarkstyle is unavailable.

Icons are monochrome SVGs in assets/icons drawn with `currentColor`, tinted for the active theme.
"""

from __future__ import annotations

import logging
import os
from functools import cache

from PySide6.QtCore import QByteArray, QObject, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication, QStyleFactory

from engine.paths import assets_dir

log = logging.getLogger(__name__)

THEMES = ("dark", "light")
ICON_COLORS = {"dark": "#dfe1e2", "light": "#293544"}
ACCENT = "#259AE9"
_current = {"theme": "dark", "engine": "fusion"}


def apply(app: QApplication, theme: str = "dark") -> str:
    """Style the whole application; returns the engine used ("qdarkstyle" or "fusion")."""
    if theme not in THEMES:
        theme = "dark"
    _current["theme"] = theme
    icon.cache_clear()
    extra = _extra_qss()
    try:
        os.environ.setdefault("QT_API", "pyside6")
        import qdarkstyle
        from qdarkstyle.dark.palette import DarkPalette
        from qdarkstyle.light.palette import LightPalette

        palette = DarkPalette if theme == "dark" else LightPalette
        sheet = qdarkstyle.load_stylesheet(qt_api="pyside6", palette=palette)
        app.setStyleSheet(sheet + "\n" + extra.replace("@BG", palette.COLOR_BACKGROUND_1))
        _current["engine"] = "qdarkstyle"
    except Exception as exc:  # qdarkstyle is optional and its Qt 6 support can break
        log.warning("qdarkstyle unavailable (%s); using Fusion", exc)
        app.setStyle(QStyleFactory.create("Fusion"))
        app.setPalette(_fusion_palette(theme))
        bg = app.palette().color(QPalette.ColorRole.Window).name()
        app.setStyleSheet(extra.replace("@BG", bg))
        _current["engine"] = "fusion"
    return _current["engine"]


def current() -> str:
    return _current["theme"]


def _extra_qss() -> str:
    path = assets_dir() / "styles" / "studio.qss"
    try:
        return path.read_text(encoding="utf-8").replace("@ACCENT", ACCENT)
    except OSError:
        log.warning("missing style sheet %s", path)
        return ""


def _fusion_palette(theme: str) -> QPalette:
    palette = QPalette()
    if theme == "light":
        return QStyleFactory.create("Fusion").standardPalette()
    colors = {
        QPalette.ColorRole.Window: "#202327", QPalette.ColorRole.WindowText: "#dfe1e2",
        QPalette.ColorRole.Base: "#16181b", QPalette.ColorRole.AlternateBase: "#25292e",
        QPalette.ColorRole.Text: "#dfe1e2", QPalette.ColorRole.Button: "#2b3036",
        QPalette.ColorRole.ButtonText: "#dfe1e2", QPalette.ColorRole.Highlight: ACCENT,
        QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#2b3036",
        QPalette.ColorRole.ToolTipText: "#dfe1e2",
    }
    for role, color in colors.items():
        palette.setColor(role, QColor(color))
    return palette


def set_icon(target, name: str, color: str | None = None) -> None:
    """Give a button or action a themed icon, remembered so that `refresh_icons` can retint it."""
    target.setProperty("iconName", name)
    target.setProperty("iconColor", color or "")
    target.setIcon(icon(name, color))


def refresh_icons(root: QObject) -> None:
    """Retint every icon set with `set_icon` under `root` (after a theme change)."""
    for obj in [root, *root.findChildren(QObject)]:
        name = obj.property("iconName")
        if name:
            obj.setIcon(icon(name, obj.property("iconColor") or None))


@cache
def icon(name: str, color: str | None = None) -> QIcon:
    """assets/icons/<name>.svg tinted for the theme (or `color`); an empty icon if it is missing."""
    path = assets_dir() / "icons" / f"{name}.svg"
    try:
        svg = path.read_text(encoding="utf-8")
    except OSError:
        log.warning("missing icon %s", path)
        return QIcon()
    svg = svg.replace("currentColor", color or ICON_COLORS[_current["theme"]])
    renderer = QSvgRenderer(QByteArray(svg.encode()))
    result = QIcon()
    for size in (16, 24, 32, 48):
        pm = QPixmap(size, size)
        pm.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pm)
        renderer.render(painter, QRectF(0, 0, size, size))
        painter.end()
        result.addPixmap(pm)
    return result
