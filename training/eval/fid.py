"""Fréchet distance between two sets of feature vectors (FID when the features are the judge's).

FID = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)). The trace of the matrix square root is
computed from the symmetric PSD form S_a^(1/2) S_b S_a^(1/2), whose eigenvalues are those of S_a S_b,
so a symmetric eigensolver suffices (no complex round-off to strip).

The linear algebra runs in torch on one thread: the matrices are at most a few hundred wide, and a
multi-threaded BLAS on two cores shared with other jobs was measured 50-200x slower (spin-waiting).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from engine.errors import BadInputError


@contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def statistics(features: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of (N, D) features, N >= 2, as float64 tensors."""
    x = torch.as_tensor(np.asarray(features, np.float64))
    if x.ndim != 2 or len(x) < 2:
        raise BadInputError(f"FID needs (N, D) features with N >= 2, got shape {tuple(x.shape)}")
    mu = x.mean(dim=0)
    centred = x - mu
    with one_thread():
        return mu, centred.T @ centred / (len(x) - 1)


def _tensor(m) -> torch.Tensor:
    return torch.as_tensor(np.asarray(m, np.float64))


def _sym_eig(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.linalg.eigh((m + m.T) / 2)


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    mu_a, cov_a, mu_b, cov_b = map(_tensor, (mu_a, cov_a, mu_b, cov_b))
    with one_thread():
        w, v = _sym_eig(cov_a)
        root_a = (v * w.clamp(min=0).sqrt()) @ v.T
        trace_sqrt = _sym_eig(root_a @ cov_b @ root_a)[0].clamp(min=0).sqrt().sum()
        d = ((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(float(d), 0.0)  # tiny negative values are round-off


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets of the same dimension."""
    a, b = np.asarray(features_a), np.asarray(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise BadInputError(f"FID needs two (N, D) feature sets of one D, got {a.shape} and {b.shape}")
    return frechet_distance(*statistics(a), *statistics(b))
