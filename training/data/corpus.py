"""A pre-tokenised document corpus for retrieval-augmented training and for memory banks.

Each document is a caption and/or an image. Built once (rendering, VQ encoding, BPE, retriever
embeddings are the slow part) and cached as one .npz, written atomically:

    texts           UTF-8 bytes + offsets             the caption strings
    text_ids        BPE ids (unshifted) + offsets     empty when no text tokenizer was given
    codes           (N, h*w) int16 image codes, -1 rows for documents without an image
    has_text, has_image
    embeddings      (N, dim) float32 document embeddings (engine.retriever.document_embeddings)
    query_embeddings(N, dim) float32 the same after query dropout (docs/retrieval.md: 20 % of the
                    query's tokens dropped while training); equal to embeddings when the rate is 0
    meta            JSON: what was built from what (the cache key)

The memory bank of a corpus is `MemoryBank.build(corpus.embeddings, corpus.table())`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import BadInputError
from engine.io import atomic_write
from engine.memory import DocumentTable
from engine.retriever import Embedder, document_embeddings, query_dropout

CORPUS_FORMAT = 1


def _ragged(arrays: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0, *(len(a) for a in arrays)], dtype=np.int64)
    flat = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
    return flat, offsets


def _unragged(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


@dataclass
class Corpus:
    texts: list[str]
    text_ids: list[np.ndarray] | None  # BPE ids per document (not shifted into the Vocab)
    codes: np.ndarray  # (N, h*w) int16
    has_text: np.ndarray
    has_image: np.ndarray
    embeddings: np.ndarray  # (N, dim) float32
    query_embeddings: np.ndarray  # (N, dim) float32
    meta: dict

    def __len__(self) -> int:
        return len(self.texts)

    def table(self) -> DocumentTable:
        return DocumentTable(self.texts, self.codes, self.has_text, self.has_image)

    def save(self, path: str | Path) -> None:
        encoded = [np.frombuffer(t.encode("utf-8"), np.uint8) for t in self.texts]
        text_flat, text_off = _ragged(encoded, np.uint8)
        ids = self.text_ids if self.text_ids is not None else []
        ids_flat, ids_off = _ragged(ids, np.int32)
        meta = np.frombuffer(json.dumps(self.meta).encode("utf-8"), np.uint8)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, text_bytes=text_flat, text_offsets=text_off, ids=ids_flat, id_offsets=ids_off,
                         codes=self.codes, has_text=self.has_text, has_image=self.has_image,
                         embeddings=self.embeddings, query_embeddings=self.query_embeddings, meta=meta)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> Corpus:
        with np.load(path, allow_pickle=False) as z:
            raw = z["text_bytes"].tobytes()
            off = z["text_offsets"]
            texts = [raw[a:b].decode("utf-8") for a, b in zip(off[:-1], off[1:], strict=True)]
            ids = _unragged(z["ids"].astype(np.int64), z["id_offsets"]) if len(z["id_offsets"]) > 1 else None
            return cls(texts, ids, z["codes"], z["has_text"], z["has_image"], z["embeddings"],
                       z["query_embeddings"], json.loads(z["meta"].tobytes().decode("utf-8")))


def load_documents(data: str, split: str, n: int, seed: int, size: int = 64) -> tuple[list[str], np.ndarray]:
    """(captions, uint8 images (N, size, size, 3)). Shapes World: the split's first n samples, each with
    its own paraphrased caption. A folder: its first n images ("" for an uncaptioned one); the
    folder's split is the whole folder for "train" and its last 5 % (at least 1) for "val"."""
    if data == "shapes":
        from training.data.shapes import ShapesWorld

        world = ShapesWorld(split, seed=seed, size=size)
        n = min(n, len(world))
        samples = [world.sample(i) for i in range(n)]
        return [s.caption for s in samples], np.stack([s.image for s in samples])
    from training.data.folder import FolderDataset

    ds = FolderDataset(data, size=size)
    for item in ds.report["skipped"]:
        print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    if len(ds) == 0:
        raise BadInputError(f"{data}: no usable images")
    held = max(1, len(ds) // 20)
    rows = list(range(len(ds) - held, len(ds))) if split == "val" else list(range(len(ds)))
    rows = rows[:n]
    return [ds.items[i][1] for i in rows], ds.batch(rows)


def build_corpus(data: str, split: str, n: int, *, embedder: Embedder, image_tokenizer, text_tokenizer=None,
                 seed: int = 0, dropout: float = 0.0, batch: int = 1024, meta: dict | None = None,
                 quiet: bool = False) -> Corpus:
    """Tokenise and embed n documents of `data` ("shapes" or a folder). `dropout` > 0 also embeds
    each document as a training query (query dropout, seeded per document)."""
    t0 = time.time()
    texts, images = load_documents(data, split, n, seed, size=image_tokenizer.image_size)
    has_text = np.array([bool(t.strip()) for t in texts])
    has_image = np.ones(len(texts), bool)
    if not quiet:
        print(f"corpus: {len(texts)} {split} documents loaded in {time.time() - t0:.0f}s", file=sys.stderr)
    cells = int(np.prod(image_tokenizer.grid))
    codes = np.concatenate([image_tokenizer.encode(images[i:i + batch]).reshape(-1, cells)
                            for i in range(0, len(images), batch)]).astype(np.int16)
    text_ids = None
    if text_tokenizer is not None:
        text_ids = [np.asarray(ids, np.int64) for ids in text_tokenizer.encode_batch(texts)]
    doc_texts = [t if h else None for t, h in zip(texts, has_text, strict=True)]
    emb = np.concatenate([document_embeddings(embedder, doc_texts[i:i + batch], images[i:i + batch])
                          for i in range(0, len(texts), batch)])
    if dropout > 0:
        q_texts, q_images = [], []
        for i in range(len(texts)):
            t, im = query_dropout(doc_texts[i], images[i], np.random.default_rng([seed, 7, i]), dropout)
            q_texts.append(t)
            q_images.append(im)
        q_emb = np.concatenate([document_embeddings(embedder, q_texts[i:i + batch], q_images[i:i + batch])
                                for i in range(0, len(texts), batch)])
    else:
        q_emb = emb.copy()
    if not quiet:
        print(f"corpus: tokenised and embedded in {time.time() - t0:.0f}s", file=sys.stderr)
    info = {"format": CORPUS_FORMAT, "data": data, "split": split, "n": len(texts), "seed": seed,
            "dropout": dropout, **(meta or {})}
    return Corpus(texts, text_ids, codes, has_text, has_image, emb.astype(np.float32),
                  q_emb.astype(np.float32), info)


def cached_corpus(cache_dir: str | Path, data: str, split: str, n: int, *, retriever_dir: str | Path,
                  image_tokenizer_dir: str | Path | None, text_tokenizer_path: str | Path | None,
                  seed: int = 0, dropout: float = 0.0, quiet: bool = False) -> Corpus:
    """Load the corpus for these inputs from cache_dir, or build and cache it. The file name carries
    a hash of every input (tokenizer and retriever files included), so a retrained part rebuilds."""
    from engine.image_tokenizer import ImageTokenizer
    from engine.retriever import OnnxRetriever
    from engine.text_tokenizer import TextTokenizer
    from training.components import fingerprint

    key = {"format": CORPUS_FORMAT, "data": str(data), "split": split, "n": n, "seed": seed,
           "dropout": dropout,
           **{kind: fingerprint(kind, path) if path else None for kind, path in (
               ("retriever", retriever_dir), ("image_tokenizer", image_tokenizer_dir),
               ("text_tokenizer", text_tokenizer_path))}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"corpus-{split}-{digest}.npz"
    if path.is_file():
        return Corpus.load(path)
    corpus = build_corpus(
        data, split, n, embedder=OnnxRetriever.load(retriever_dir),
        image_tokenizer=ImageTokenizer.load(image_tokenizer_dir),
        text_tokenizer=TextTokenizer.load(text_tokenizer_path) if text_tokenizer_path else None,
        seed=seed, dropout=dropout, meta=key, quiet=quiet)
    corpus.save(path)
    return corpus
