"""A small learnable `SequenceSource` for tests and smoke runs (no tokenizer, no images needed).

Each row is a stream of short documents `<eos> a, a+s, a+2s, ...` (arithmetic progressions modulo the
token range, stride s in 1..4), with a sentinel (id 3, like `<mask:0>`) dropped in at random places.
After two tokens of a document the rest is predictable; predicting a sentinel carries loss weight 0,
as the CM3 objective requires. Rows are a pure function of (seed, split, step, global row).
"""

from __future__ import annotations

import zlib

import numpy as np

from engine.errors import BadInputError
from training.sources import register_source

EOS, SENTINEL, FIRST = 1, 3, 20  # ids below FIRST are specials, as in engine.vocab


class SyntheticSource:
    def __init__(
        self,
        seq_len: int,
        vocab_size: int = 256,
        seed: int = 0,
        split: str = "train",
        sentinel_rate: float = 0.02,
    ):
        if vocab_size <= FIRST + 8:
            raise BadInputError(f"synthetic vocab_size must exceed {FIRST + 8}, got {vocab_size}")
        self.seq_len, self.vocab_size, self.seed = seq_len, vocab_size, seed
        self.split_code = zlib.crc32(split.encode())  # different splits, different streams
        self.sentinel_rate = sentinel_rate

    def row(self, step: int, global_row: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.split_code, step, global_row])
        span = self.vocab_size - FIRST
        parts, n = [], 0
        while n < self.seq_len + 1:
            start, stride, length = rng.integers(span), rng.integers(1, 5), rng.integers(8, 33)
            doc = (start + stride * np.arange(length)) % span + FIRST
            parts.append(np.concatenate([[EOS], doc]))
            n += length + 1
        row = np.concatenate(parts)
        sentinels = np.flatnonzero(rng.random(row.size) < self.sentinel_rate)
        return np.insert(row, sentinels, SENTINEL)[: self.seq_len + 1].astype(np.int64)

    def batch(self, step: int, micro_step: int, rank: int, world_size: int, batch_size: int):
        first = (micro_step * world_size + rank) * batch_size
        rows = np.stack([self.row(step, first + i) for i in range(batch_size)])
        inputs, targets = rows[:, :-1], rows[:, 1:]
        weights = (targets != SENTINEL).astype(np.float32)
        return np.ascontiguousarray(inputs), np.ascontiguousarray(targets), weights


@register_source("synthetic")
def synthetic_source(split: str, seq_len: int, seed: int, **params) -> SyntheticSource:
    return SyntheticSource(seq_len=seq_len, seed=seed, split=split, **params)
