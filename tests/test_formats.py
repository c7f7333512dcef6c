import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import formats as F
from engine.errors import BadInputError
from engine.vocab import Vocab

V = Vocab(text_size=40, image_size=32, seg_size=5, image_grid=(2, 3))
SETTINGS = settings(max_examples=100, deadline=None)

content = st.integers(V.num_specials, V.size - 1)


@st.composite
def docs(draw, min_content=1):
    """Any mix of text/image/seg ids split by <break>, with at least one content token."""
    segments = draw(st.lists(st.lists(content, max_size=12), min_size=1, max_size=6))
    if sum(map(len, segments)) < min_content:
        segments[0] = segments[0] + draw(st.lists(content, min_size=min_content, max_size=min_content))
    out: list[int] = []
    for i, seg in enumerate(segments):
        out += ([V.brk] if i else []) + seg
    return np.asarray(out, dtype=np.int64)


def head_and_tail(masked):
    at = int(np.flatnonzero(masked == V.infill)[0])
    return masked[:at], masked[at + 1 :]


@SETTINGS
@given(docs(), st.integers(0, 2**32 - 1))
def test_recover_inverts_cm3_transform_which_is_deterministic_for_a_seed(doc, seed):
    masked = F.cm3_transform(V, doc, np.random.default_rng(seed))
    assert np.array_equal(F.recover(V, masked), doc)
    assert np.array_equal(F.cm3_transform(V, doc, np.random.default_rng(seed)), masked)


@SETTINGS
@given(docs(), st.integers(0, 2**32 - 1))
def test_spans_are_inside_segments_and_never_touch_a_break(doc, seed):
    spans = F.sample_spans(V, doc, np.random.default_rng(seed))
    assert 1 <= len(spans) <= 16
    covered = np.zeros(doc.size, dtype=int)
    for a, b in spans:
        assert 0 <= a < b <= doc.size
        assert not np.any(doc[a:b] < V.num_specials)  # no <break> (nor any special) inside a span
        covered[a:b] += 1
    assert covered.max() <= 1  # non-overlapping
    assert spans == sorted(spans)


@SETTINGS
@given(docs(), st.integers(0, 2**32 - 1))
def test_sentinels_in_order_and_weights_zero_on_sentinels(doc, seed):
    masked = F.cm3_transform(V, doc, np.random.default_rng(seed))
    head, tail = head_and_tail(masked)
    n = int(np.sum(V.is_mask(head)))
    assert 1 <= n <= 16
    assert list(head[V.is_mask(head)]) == [V.mask(i) for i in range(n)]
    assert list(tail[V.is_mask(tail)]) == [V.mask(i) for i in range(n)]
    assert tail[0] == V.mask(0)
    # the <break> tokens all survive in place, in the same number
    assert np.sum(head == V.brk) == np.sum(doc == V.brk) and not np.any(tail == V.brk)
    w = F.loss_weights(V, masked)
    assert w.dtype == np.float32 and w.shape == masked.shape
    assert np.all(w[V.is_mask(masked)] == 0) and np.all(w[~V.is_mask(masked)] == 1)


def test_span_count_follows_clamped_poisson():
    doc = np.arange(V.text_offset, V.text_offset + 40).repeat(10)  # long: every n fits
    counts = np.array([len(F.sample_spans(V, doc, np.random.default_rng(s))) for s in range(2000)])
    # clamp(Poisson(1), 1, 16): P(1) = e^-1 + e^-1 = 0.736, P(2) = 0.184, P(3) = 0.061
    assert abs(np.mean(counts == 1) - 0.736) < 0.04
    assert abs(np.mean(counts == 2) - 0.184) < 0.03
    assert counts.min() == 1 and counts.max() <= 16


def test_explicit_n_and_capped_by_content():
    doc = np.array([V.text_offset, V.brk, V.text_offset + 1])
    spans = F.sample_spans(V, doc, np.random.default_rng(0), n=16)
    assert spans == [(0, 1), (2, 3)]  # only two content tokens, so only two spans fit
    with pytest.raises(BadInputError, match="1..16"):
        F.sample_spans(V, doc, np.random.default_rng(0), n=17)


