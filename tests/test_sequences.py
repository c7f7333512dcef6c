"""RA-CM3 sequences: the pre-tokenised corpus and the retrieval-augmented SequenceSource."""

from __future__ import annotations

import numpy as np
import pytest

from engine import formats
from engine.errors import BadInputError
from engine.memory import MemoryBank
from engine.retriever import normalize
from engine.vocab import Vocab
from training.data.corpus import Corpus, build_corpus
from training.data.sequences import RASequenceSource, precompute_neighbours

VOCAB = Vocab(text_size=50, image_size=32, seg_size=7, image_grid=(4, 4))


def make_corpus(n=60, seed=0, dim=8) -> Corpus:
    """Documents in 6 topics; text and codes random, embeddings clustered by topic."""
    rng = np.random.default_rng(seed)
    topics = normalize(rng.standard_normal((6, dim)))
    emb = normalize(topics[np.arange(n) % 6] + 0.5 * rng.standard_normal((n, dim)))
    text_ids = [rng.integers(0, 50, rng.integers(1, 12)) for _ in range(n)]
    has_image = np.ones(n, bool)
    has_image[-1] = False  # one text-only document
    return Corpus([f"doc {i}" for i in range(n)], text_ids, rng.integers(0, 32, (n, 16)).astype(np.int16),
                  np.ones(n, bool), has_image, emb.astype(np.float32),
                  normalize(emb + 0.1 * rng.standard_normal(emb.shape)).astype(np.float32), {"test": True})


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


@pytest.fixture(scope="module")
def bank(corpus):
    return MemoryBank.build(corpus.embeddings, corpus.table())


def source(corpus, bank, **kw):
    args = dict(seq_len=128, k=2, seed=7, cm3_prob=0.0)
    return RASequenceSource(corpus, bank, VOCAB, **{**args, **kw})


def split_docs(row: np.ndarray) -> list[np.ndarray]:
    """The documents of one row: the pieces between <eos> tokens, padding removed."""
    row = row[row != VOCAB.pad]
    cuts = np.flatnonzero(row == VOCAB.eos)
    return [row[a + 1:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def corpus_docs(corpus):
    """Every document of the corpus in both orders, as tuples, for lookup."""
    out = {}
    for i in range(len(corpus)):
        t = VOCAB.text_ids(corpus.text_ids[i])
        if not corpus.has_image[i]:
            out[tuple(t)] = i
            continue
        im = VOCAB.image_ids(corpus.codes[i])
        out[tuple(formats.caption_image_doc(VOCAB, t, im))] = i
        out[tuple(formats.image_caption_doc(VOCAB, t, im))] = i
    return out


def test_deterministic_and_sharding_invariant(corpus, bank):
    s = source(corpus, bank, cm3_prob=0.5)
    a = s.batch(3, 0, 0, 1, 4)
    b = source(corpus, bank, cm3_prob=0.5).batch(3, 0, 0, 1, 4)  # a fresh source: same rows
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], s.batch(4, 0, 0, 1, 4)[0])
    # the same global rows however the step is split over ranks and micro-steps
    assert np.array_equal(s.batch(3, 1, 0, 1, 2)[0], a[0][2:])
    assert np.array_equal(s.batch(3, 0, 1, 2, 2)[0], a[0][2:])
    inputs, targets, weights = a
    assert inputs.shape == targets.shape == weights.shape == (4, 128)
    assert inputs.dtype == targets.dtype == np.int64 and weights.dtype == np.float32
    assert np.array_equal(inputs[:, 1:], targets[:, :-1])


def test_layout_k_retrieved_docs_then_query(corpus, bank):
    s = source(corpus, bank, seq_len=256)
    lookup = corpus_docs(corpus)
    inputs, targets, weights = s.batch(0, 0, 0, 1, 16)
    rows = np.concatenate([inputs, targets[:, -1:]], axis=1)
    for row in rows:
        assert row[0] == VOCAB.eos
        docs = split_docs(row)
        assert len(docs) == 3  # R1 R2 Q
        ids = [lookup[tuple(d)] for d in docs]
        q = ids[-1]
        assert q not in ids[:-1]  # never retrieves itself
        assert set(ids[:-1]) <= set(s.neighbours[q].tolist())
        images_first = {bool(VOCAB.is_image(d[0])) for d in docs if corpus.has_image[lookup[tuple(d)]]}
        assert len(images_first) <= 1  # one order per row
    # weights: 0 exactly where the target is <pad> (no sentinels without CM3)
    assert np.array_equal(weights == 0, targets == VOCAB.pad)


def test_neighbours_follow_the_rules(corpus, bank):
    nb = precompute_neighbours(bank, corpus.query_embeddings, pool=4, exclude_self=True)
    assert nb.shape == (60, 4)
    for i, row in enumerate(nb):
        row = row[row >= 0]
        assert i not in row and len(row) >= 2
        sims = corpus.query_embeddings[i] @ corpus.embeddings[row].T
        assert (sims <= 0.9 + 1e-6).all()
        pair = corpus.embeddings[row] @ corpus.embeddings[row].T
        assert (pair[~np.eye(len(row), dtype=bool)] <= 0.9 + 1e-6).all()


