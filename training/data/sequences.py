"""Retrieval-augmented CM3 training sequences (docs/retrieval.md; RA-CM3, CM3Leon §2.1-2.2).

A row is `<eos> R1 <eos> R2 <eos> Q <eos>`: a query document Q of the corpus, k documents the
retriever found for it in the memory bank (never Q itself), all in the same order, caption ->
image or image -> caption (a coin with `image_first_prob` per row, so that the context shows the
pattern the query follows, as at inference), each CM3-transformed with probability `cm3_prob`.
Retrieved documents and the query carry the same loss weight (CM3Leon dropped RA-CM3's
up-weighting); with `query_only` the weights cover only the query's tokens and its closing
<eos> - the retrieval ablation compares that loss at k = 0 and k = 2.

Neighbours are computed once for the whole corpus (batched FAISS + the selection rules, with the
query-dropout embeddings of the corpus for training), keeping a pool of `pool` >= k documents per
query; each row draws k of them at random (RA-CM3 samples its retrieved documents, too), so a
batch costs only numpy. Every row is a pure function of (seed, split, step, global row).

If a row would not fit seq_len + 1 tokens, retrieved documents are dropped from the lowest
ranked up; a query that alone does not fit is cut at the end.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from engine import formats
from engine.errors import BadInputError
from engine.memory import MemoryBank
from engine.vocab import Vocab
from training.data.corpus import Corpus
from training.sources import register_source


def precompute_neighbours(bank: MemoryBank, queries: np.ndarray, pool: int, exclude_self: bool,
                          chunk: int = 4096) -> np.ndarray:
    """(N, pool) bank document ids chosen by the selection rules for each query, -1 where fewer
    passed. With exclude_self, query i never gets bank document i (the bank is the query corpus)."""
    out = np.full((len(queries), pool), -1, dtype=np.int64)
    for a in range(0, len(queries), chunk):
        exclude = [[i] for i in range(a, min(a + chunk, len(queries)))] if exclude_self else None
        for r, hits in enumerate(bank.search(queries[a:a + chunk], k=pool, exclude_ids=exclude)):
            out[a + r, : len(hits)] = [doc_id for doc_id, _ in hits]
    return out


class _Docs:
    """Vocab-id pieces of each corpus document, shifted once."""

    def __init__(self, corpus: Corpus, vocab: Vocab) -> None:
        if corpus.text_ids is None:
            raise BadInputError("the corpus was built without a text tokenizer: no text ids to train on")
        self.vocab = vocab
        self.text = [vocab.text_ids(t) if h else None
                     for t, h in zip(corpus.text_ids, corpus.has_text, strict=True)]
        self.image = [vocab.image_ids(c) if h else None
                      for c, h in zip(corpus.codes, corpus.has_image, strict=True)]

    def __len__(self) -> int:
        return len(self.text)

    def doc(self, i: int, image_first: bool) -> np.ndarray:
        t, im = self.text[i], self.image[i]
        if t is None or im is None:
            return im if t is None else t
        build = formats.image_caption_doc if image_first else formats.caption_image_doc
        return build(self.vocab, t, im)


class RASequenceSource:
    """SequenceSource of RA-CM3 rows over a pre-tokenised corpus (see the module docstring).

    corpus: the query documents. bank: a MemoryBank whose document ids are rows of `memory`
    (default: the corpus itself, then the query is excluded from its own neighbours).
    The corpus's `query_embeddings` (query dropout applied when it was built) are the queries.
    `trained_with`: the tokenizers and retriever the corpus was made with (training/components.py).
    """

    trained_with: dict[str, dict[str, str]]

    def __init__(self, corpus: Corpus, bank: MemoryBank | None, vocab: Vocab, *, seq_len: int, k: int = 2,
                 seed: int = 0, cm3_prob: float = 0.5, image_first_prob: float = 0.5, pool: int | None = None,
                 query_only: bool = False, split: str = "train", memory: Corpus | None = None) -> None:
        if k < 0 or (k > 0 and bank is None):
            raise BadInputError("k must be >= 0, and k > 0 needs a memory bank")
        if not (0 <= cm3_prob <= 1 and 0 <= image_first_prob <= 1):
            raise BadInputError("cm3_prob and image_first_prob are probabilities")
        self.vocab, self.seq_len, self.k, self.seed = vocab, int(seq_len), int(k), int(seed)
        self.vocab_size = vocab.size
        self.cm3_prob, self.image_first_prob, self.query_only = cm3_prob, image_first_prob, query_only
        self.split_code = zlib.crc32(split.encode())
        self.queries = _Docs(corpus, vocab)
        self.memory = self.queries if memory is None else _Docs(memory, vocab)
        self.pool = max(self.k, pool or 2 * self.k)
        if self.k:
            if len(bank) != len(self.memory):
                raise BadInputError(f"the bank holds {len(bank)} documents, its corpus {len(self.memory)}")
            self.neighbours = precompute_neighbours(bank, corpus.query_embeddings, self.pool,
                                                    exclude_self=memory is None)
        else:
            self.neighbours = np.zeros((len(corpus), 0), np.int64)

    def retrieved_count(self) -> float:
        """Mean number of neighbours available per query (k unless the rules ran out)."""
        return float(np.minimum((self.neighbours >= 0).sum(1), self.k).mean()) if self.k else 0.0

    def row(self, step: int, global_row: int) -> tuple[np.ndarray, int]:
        """(sequence of at most seq_len + 1 ids, index where the query document starts)."""
        v = self.vocab
        rng = np.random.default_rng([self.seed, self.split_code, step, global_row])
        q = int(rng.integers(len(self.queries)))
        cand = self.neighbours[q][self.neighbours[q] >= 0]
        take = min(self.k, len(cand))
        picked = cand[np.sort(rng.choice(len(cand), size=take, replace=False))] if take else []
        image_first = bool(rng.random() < self.image_first_prob)
        docs = [self.memory.doc(int(i), image_first) for i in picked] + [self.queries.doc(q, image_first)]
        docs = [formats.cm3_transform(v, d, rng) if rng.random() < self.cm3_prob else d for d in docs]
        *retrieved, query = docs
        while retrieved and sum(len(d) + 1 for d in docs) + 1 > self.seq_len + 1:
            retrieved.pop()  # lowest ranked first
            docs = [*retrieved, query]
        seq = formats.ra_sequence(v, retrieved, query)
        return seq[: self.seq_len + 1], len(seq) - len(query) - 1

    def batch(self, step: int, micro_step: int, rank: int, world_size: int, batch_size: int):
        first = (micro_step * world_size + rank) * batch_size
        rows = np.full((batch_size, self.seq_len + 1), self.vocab.pad, dtype=np.int64)
        starts = np.zeros(batch_size, np.int64)
        for i in range(batch_size):
            seq, starts[i] = self.row(step, first + i)
            rows[i, : len(seq)] = seq
        inputs, targets = rows[:, :-1].copy(), rows[:, 1:].copy()
        weights = formats.loss_weights(self.vocab, targets)
        if self.query_only:
            # weights[:, t] scores target rows[:, t + 1]: keep t + 1 >= query start
            weights[np.arange(self.seq_len)[None, :] + 1 < starts[:, None]] = 0.0
        return inputs, targets, weights


def shapes_vocab(text_tokenizer, image_tokenizer) -> Vocab:
    from training.data.shapes import SEG_CLASSES

    return Vocab(text_tokenizer.size, image_tokenizer.codebook_size, len(SEG_CLASSES), image_tokenizer.grid)


@register_source("ra-cm3")
def ra_cm3_source(split: str, seq_len: int, seed: int, *, data: str = "shapes", docs: int = 20000,
                  val_docs: int = 500, k: int = 2, pool: int = 4, cm3_prob: float = 0.5,
                  image_first_prob: float = 0.5, query_dropout: float = 0.2, val_query_only: bool = True,
                  val_cm3_prob: float = 0.0, retriever: str | None = None, image_tokenizer: str | None = None,
                  text_tokenizer: str | None = None, cache_dir: str = "runs/corpus",
                  corpus_seed: int = 0, rules: dict | None = None) -> RASequenceSource:
    """Recipe `[data] kind = "ra-cm3"`. train: `docs` documents of the train split, retrieving from
    themselves with query dropout. val: `val_docs` documents of the val split retrieving from the
    train corpus, no dropout, no CM3 transform by default, loss on the query only by default.
    `[data.rules]`: the selection rules of the training queries (engine.memory.SelectionRules fields)."""
    from engine.image_tokenizer import ImageTokenizer
    from engine.memory import SelectionRules
    from engine.paths import assets_dir, default_image_tokenizer_dir
    from engine.retriever import default_retriever_dir
    from engine.text_tokenizer import TextTokenizer
    from training.components import record
    from training.data.corpus import cached_corpus

    text_default = assets_dir() / "tokenizers" / "shapes-text" / "tokenizer.json"
    paths = {"retriever_dir": retriever or default_retriever_dir(),
             "image_tokenizer_dir": image_tokenizer or default_image_tokenizer_dir(),
             "text_tokenizer_path": text_tokenizer or text_default}
    for name, path in paths.items():
        if not Path(path).exists():
            raise BadInputError(f"ra-cm3 data: {name} {path} does not exist")
    vocab = shapes_vocab(TextTokenizer.load(paths["text_tokenizer_path"]),
                         ImageTokenizer.load(paths["image_tokenizer_dir"]))
    train = cached_corpus(cache_dir, data, "train", docs, seed=corpus_seed, dropout=query_dropout, **paths)
    bank = MemoryBank.build(train.embeddings, train.table(), rules=SelectionRules.from_dict(rules or {})) \
        if k else None
    if split == "train":
        source = RASequenceSource(train, bank, vocab, seq_len=seq_len, k=k, seed=seed, cm3_prob=cm3_prob,
                                  image_first_prob=image_first_prob, pool=pool, split=split)
    else:
        val = cached_corpus(cache_dir, data, "val", val_docs, seed=corpus_seed, dropout=0.0, **paths)
        source = RASequenceSource(val, bank, vocab, seq_len=seq_len, k=k, seed=seed, cm3_prob=val_cm3_prob,
                                  image_first_prob=image_first_prob, pool=k, query_only=val_query_only,
                                  split=split, memory=train)
    source.trained_with = record(image_tokenizer=paths["image_tokenizer_dir"],
                                 text_tokenizer=paths["text_tokenizer_path"],
                                 retriever=paths["retriever_dir"])
    return source
