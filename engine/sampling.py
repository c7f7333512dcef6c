"""Logits processors and token selectors (docs/architecture.md, "Decoding"), numpy only, Chameleon style.

A processor maps float32 logits (B, V) to logits; a selector maps logits (N, V) to token ids (N,).
Guidance processors (`ClassifierFreeGuidance`, `ContrastiveTopK`) take the guided batch laid out as
[cond rows; uncond rows] (2N, V) and return the N combined rows; everything after them sees (N, V).
A typical image chain, applied by `engine.decode` after its own modality mask:

    Sampler([ClassifierFreeGuidance(3.0), Temperature(1.0), TopP(0.9)], Multinomial(rng))

Masked entries are -inf throughout; every processor keeps -inf where its input had -inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.vocab import Vocab

NEG_INF = np.float32(-np.inf)
# CM3Leon guides at 3-6; far beyond that every step is the argmax of l_c - l_u, and float32 logits overflow.
MAX_CFG_SCALE = 100.0


class LogitsProcessor(Protocol):
    def __call__(self, logits: np.ndarray) -> np.ndarray: ...


class TokenSelector(Protocol):
    def __call__(self, logits: np.ndarray) -> np.ndarray: ...


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax that tolerates -inf entries (not whole -inf rows)."""
    m = logits.max(axis=-1, keepdims=True)
    z = logits - m
    with np.errstate(divide="ignore"):
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _halves(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if logits.shape[0] % 2:
        raise ValueError(f"guidance needs [cond; uncond] rows, got an odd batch of {logits.shape[0]}")
    n = logits.shape[0] // 2
    return logits[:n], logits[n:]


# -- processors ------------------------------------------------------------------------------------
class AllowOnly:
    """Set every id outside the given half-open ranges [lo, hi) to -inf."""

    def __init__(self, vocab_size: int, ranges: Sequence[tuple[int, int]]):
        self.allowed = np.zeros(vocab_size, dtype=bool)
        for lo, hi in ranges:
            if not 0 <= lo < hi <= vocab_size:
                raise ValueError(f"range [{lo}, {hi}) outside the vocabulary of {vocab_size}")
            self.allowed[lo:hi] = True

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return np.where(self.allowed, logits, NEG_INF).astype(np.float32, copy=False)


def modality_mask(vocab: Vocab, modality: str) -> AllowOnly:
    """The span mask: image ids inside an image span, seg ids inside a seg span, text otherwise.

    Text spans allow the text ids plus <eos> and <break> (the two ways a text span ends); <pad>,
    the CM3 sentinels and <infill> are never generated.
    """
    if modality == "image":
        return AllowOnly(vocab.size, [(vocab.image_offset, vocab.seg_offset)])
    if modality == "seg":
        return AllowOnly(vocab.size, [(vocab.seg_offset, vocab.size)])
    if modality == "text":
        return AllowOnly(vocab.size, [(vocab.eos, vocab.brk + 1), (vocab.text_offset, vocab.image_offset)])
    raise ValueError(f"unknown modality {modality!r} (expected image, seg or text)")


@dataclass
class ClassifierFreeGuidance:
    """l = l_u + s (l_c - l_u) over the [cond; uncond] halves (CM3Leon eq. 2)."""

    scale: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.scale <= MAX_CFG_SCALE:  # nan fails too
            raise ValueError(f"cfg scale must be in [0, {MAX_CFG_SCALE:g}], got {self.scale}")

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        cond, uncond = _halves(logits)
        with np.errstate(invalid="ignore"):
            out = uncond + np.float32(self.scale) * (cond - uncond)
        # -inf - -inf is nan: a token masked in the conditional stream stays masked
        return np.where(np.isneginf(cond), NEG_INF, out).astype(np.float32, copy=False)


@dataclass
class ContrastiveTopK:
    """CD-K (CM3Leon eq. 3): keep tokens with p_c >= alpha * (k-th largest p_c), score them by
    log p_c - log p_u, everything else -inf. Takes the [cond; uncond] halves."""

    alpha: float
    k: int

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"CD-K alpha must be in (0, 1], got {self.alpha}")
        if self.k < 1:
            raise ValueError(f"CD-K k must be >= 1, got {self.k}")

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        cond, uncond = _halves(logits)
        logp_c, logp_u = log_softmax(cond), log_softmax(uncond)
        k = min(self.k, cond.shape[-1])
        # k-th largest log p_c, (N, 1); np.sort beats np.partition on rows full of -inf
        kth = np.sort(logp_c, axis=-1)[:, [-k]]
        # >= up to float32 rounding: a token exactly at alpha * kth belongs to the head set
        keep = (logp_c >= kth + np.log(self.alpha) - 1e-5) & np.isfinite(logp_c)
        with np.errstate(invalid="ignore"):
            score = logp_c - logp_u
        return np.where(keep, score, NEG_INF).astype(np.float32, copy=False)