def test_cm3_transform_and_sentinel_weights(corpus, bank):
    s = source(corpus, bank, cm3_prob=1.0, seq_len=300)
    inputs, targets, weights = s.batch(1, 0, 0, 1, 8)
    for row, t in zip(inputs, targets, strict=True):
        docs = split_docs(np.r_[row, t[-1]])
        assert len(docs) == 3 and all(VOCAB.infill in d for d in docs)
        for d in docs:
            assert VOCAB.eos not in formats.recover(VOCAB, d)
    assert (weights[VOCAB.is_mask(targets)] == 0).all() and (weights[targets == VOCAB.pad] == 0).all()
    assert weights.sum() > 0


def test_query_only_weights(corpus, bank):
    s = source(corpus, bank, query_only=True, seq_len=256)
    full = source(corpus, bank, seq_len=256)
    inputs, targets, weights = s.batch(2, 0, 0, 1, 6)
    assert np.array_equal(inputs, full.batch(2, 0, 0, 1, 6)[0])
    for row, t, w in zip(inputs, targets, weights, strict=True):
        seq = np.r_[row, t[-1]]
        eos = np.flatnonzero(seq == VOCAB.eos)
        query_start = eos[-2] + 1  # the query sits between the last two <eos>
        scored = np.flatnonzero(w)
        assert scored.min() + 1 == query_start and t[scored.max()] == VOCAB.eos


def test_k0_and_fitting(corpus, bank):
    plain = RASequenceSource(corpus, None, VOCAB, seq_len=64, k=0, seed=1, cm3_prob=0.0)
    inputs, targets, _ = plain.batch(0, 0, 0, 1, 4)
    for row, t in zip(inputs, targets, strict=True):
        assert len(split_docs(np.r_[row, t[-1]])) == 1
    # seq_len too short for 3 documents: retrieved ones are dropped, the query stays whole
    short = source(corpus, bank, seq_len=60)
    lookup = corpus_docs(corpus)
    inputs, targets, _ = short.batch(0, 0, 0, 1, 8)
    for row, t in zip(inputs, targets, strict=True):
        docs = split_docs(np.r_[row, t[-1]])
        assert 1 <= len(docs) <= 2 and tuple(docs[-1]) in lookup
    with pytest.raises(BadInputError):
        RASequenceSource(corpus, None, VOCAB, seq_len=64, k=2)


def test_val_source_retrieves_from_train_memory(corpus, bank):
    val = make_corpus(n=10, seed=1)
    s = RASequenceSource(val, bank, VOCAB, seq_len=256, k=2, seed=0, cm3_prob=0.0, pool=2, split="val",
                         memory=corpus)
    train_docs, val_docs = corpus_docs(corpus), corpus_docs(val)
    inputs, targets, _ = s.batch(0, 0, 0, 1, 4)
    for row, t in zip(inputs, targets, strict=True):
        *retrieved, query = split_docs(np.r_[row, t[-1]])
        assert tuple(query) in val_docs and all(tuple(d) in train_docs for d in retrieved)


class FakeImageTokenizer:
    image_size, grid = 32, (4, 4)

    def encode(self, images):
        return (np.asarray(images, np.int64)[:, ::8, ::8, 0] // 8).reshape(len(images), 4, 4)


class FakeTextTokenizer:
    def encode_batch(self, texts):
        return [[b % 50 for b in t.encode()] for t in texts]


class FakeEmbedder:
    dim = 4

    def embed_texts(self, texts):
        return normalize([[len(t), t.count("a") + 1, 1, 0] for t in texts])

    def embed_images(self, images):
        m = np.asarray(images, np.float32).reshape(len(images), -1, 3).mean(1)
        return normalize(np.c_[m, np.ones(len(m))])


def test_build_corpus_and_round_trip(tmp_path):
    c = build_corpus("shapes", "train", 12, embedder=FakeEmbedder(), image_tokenizer=FakeImageTokenizer(),
                     text_tokenizer=FakeTextTokenizer(), dropout=0.2, quiet=True)
    assert len(c) == 12 and c.codes.shape == (12, 16) and c.codes.dtype == np.int16
    assert all(len(t) == len(s.encode()) for t, s in zip(c.text_ids, c.texts, strict=True))
    assert np.allclose(np.linalg.norm(c.embeddings, axis=1), 1, atol=1e-5)
    assert not np.allclose(c.embeddings, c.query_embeddings)  # query dropout changed the queries
    c.save(tmp_path / "c.npz")
    back = Corpus.load(tmp_path / "c.npz")
    assert back.texts == c.texts and back.meta == c.meta
    assert all(np.array_equal(a, b) for a, b in zip(back.text_ids, c.text_ids, strict=True))
    for name in ("codes", "has_text", "has_image", "embeddings", "query_embeddings"):
        assert np.array_equal(getattr(back, name), getattr(c, name))


def test_registered_with_the_trainer():
    from training.sources import source_kinds

    assert "ra-cm3" in source_kinds()
