"""Per-modality decoding loops over a `Backend` (docs/architecture.md, "Decoding").

A `Stream` is a prefilled batch: N candidates of one conditional prompt, optionally followed by N
rows of the unconditional prompt (classifier-free guidance / CD-K run in the same batch). The span
functions are generators: each `next()` runs one decode step and yields a `Step`, so a caller
(an engine job, engine/tasks.py) can report progress, draw a preview after every finished row, and
stop between any two steps: the one way decoding is driven.

    stream = start(backend, cond_ids, uncond_ids, n=4)
    for step in image_span(stream, vocab, guided_sampler(seed, cfg_scale=3.0)):
        ...                         # step.tokens: (4, step.done) image ids so far
    codes = vocab.to_codes(step.tokens).reshape(4, *vocab.image_grid)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.backends import Backend
from engine.errors import BadInputError
from engine.sampling import AllowOnly, TokenSelector, modality_mask
from engine.vocab import Vocab


@dataclass
class Step:
    done: int  # tokens emitted per candidate in this span so far
    total: int  # span length (the maximum, for text)
    tokens: np.ndarray  # (n, done) vocab ids emitted so far
    finished: np.ndarray  # (n,) bool: the candidate's span ended (text: hit a stop id; image/seg: full)

    @property
    def all_finished(self) -> bool:
        return bool(self.finished.all())


class Stream:
    """A prefilled batch ready for decoding; rows [0, n) conditional, [n, 2n) unconditional if guided."""

    def __init__(self, backend: Backend, logits: np.ndarray, state: Any, n: int, guided: bool, length: int):
        self.backend, self.logits, self.state = backend, logits, state
        self.n, self.guided = n, guided
        self.length = length  # tokens in the longest row so far (prompt + generated)

    @property
    def batch(self) -> int:
        return 2 * self.n if self.guided else self.n

    def room(self) -> int:
        return self.backend.max_len - self.length

    def feed(self, tokens: np.ndarray) -> None:
        """Append one token per candidate (copied to its unconditional row) and compute next logits."""
        tokens = np.asarray(tokens, np.int64).reshape(self.n)
        if self.guided:
            tokens = np.concatenate([tokens, tokens])
        self.logits, self.state = self.backend.decode(tokens[:, None], self.state)
        self.length += 1


def left_pad(prompts: Sequence[np.ndarray], pad_id: int = Vocab.pad) -> tuple[np.ndarray, np.ndarray]:
    """Stack prompts of different lengths right-aligned: (ids (P, T), n_pad (P,))."""
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise BadInputError("a prompt is empty")
    t = max(lengths)
    ids = np.full((len(prompts), t), pad_id, np.int64)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):] = p
    return ids, np.asarray([t - n for n in lengths], np.int64)


def start(backend: Backend, cond: np.ndarray, uncond: np.ndarray | None = None, n: int = 1) -> Stream:
    """Prefill the conditional (and unconditional) prompt once each, then replicate to n rows each."""
    if n < 1:
        raise BadInputError(f"the number of candidates must be >= 1, got {n}")
    prompts = [np.asarray(cond, np.int64).reshape(-1)]
    if uncond is not None:
        prompts.append(np.asarray(uncond, np.int64).reshape(-1))
    ids, n_pad = left_pad(prompts)
    if ids.shape[1] >= backend.max_len:
        raise BadInputError(f"the prompt is {ids.shape[1]} tokens; this model reads at most "
                            f"{backend.max_len - 1}")
    logits, state = backend.prefill(ids, n_pad)
    index = np.repeat(np.arange(len(prompts)), n)  # [cond]*n + [uncond]*n
    return Stream(backend, logits[index], backend.reorder(state, index), n, uncond is not None, ids.shape[1])


def _fixed_span(stream: Stream, mask: AllowOnly, sampler: TokenSelector, length: int) -> Iterator[Step]:
    if stream.room() < length:
        raise BadInputError(f"the prompt leaves room for {stream.room()} tokens, the span needs {length}")
    out = np.zeros((stream.n, length), np.int64)
    for i in range(length):
        if i:  # the previous token is fed when the next one is asked for: a step is yielded as soon as
            stream.feed(out[:, i - 1])  # it is sampled, and nothing reads logits after the last one
        out[:, i] = _select(stream, mask, sampler)
        yield Step(i + 1, length, out[:, : i + 1], np.full(stream.n, i + 1 == length))


def _select(stream: Stream, mask: AllowOnly, sampler: TokenSelector) -> np.ndarray:
    tokens = np.asarray(sampler(mask(stream.logits)), np.int64)
    if tokens.shape != (stream.n,):
        raise ValueError(
            f"the sampler returned tokens of shape {tokens.shape} for {stream.n} candidates "
            "(a guided batch needs a guidance processor in the sampler, an unguided one none)"
        )
    return tokens


def image_span(stream: Stream, vocab: Vocab, sampler: TokenSelector) -> Iterator[Step]:
    """Exactly H*W image ids (the modality mask allows nothing else), then the span is closed."""
    return _fixed_span(stream, modality_mask(vocab, "image"), sampler, vocab.image_tokens_per_image)


def seg_span(stream: Stream, vocab: Vocab, sampler: TokenSelector) -> Iterator[Step]:
    """Exactly H*W segmentation class ids."""
    return _fixed_span(stream, modality_mask(vocab, "seg"), sampler, vocab.image_tokens_per_image)


def text_span(stream: Stream, vocab: Vocab, sampler: TokenSelector, max_tokens: int,
              stop_ids: Sequence[int] = (Vocab.eos, Vocab.brk)) -> Iterator[Step]:
    """Text ids until each candidate emits a stop id (kept as its last token) or max_tokens.
    Finished candidates keep decoding <pad> (ignored) until all are done."""
    max_tokens = min(max_tokens, stream.room())
    if max_tokens < 1:
        raise BadInputError("the prompt leaves no room for text in this model's context")
    stops = np.asarray(list(stop_ids), np.int64)
    ranges = [(vocab.text_offset, vocab.image_offset), *((int(s), int(s) + 1) for s in stops)]
    mask = AllowOnly(vocab.size, ranges)  # text, and the ids that end the span
    out = np.full((stream.n, max_tokens), vocab.pad, np.int64)
    finished = np.zeros(stream.n, bool)
    for i in range(max_tokens):
        if i:  # as in _fixed_span: feed the previous token only when the next one is asked for
            stream.feed(out[:, i - 1])
        out[:, i] = np.where(finished, vocab.pad, _select(stream, mask, sampler))
        finished |= np.isin(out[:, i], stops)
        last = finished.all() or i + 1 == max_tokens
        yield Step(i + 1, max_tokens, out[:, : i + 1], np.ones(stream.n, bool) if last else finished.copy())
        if last:
            return


def text_results(tokens: np.ndarray, vocab: Vocab) -> list[np.ndarray]:
    """Per candidate: the text ids before its stop id / padding."""
    return [row[: _first_non_text(row, vocab)] for row in tokens]


def _first_non_text(row: np.ndarray, vocab: Vocab) -> int:
    bad = np.flatnonzero(~vocab.is_text(row))
    return int(bad[0]) if bad.size else len(row)