@dataclass
class Temperature:
    temperature: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return (logits / np.float32(self.temperature)).astype(np.float32, copy=False)


@dataclass
class TopP:
    """Nucleus filter: keep the smallest set of most likely tokens whose mass reaches p."""

    p: float

    def __post_init__(self) -> None:
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"top-p must be in (0, 1], got {self.p}")

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        if self.p >= 1.0:
            return logits
        probs = softmax(logits.astype(np.float64))
        ranked = -np.sort(-probs, axis=-1)
        inside = (np.cumsum(ranked, axis=-1) - ranked) < self.p  # the top token has mass 0 before it
        # the nucleus is every token at least as likely as its least likely member (ties stay together)
        smallest = ranked[np.arange(len(ranked)), inside.sum(axis=-1) - 1][:, None]
        return np.where(probs >= smallest, logits, NEG_INF).astype(np.float32, copy=False)


# -- selectors -------------------------------------------------------------------------------------
class Argmax:
    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return logits.argmax(axis=-1).astype(np.int64)


class Multinomial:
    """Sample from softmax(logits) by inverse CDF with one uniform per row from a seeded generator,
    so the same logits and seed give the same tokens on every machine."""

    def __init__(self, rng: np.random.Generator | int):
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        weights = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
        cdf = np.cumsum(weights, axis=-1)
        u = self.rng.random((logits.shape[0], 1)) * cdf[:, -1:]
        # the first id whose cdf exceeds u: a zero-weight id never does (its cdf equals its neighbour's)
        ids = (cdf <= u).sum(axis=-1)
        # ... unless u rounds up to the total: then take the last id of non-zero weight
        last = cdf.shape[1] - 1 - np.argmax(weights[:, ::-1] > 0, axis=-1)
        return np.minimum(ids, last).astype(np.int64)


@dataclass
class Sampler:
    """Processors then a selector: logits -> token ids. A Sampler is itself a selector."""

    processors: Sequence[LogitsProcessor]
    selector: TokenSelector

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        for p in self.processors:
            logits = p(logits)
        return self.selector(logits)


class Mixture:
    """Per step, pick one of several samplers with the given probabilities from a seeded generator.
    CM3Leon's "½ TopP + ½ CD-K": Mixture([topp_sampler, cdk_sampler], rng)."""

    def __init__(self, samplers: Sequence[TokenSelector], rng: np.random.Generator | int,
                 probs: Sequence[float] | None = None):
        self.samplers = list(samplers)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        n = len(self.samplers)
        p = np.full(n, 1.0 / n) if probs is None else np.asarray(probs, float)
        if p.shape != (n,) or (p < 0).any() or not np.isclose(p.sum(), 1.0):
            raise ValueError("mixture probabilities: one non-negative weight per sampler, summing to 1")
        self.cdf = np.cumsum(p)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        i = min(int(np.searchsorted(self.cdf, self.rng.random(), side="right")), len(self.samplers) - 1)
        return self.samplers[i](logits)


def guided_sampler(
    rng: np.random.Generator | int,
    cfg_scale: float | None = 3.0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    cdk: tuple[float, float] | None = None,
) -> Sampler | Mixture:
    """The standard chains. With `cfg_scale=None` the batch is not guided (N rows, no uncond half).
    With `cdk=(alpha, k)` and CFG on, half the steps use CFG + temperature + top-p and half CD-K
    (CM3Leon's best setting); both draw from the same generator."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    temp, nucleus = Temperature(temperature), TopP(top_p)  # each checks its value, used or not
    tail: list[LogitsProcessor] = []
    if temperature != 1.0:
        tail.append(temp)
    if top_p < 1.0:
        tail.append(nucleus)
    guide = [ClassifierFreeGuidance(cfg_scale)] if cfg_scale is not None else []
    top_p_sampler = Sampler([*guide, *tail], Multinomial(rng))
    if cdk is None:
        return top_p_sampler
    if cfg_scale is None:
        raise ValueError("CD-K contrasts the conditional and unconditional streams: it needs guidance on")
    cdk_sampler = Sampler([ContrastiveTopK(float(cdk[0]), int(cdk[1]))], Multinomial(rng))
    return Mixture([top_p_sampler, cdk_sampler], rng)
