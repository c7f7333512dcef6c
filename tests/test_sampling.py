"""Logits processors and selectors on hand-made logits (engine/sampling.py)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.sampling import (
    AllowOnly,
    Argmax,
    ClassifierFreeGuidance,
    ContrastiveTopK,
    Mixture,
    Multinomial,
    Sampler,
    Temperature,
    TopP,
    guided_sampler,
    modality_mask,
)
from engine.vocab import Vocab

NEG = -np.inf
VOCAB = Vocab(text_size=10, image_size=6, seg_size=3, image_grid=(2, 2))


def logp(*p: float) -> np.ndarray:
    return np.log(np.asarray([p], dtype=np.float32))


def test_allow_only_keeps_exactly_the_ranges():
    out = AllowOnly(6, [(1, 3), (5, 6)])(np.zeros((2, 6), np.float32))
    assert np.isneginf(out[:, [0, 3, 4]]).all() and (out[:, [1, 2, 5]] == 0).all()
    with pytest.raises(ValueError):
        AllowOnly(6, [(4, 7)])


@pytest.mark.parametrize("modality,allowed", [
    ("image", lambda v, i: VOCAB.is_image(i)),
    ("seg", lambda v, i: VOCAB.is_seg(i)),
    ("text", lambda v, i: VOCAB.is_text(i) or i in (v.eos, v.brk)),
])
def test_modality_mask(modality, allowed):
    out = modality_mask(VOCAB, modality)(np.zeros((1, VOCAB.size), np.float32))[0]
    expected = np.array([bool(allowed(VOCAB, i)) for i in range(VOCAB.size)])
    np.testing.assert_array_equal(np.isfinite(out), expected)
    # text never generates <pad>, a CM3 sentinel or <infill>
    assert not np.isfinite(out[[VOCAB.pad, VOCAB.mask(0), VOCAB.infill]]).any()


def test_cfg_combines_halves_and_keeps_masked_tokens_masked():
    cond = np.array([[1.0, 2.0, 3.0, NEG]], np.float32)
    uncond = np.array([[0.0, 1.0, 1.0, NEG]], np.float32)
    out = ClassifierFreeGuidance(2.0)(np.concatenate([cond, uncond]))
    np.testing.assert_allclose(out[0, :3], [2.0, 3.0, 5.0])  # l_u + s (l_c - l_u)
    assert out.shape == (1, 4) and np.isneginf(out[0, 3])  # no NaN from -inf - -inf
    scale1 = ClassifierFreeGuidance(1.0)(np.concatenate([cond, uncond]))
    np.testing.assert_allclose(scale1[0, :3], cond[0, :3])
    with pytest.raises(ValueError, match="odd"):
        ClassifierFreeGuidance(2.0)(np.zeros((3, 4), np.float32))


def test_contrastive_top_k_head_set_and_scores():
    cond = logp(0.5, 0.3, 0.15, 0.05)
    uncond = logp(0.25, 0.25, 0.25, 0.25)
    both = np.concatenate([cond, uncond])
    # k=2: 2nd largest p_c = 0.3, alpha 0.5 -> keep p_c >= 0.15 (tokens 0, 1, 2)
    out = ContrastiveTopK(alpha=0.5, k=2)(both)[0]
    np.testing.assert_allclose(out[:3], np.log([0.5 / 0.25, 0.3 / 0.25, 0.15 / 0.25]), rtol=1e-5)
    assert np.isneginf(out[3])
    # k=1 is the original max-based CD: keep p_c >= 0.25
    out = ContrastiveTopK(alpha=0.5, k=1)(both)[0]
    assert np.isfinite(out[:2]).all() and np.isneginf(out[2:]).all()
    # the score prefers what the condition adds: token 1 beats token 0 when uncond already likes 0
    out = ContrastiveTopK(alpha=0.1, k=2)(np.concatenate([cond, logp(0.7, 0.1, 0.1, 0.1)]))[0]
    assert out.argmax() == 1


def test_contrastive_top_k_never_admits_masked_tokens():
    cond = np.array([[0.0, 1.0, NEG, NEG]], np.float32)
    out = ContrastiveTopK(alpha=1e-3, k=10)(np.concatenate([cond, cond]))[0]  # k beyond the allowed ids
    assert np.isfinite(out[:2]).all() and np.isneginf(out[2:]).all()
    with pytest.raises(ValueError):
        ContrastiveTopK(alpha=0.0, k=1)


def test_temperature_and_top_p():
    x = logp(0.5, 0.3, 0.15, 0.05)
    np.testing.assert_allclose(Temperature(0.5)(x), 2 * x)
    with pytest.raises(ValueError):
        Temperature(0.0)
    keep = lambda p: np.isfinite(TopP(p)(x)[0])  # noqa: E731
    np.testing.assert_array_equal(keep(0.8), [True, True, False, False])  # 0.5 + 0.3 reaches 0.8
    np.testing.assert_array_equal(keep(0.81), [True, True, True, False])
    np.testing.assert_array_equal(keep(0.01), [True, False, False, False])  # the top token always stays
    np.testing.assert_array_equal(keep(1.0), [True] * 4)
    kept = TopP(0.81)(x)[0]
    np.testing.assert_allclose(kept[:3], x[0, :3])  # survivors keep their logits


def test_argmax_and_sampler_chain():
    x = np.array([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]], np.float32)
    np.testing.assert_array_equal(Argmax()(x), [1, 0])
    both = np.concatenate([x, np.zeros_like(x)])
    np.testing.assert_array_equal(Sampler([ClassifierFreeGuidance(2.0)], Argmax())(both), [1, 0])


def test_multinomial_is_seeded_and_matches_the_distribution():
    probs = np.array([0.5, 0.3, 0.2, 0.0], np.float32)
    logits = np.tile(np.log(probs[:3]).tolist() + [NEG], (20000, 1)).astype(np.float32)
    a, b = Multinomial(7)(logits), Multinomial(7)(logits)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, Multinomial(8)(logits))
    freq = np.bincount(a, minlength=4) / len(a)
    np.testing.assert_allclose(freq, probs, atol=0.015)
    assert freq[3] == 0  # a -inf logit is never drawn


def test_multinomial_edge_of_the_cdf_never_picks_a_masked_token():
    class One:  # a generator whose uniform is the top of [0, 1)
        def random(self, shape):
            return np.full(shape, np.nextafter(1.0, 0.0))

    sel = Multinomial(np.random.default_rng(0))
    sel.rng = One()
    assert sel(np.array([[0.0, 0.0, NEG, NEG]], np.float32))[0] == 1


def test_mixture_uses_both_samplers_deterministically():
    pick0 = Sampler([], lambda x: np.zeros(len(x), np.int64))
    pick1 = Sampler([], lambda x: np.ones(len(x), np.int64))
    x = np.zeros((1, 2), np.float32)
    mixtures = [Mixture([pick0, pick1], 3), Mixture([pick0, pick1], 3)]
    runs = [[int(m(x)[0]) for _ in range(400)] for m in mixtures]
    assert runs[0] == runs[1]
    assert 0.4 < np.mean(runs[0]) < 0.6
    always0 = Mixture([pick0, pick1], 0, probs=[1.0, 0.0])
    assert all(always0(x)[0] == 0 for _ in range(50))
    with pytest.raises(ValueError):
        Mixture([pick0, pick1], 0, probs=[0.7, 0.7])


def test_guided_sampler_configurations():
    cond = logp(0.1, 0.6, 0.3)
    uncond = logp(0.3, 0.3, 0.4)
    both = np.concatenate([np.tile(cond, (4, 1)), np.tile(uncond, (4, 1))])
    assert guided_sampler(0, cfg_scale=3.0)(both).shape == (4,)
    assert guided_sampler(0, cfg_scale=3.0, cdk=(0.1, 2))(both).shape == (4,)
    assert guided_sampler(0, cfg_scale=None)(np.tile(cond, (4, 1))).shape == (4,)
    with pytest.raises(ValueError, match="guidance"):
        guided_sampler(0, cfg_scale=None, cdk=(0.1, 2))
    a = [guided_sampler(5, cfg_scale=3.0, top_p=0.9, cdk=(0.1, 2))(both) for _ in range(2)]
    np.testing.assert_array_equal(*a)
