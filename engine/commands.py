"""Engine-side subcommands of `tessera`: generation, captioning, editing, segmentation, info, models."""

from __future__ import annotations

import argparse
import importlib

# Each module defines register(sub: argparse._SubParsersAction).
COMMAND_MODULES: tuple[str, ...] = (
    "engine.gen_commands",
    "engine.models_commands",
)


def register(sub: argparse._SubParsersAction) -> None:
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
