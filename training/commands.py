"""Training-side subcommands of `tessera`: data, train, eval, index, bench, model, export, import."""

from __future__ import annotations

import argparse
import importlib

GROUPS = {
    "data": "Shapes World and folder datasets",
    "train": "train tokenizers, retriever, models",
    "eval": "evaluate tokenizers and models",
    "index": "build and benchmark retrieval memory banks",
    "bench": "benchmarks",
    "model": "model presets",
    "import": "import open-weight checkpoints (Janus-Pro)",
}

# Each module defines register(groups: dict[str, argparse._SubParsersAction]).
COMMAND_MODULES: tuple[str, ...] = (
    "training.tokenizer_commands",
    "training.model_commands",
    "training.data.commands",
    "training.retrieval_commands",
    "training.text_commands",
    "training.export_commands",
    "training.eval_commands",
    "training.sft_commands",
    "training.recipe",
    "training.learn_commands",
    "training.importers.commands",
)


def register(sub: argparse._SubParsersAction) -> None:
    groups = {"top": sub}
    for name, help_text in GROUPS.items():
        parser = sub.add_parser(name, help=help_text)
        groups[name] = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(groups)
    _default_subcommand(sub.choices["eval"], groups["eval"], "model")


def _default_subcommand(parser: argparse.ArgumentParser, subcommands: argparse._SubParsersAction,
                        default: str) -> None:
    """Let `tessera eval [BUNDLE] [options]` mean `tessera eval model [BUNDLE] [options]`: argparse
    cannot put an optional positional beside subcommands, so arguments that do not start with a
    subcommand's name are given the default one."""
    parser.epilog = f"Without a COMMAND, the arguments go to `{parser.prog} {default}`."
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = list(args or [])
        if not args or (args[0] not in subcommands.choices and args[0] not in ("-h", "--help")):
            args.insert(0, default)
        return parse(args, namespace)

    parser.parse_known_args = parse_known_args
