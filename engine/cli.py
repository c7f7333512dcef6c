"""The `tessera` command. Each package contributes subcommands through the
`tessera.commands` entry-point group, so this module depends on no package above it."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points

from engine.errors import TesseraError

# Used when package metadata is missing (a frozen build or a source tree on sys.path).
FALLBACK_COMMAND_MODULES = ("engine.commands", "training.commands", "app.commands")


def _registrars():
    found = list(entry_points(group="tessera.commands"))
    if found:
        yield from (ep.load for ep in found)
        return
    for name in FALLBACK_COMMAND_MODULES:
        yield lambda name=name: importlib.import_module(name).register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description="Tessera: text and images as tokens.")
    parser.add_argument("--self-test", action="store_true", help="run the bundled model headless and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for load in _registrars():
        try:
            register = load()
        except ModuleNotFoundError as exc:  # a package left out (a frozen studio has no training/)
            if not _left_out(exc):
                raise
            continue
        register(sub)
    return parser


# Top-level packages that may be left out of an install; every other ImportError is a bug and surfaces.
PACKAGES = ("engine", "training", "app")
# What `pip install "tessera-studio[train]"` adds (pyproject.toml): a command that needs one says so.
TRAIN_EXTRA = ("torch", "onnx", "onnxscript", "skimage", "transformers")


def _left_out(exc: ModuleNotFoundError) -> bool:
    """The command module's whole package is missing (not installed, or hidden), not a module inside it."""
    if exc.name in PACKAGES:
        return True
    top = (exc.name or "").partition(".")[0]
    if top not in PACKAGES:
        return False
    try:
        return importlib.util.find_spec(top) is None
    except ValueError:  # sys.modules[top] is None: hidden, as an import of a missing package meets it
        return True


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    top = (exc.name or "").partition(".")[0]
    return top if top in TRAIN_EXTRA else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.self_test:
        from engine.selftest import run_self_test

        return run_self_test()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except TesseraError as exc:
        print(f"tessera: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if (missing := _missing_extra(exc)) is None:
            raise
        print(f"tessera: error: this command needs {missing}: pip install \"tessera-studio[train]\"",
              file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
