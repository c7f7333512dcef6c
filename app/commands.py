"""The `tessera studio` subcommand."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("studio", help="open Tessera Studio")
    parser.add_argument("--bundle", help="model bundle folder (default: the bundled Shapes World model)")
    parser.add_argument("--screenshot", metavar="FILE", help="render the window offscreen to FILE and exit")
    parser.add_argument("--demo", action="store_true", help="with --screenshot: show a demo state")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from app.main import run_studio

    return run_studio(args)