def test_bad_documents_and_sequences():
    rng = np.random.default_rng(0)
    with pytest.raises(BadInputError, match="nothing|no text"):
        F.cm3_transform(V, np.array([V.brk, V.brk]), rng)
    with pytest.raises(BadInputError, match="already contains"):
        F.cm3_transform(V, np.array([V.text_offset, V.mask(0)]), rng)
    t = V.text_offset
    with pytest.raises(BadInputError, match="do not match"):
        F.recover(V, np.array([t, V.mask(1), V.infill, V.mask(1), t]))
    with pytest.raises(BadInputError, match="no <infill>"):
        F.recover(V, np.array([t, V.mask(0)]))
    assert np.array_equal(F.recover(V, np.array([t, t + 1])), [t, t + 1])


def test_apply_spans_matches_the_documented_layout():
    t = V.text_offset
    doc = np.array([t, t + 1, t + 2, V.brk, t + 3, t + 4])
    out = F.apply_spans(V, doc, [(1, 2), (4, 6)])
    m0, m1 = V.mask(0), V.mask(1)
    assert list(out) == [t, m0, t + 2, V.brk, m1, V.infill, m0, t + 1, m1, t + 3, t + 4]
    with pytest.raises(BadInputError, match="special"):
        F.apply_spans(V, doc, [(2, 5)])


def image(seed=0):
    return V.image_ids(np.random.default_rng(seed).integers(0, V.image_size, V.image_tokens_per_image))


def test_documents_and_sequences():
    text, img = V.text_ids([3, 4, 5]), image()
    assert list(F.caption_image_doc(V, text, img)) == [*text, V.brk, *img]
    assert list(F.image_caption_doc(V, text, img)) == [*img, V.brk, *text]
    with pytest.raises(BadInputError, match="text token ids"):
        F.caption_image_doc(V, img, text)  # swapped arguments are caught
    with pytest.raises(BadInputError, match="exactly 6"):
        F.caption_image_doc(V, text, img[:-1])
    r1, r2, q = [V.text_offset], [V.text_offset + 1], [V.text_offset + 2]
    assert list(F.ra_sequence(V, [r1, r2], q)) == [V.eos, *r1, V.eos, *r2, V.eos, *q, V.eos]
    assert list(F.sequence(V, q)) == [V.eos, *q, V.eos]
    with pytest.raises(BadInputError, match="<eos>"):
        F.ra_sequence(V, [[V.eos]], q)


def test_prompts():
    text, img = V.text_ids([3, 4]), image()
    assert list(F.text_to_image_prompt(V, text)) == [V.eos, *text, V.brk]
    assert list(F.unconditional_image_prompt(V)) == [V.eos, V.mask(0), V.brk]
    assert list(F.caption_prompt(V, img)) == [V.eos, V.mask(0), V.brk, *img, V.infill, V.mask(0)]
    # the captioning prompt is what CM3 makes of `<eos> caption <break> image` when the span is the caption
    doc = F.caption_image_doc(V, text, img)
    full = F.sequence(V, F.apply_spans(V, doc, [(0, text.size)]))
    assert np.array_equal(full[: len(F.caption_prompt(V, img))], F.caption_prompt(V, img))


def test_parsing_generated_sequences():
    text, img = V.text_ids([3, 4]), image()
    head, stopped = F.take_until_stop(V, [*text, V.eos, 7])
    assert stopped and list(head) == list(text)
    assert list(F.generated_text_bpe(V, [*text, V.brk])) == [3, 4]
    assert not F.take_until_stop(V, text)[1]
    parts = F.split_parts(V, [V.eos, *text, V.brk, *img, V.brk, V.seg_offset, V.eos, V.mask(0), *text])
    assert [p.modality for p in parts] == ["text", "image", "seg", "mixed"]
    assert np.array_equal(parts[1].ids, img)
