"""Driving engine/decode.py's span generators to their end, as an engine job does (engine/tasks.py)."""

from __future__ import annotations

from collections import deque

import numpy as np

from engine.decode import Step, image_span, seg_span, start, text_results, text_span


def last(steps) -> Step:
    """Run a span to its end; its last step holds every token."""
    return deque(steps, maxlen=1)[0]


def image_codes(backend, cond, uncond, n, vocab, sampler) -> np.ndarray:
    """n candidate images for one prompt: codes (n, H, W)."""
    step = last(image_span(start(backend, cond, uncond, n), vocab, sampler))
    return vocab.to_codes(step.tokens).reshape(n, *vocab.image_grid)


def seg_classes(backend, cond, vocab, sampler) -> np.ndarray:
    step = last(seg_span(start(backend, cond), vocab, sampler))
    return vocab.to_classes(step.tokens).reshape(vocab.image_grid)


def texts(backend, cond, n, vocab, sampler, max_tokens: int) -> list[np.ndarray]:
    step = last(text_span(start(backend, cond, None, n), vocab, sampler, max_tokens))
    return text_results(step.tokens, vocab)
