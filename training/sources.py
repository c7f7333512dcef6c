"""Registry of training data sources, keyed by the `[data] kind` of a recipe.

A source module registers a factory with `@register_source("name")`; the trainer calls
`build_source(cfg.data, split, seq_len, seed)` and never needs editing for a new kind of data.
A factory is called as `factory(split=..., seq_len=..., seed=..., **params)` where params are the other
keys of the recipe's [data] section, and returns a `SequenceSource`.

To add a module, list it in SOURCE_MODULES (one line); modules not written yet are skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from engine.errors import BadInputError

SOURCE_MODULES: tuple[str, ...] = (
    "training.data.synthetic",
    "training.data.sequences",
    "training.data.sft_source",
)


@runtime_checkable
class SequenceSource(Protocol):
    """Batches as a pure function of their arguments (and the source's seed), so that a resumed or
    re-sharded run sees exactly the same data without saving any data state.

    Convention for exact data-parallel equivalence: row i of (step, micro_step, rank, world_size) is the
    global row ((micro_step * world_size + rank) * batch_size + i) of the step, drawn from (seed, step, row)
    alone; then any split of one global batch over ranks and micro-steps covers the same rows.
    Optional attributes: `vocab_size` sets the model's vocabulary; `vocab` (an engine.vocab.Vocab) is
    written into the exported config.json for the bundle."""

    seq_len: int

    def batch(
        self, step: int, micro_step: int, rank: int, world_size: int, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """inputs (B, T) int64, targets (B, T) int64, loss weights (B, T) float32."""
        ...


_FACTORIES: dict[str, Callable[..., SequenceSource]] = {}


def register_source(name: str) -> Callable:
    def decorate(factory: Callable[..., SequenceSource]) -> Callable[..., SequenceSource]:
        _FACTORIES[name] = factory
        return factory

    return decorate


def _import_source_modules() -> None:
    for module in SOURCE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but one of its imports is missing: a real error
                raise


def source_kinds() -> list[str]:
    _import_source_modules()
    return sorted(_FACTORIES)


def build_source(data, split: str, seq_len: int, seed: int) -> SequenceSource:
    """data: a config.DataSection (kind + params)."""
    kinds = source_kinds()
    if data.kind not in _FACTORIES:
        raise BadInputError(f"unknown data kind {data.kind!r}; registered: {', '.join(kinds)}")
    try:
        source = _FACTORIES[data.kind](split=split, seq_len=seq_len, seed=seed, **data.params)
    except TypeError as exc:
        raise BadInputError(f"bad [data] parameters for kind {data.kind!r}: {exc}") from None
    if source.seq_len != seq_len:
        raise BadInputError(f"data source {data.kind!r} gives sequences of {source.seq_len}, not {seq_len}")
    return source
