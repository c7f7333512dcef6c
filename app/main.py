"""`tessera studio`: start the studio, or render a screenshot of it offscreen and exit.

Environment:
  TESSERA_FAKE_ENGINE=1   use app.demo_engine.DemoEngine instead of a model (tests, demos)
  TESSERA_HOME=DIR        where settings, the autosaved session and logs live (engine.paths)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.api import EngineAPI

log = logging.getLogger(__name__)


def engine_factory(bundle: str | None, demo: bool) -> Callable[[], EngineAPI]:
    """What the worker thread calls to get its engine (nothing is loaded here, on the UI thread)."""
    if demo or os.environ.get("TESSERA_FAKE_ENGINE") == "1":
        from app.demo_engine import DemoEngine

        return DemoEngine

    def load():
        from engine.engine import Engine

        return Engine.load(bundle)

    return load


def create_studio(args: argparse.Namespace):
    """(QApplication, MainWindow), themed, with the engine loading in the background."""
    if getattr(args, "screenshot", None):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from app import theme
    from app.dialogs import configure_logging, route_qt_messages
    from app.settings import StudioSettings
    from app.window import MainWindow

    log_file = configure_logging()
    route_qt_messages()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Tessera Studio")
    app.setOrganizationName("Tessera")
    settings = StudioSettings.load()
    style = theme.apply(app, settings.theme)
    demo = bool(getattr(args, "demo", False))
    bundle = getattr(args, "bundle", None)
    log.info("studio starting (style %s, log %s, bundle %s, demo %s)", style, log_file, bundle, demo)
    # A screenshot or a demo must not read or overwrite the artist's autosaved session.
    own = not demo and not getattr(args, "screenshot", None)
    win = MainWindow(engine_factory(bundle, demo), settings, autosave=own, restore=own)
    return app, win


def run_studio(args: argparse.Namespace) -> int:
    app, win = create_studio(args)
    if getattr(args, "screenshot", None):
        from app.screenshot import take_screenshot

        return take_screenshot(win, args.screenshot)
    win.show()
    return app.exec()

