"""Training-side subcommands of `tessera`: data, train, eval, index, bench, model, export."""

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
)


def register(sub: argparse._SubParsersAction) -> None:
    groups = {"top": sub}
    for name, help_text in GROUPS.items():
        parser = sub.add_parser(name, help=help_text)
        groups[name] = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(groups)
