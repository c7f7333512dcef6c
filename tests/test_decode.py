"""Decoding loops (engine/decode.py) on the tiny bundle's ONNX backend."""

from __future__ import annotations

import numpy as np
import pytest
from spans import image_codes, seg_classes, texts

from engine.bundle import Bundle
from engine.decode import image_span, left_pad, start, text_span
from engine.errors import BadInputError
from engine.formats import text_to_image_prompt, unconditional_image_prompt
from engine.sampling import Argmax, ClassifierFreeGuidance, Multinomial, Sampler, guided_sampler


class Counting:
    """A backend wrapper counting decode calls."""

    def __init__(self, backend):
        self.backend, self.decodes = backend, 0
        self.vocab_size, self.max_len = backend.vocab_size, backend.max_len

    def prefill(self, ids, n_pad=None):
        return self.backend.prefill(ids, n_pad)

    def decode(self, ids, state):
        self.decodes += 1
        return self.backend.decode(ids, state)

    def reorder(self, state, index):
        return self.backend.reorder(state, index)


@pytest.fixture(scope="module")
def env(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    v = b.vocab
    cond = text_to_image_prompt(v, v.text_ids([40, 41, 42, 43, 44]))
    return Counting(b.backend("cpu", threads=1)), v, cond, unconditional_image_prompt(v)


def test_left_pad():
    ids, n_pad = left_pad([np.array([5, 6, 7]), np.array([9])], pad_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [0, 0, 9]])
    np.testing.assert_array_equal(n_pad, [0, 2])
    with pytest.raises(BadInputError):
        left_pad([np.array([1]), np.array([], np.int64)])


def test_image_span_is_exactly_the_grid_one_step_per_token(env):
    backend, v, cond, uncond = env
    h, w = v.image_grid
    steps = [(s.done, s.tokens.shape) for s in image_span(start(backend, cond, uncond, 3), v,
                                                           guided_sampler(0, 3.0))]
    assert steps == [(i, (3, i)) for i in range(1, h * w + 1)]
    codes = image_codes(backend, cond, uncond, 3, v, guided_sampler(0, 3.0))
    assert codes.shape == (3, h, w) and codes.min() >= 0 and codes.max() < v.image_size


def test_decode_calls_one_per_token_but_the_last(env):
    backend, v, cond, uncond = env
    backend.decodes = 0
    image_codes(backend, cond, uncond, 2, v, guided_sampler(0, 3.0))
    assert backend.decodes == v.image_tokens_per_image - 1  # the span's last token needs no logits


def test_guidance_layout_cond_and_uncond_rows(env):
    """Scale 1 is the conditional stream alone, scale 0 the unconditional one: so the batch really
    holds [cond; uncond] rows of the right prompts."""
    backend, v, cond, uncond = env
    greedy = lambda s: Sampler([ClassifierFreeGuidance(s)], Argmax())  # noqa: E731
    alone_c = image_codes(backend, cond, None, 2, v, Argmax())
    alone_u = image_codes(backend, uncond, None, 2, v, Argmax())
    np.testing.assert_array_equal(image_codes(backend, cond, uncond, 2, v, greedy(1.0)), alone_c)
    np.testing.assert_array_equal(image_codes(backend, cond, uncond, 2, v, greedy(0.0)), alone_u)
    assert not np.array_equal(alone_c, alone_u)


def test_candidates_are_seeded_and_independent(env):
    backend, v, cond, uncond = env
    run = lambda seed: image_codes(backend, cond, uncond, 4, v, guided_sampler(seed, 3.0))  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({row.tobytes() for row in a}) > 1  # candidates of one batch differ
    greedy = Sampler([ClassifierFreeGuidance(3.0)], Argmax())
    greedy = image_codes(backend, cond, uncond, 3, v, greedy)
    assert (greedy == greedy[0]).all()  # and are identical when decoding is deterministic


def test_cd_k_mixture_runs_in_the_loop(env):
    backend, v, cond, uncond = env
    sampler = guided_sampler(0, 3.0, top_p=0.9, cdk=(0.1, 5))
    codes = image_codes(backend, cond, uncond, 2, v, sampler)
    assert codes.shape == (2, *v.image_grid)


def test_nothing_runs_ahead_of_the_consumer(env):
    """A caller that stops reading stops decoding: step k has run k - 1 decode calls, no more."""
    backend, v, cond, uncond = env
    backend.decodes = 0
    steps = image_span(start(backend, cond, uncond, 2), v, guided_sampler(0, 3.0))
    for k in range(1, 6):
        assert next(steps).done == k and backend.decodes == k - 1
    steps.close()
    assert backend.decodes == 4


def test_the_generator_api_yields_every_step(env):
    backend, v, cond, uncond = env
    steps = list(image_span(start(backend, cond, uncond, 2), v, guided_sampler(0, 3.0)))
    assert [s.done for s in steps] == list(range(1, v.image_tokens_per_image + 1))
    assert steps[-1].all_finished and not steps[0].finished.any()
    assert v.is_image(steps[-1].tokens).all()


def test_segmentation_span(env):
    backend, v, cond, _ = env
    classes = seg_classes(backend, cond, v, Multinomial(0))
    assert classes.shape == v.image_grid and classes.min() >= 0 and classes.max() < v.seg_size


def test_text_span_stops_per_candidate(env):
    backend, v, cond, _ = env
    out = texts(backend, cond, 3, v, Multinomial(3), max_tokens=12)
    assert len(out) == 3
    for t in out:
        assert len(t) <= 12 and v.is_text(t).all()
    # a stop id forced at the first step ends every candidate at once
    force_eos = Sampler([lambda x: np.where(np.arange(x.shape[1]) == v.eos, x, -np.inf)], Argmax())
    steps = list(text_span(start(backend, cond, None, 2), v, force_eos, max_tokens=10))
    assert len(steps) == 1 and steps[0].all_finished and (steps[0].tokens == v.eos).all()


def test_bad_requests(env):
    backend, v, cond, uncond = env
    with pytest.raises(BadInputError, match="candidates"):
        start(backend, cond, uncond, 0)
    long = np.full(backend.max_len, v.text_offset)
    with pytest.raises(BadInputError, match="prompt"):
        image_codes(backend, long, uncond, 1, v, guided_sampler(0, 3.0))
    room = np.full(backend.max_len - 5, v.text_offset)  # fits, but not with a whole image after it
    with pytest.raises(BadInputError, match="room"):
        image_codes(backend, room, uncond, 1, v, guided_sampler(0, 3.0))
    with pytest.raises(ValueError, match="sampler returned"):  # guided batch, unguided sampler
        image_codes(backend, cond, uncond, 2, v, Argmax())


def test_decoding_is_driven_one_way():
    """Every public name of engine/decode.py is used by the product (engine, studio, training, bench),
    not only by tests: the span generators are the one way to drive decoding."""
    import ast
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    module = repo / "engine" / "decode.py"
    product = "\n".join(p.read_text() for d in ("engine", "app", "training", "bench")
                        for p in sorted((repo / d).rglob("*.py")))
    names = [n.name for n in ast.parse(module.read_text()).body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]
    unused = [n for n in names if len(re.findall(rf"\b{n}\b", product)) < 2]  # the definition alone
    assert names and unused == [], f"engine/decode.py names only tests use: {unused}"
