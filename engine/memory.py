"""The retrieval memory bank: a FAISS index over document embeddings, the document table, and
the selection rules of docs/retrieval.md (RA-CM3 / CM3Leon §2.1).

A bank is a folder:

    index.faiss   faiss.write_index output (never pickle)
    table.npz     texts (UTF-8 bytes + offsets), image codes, has_text, has_image, ids (compressed)
    params.json   index kind, storage and parameters, the dimension, the count, the selection rules
                  (for training queries and for inference)

Scores are inner products of L2-normalised vectors, i.e. cosine similarities in [-1, 1].
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import cast

import faiss
import numpy as np

from engine.errors import BadInputError, BundleError
from engine.io import atomic_write, atomic_write_text

INDEX_FILE = "index.faiss"
TABLE_FILE = "table.npz"
PARAMS_FILE = "params.json"
FORMAT_VERSION = 1
# One exact query streams all N x dim floats: ~6 ms for 100k x 128 on this 2-core CPU (measured),
# ~4 ms at this size. Above it the bank switches to an approximate index.
APPROXIMATE_THRESHOLD = 64_000
STORAGES = ("fp32", "fp16")


@dataclass(frozen=True)
class SelectionRules:
    """Which retrieved candidates become context (docs/retrieval.md).

    A bank keeps two sets. Training queries are documents of the corpus itself, so a candidate this
    close to the query is (nearly) the query: max_relevance keeps it from being copied. An artist's
    prompt at inference is no document of the bank: the closest documents are what was asked for,
    so the inference rules have no max_relevance (None) by default, and drop only near-copies of an
    already chosen document (with repeated captions, documents of one subject are > 0.9 alike)."""

    max_relevance: float | None = 0.9  # a candidate this close to the query is skipped; None: none is
    max_similarity: float = 0.9  # ...and one this close to an already selected document is redundant
    multimodal_bonus: float = 0.05  # added to the relevance of text+image documents when ranking
    depth: int = 8  # candidates fetched per requested document before the rules thin them out

    @classmethod
    def from_dict(cls, values: dict, base: SelectionRules | None = None) -> SelectionRules:
        """`base` (default: the training rules) with some fields replaced; one-line error on others."""
        fields = set(asdict(cls()))
        unknown = sorted(set(values) - fields)
        if unknown:
            raise BadInputError(f"unknown retrieval rule {unknown[0]!r} (known: {', '.join(sorted(fields))})")
        rules = replace(base or cls(), **values)
        if rules.depth < 1 or not all(isinstance(v, int | float) for k, v in asdict(rules).items()
                                      if not (k == "max_relevance" and v is None)):
            raise BadInputError(f"retrieval rules must be numbers (max_relevance may be null), depth >= 1: "
                                f"{asdict(rules)}")
        return rules


INFERENCE_RULES = SelectionRules(max_relevance=None, max_similarity=0.97)


@dataclass(frozen=True)
class IVFParams:
    nlist: int = 0  # inverted lists; 0 = 4 sqrt(count), the FAISS rule of thumb
    nprobe: int = 32  # lists visited per query
    train_per_list: int = 64  # k-means sample size per list (FAISS warns below 39)


@dataclass(frozen=True)
class HNSWParams:
    M: int = 32
    ef_construction: int = 80
    ef_search: int = 256


@dataclass(frozen=True)
class IndexSpec:
    """How the FAISS index is built; recorded in params.json.

    "auto" is exact below `threshold` documents and IVF above: at 1M documents IVF4000 builds in
    88 s of CPU against 522 s for HNSW32 and reaches recall@4 0.997 at nprobe 32 in 0.74 ms per
    query, where HNSW32 needs efSearch 256 for 0.96 in 1.5 ms (docs/retrieval.md, `index bench`).

    storage "fp16" keeps the exact index's vectors as float16 (a FAISS scalar quantizer): half the
    file at the same search speed. Its recall@4 against float32 is 0.999 both on 20000 random unit
    vectors of 128 dims (tests/test_memory.py) and on the Shapes World bank (1000 queries each)."""

    kind: str = "auto"  # "flat" | "ivf" | "hnsw" | "auto"
    storage: str = "fp32"  # "fp32" | "fp16" (exact index only)
    ivf: IVFParams = field(default_factory=IVFParams)
    hnsw: HNSWParams = field(default_factory=HNSWParams)
    threshold: int = APPROXIMATE_THRESHOLD

    def resolve(self, count: int) -> str:
        if self.storage not in STORAGES:
            raise BadInputError(f"unknown index storage {self.storage!r} ({' or '.join(STORAGES)})")
        kind = self.kind
        if kind == "auto":
            kind = "ivf" if count >= self.threshold else "flat"
        elif kind not in ("flat", "ivf", "hnsw"):
            raise BadInputError(f"unknown index kind {kind!r} (flat, ivf, hnsw or auto)")
        if self.storage != "fp32" and kind != "flat":
            raise BadInputError(f"{self.storage} storage is for the exact (flat) index, not {kind}")
        return kind


def make_index(vecs: np.ndarray, spec: IndexSpec, seed: int = 0) -> tuple[faiss.Index, dict]:
    """A filled inner-product index over unit vectors and its params.json entries."""
    count, dim = vecs.shape
    kind = spec.resolve(count)
    params: dict = {"kind": kind, "storage": spec.storage}
    index: faiss.Index
    if kind == "flat" and spec.storage == "fp16":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        params["description"] = "SQfp16 (exact search over float16 vectors)"
    elif kind == "flat":
        index = faiss.IndexFlatIP(dim)
        params["description"] = "Flat (exact)"
    elif kind == "hnsw":
        h = spec.hnsw
        index = hnsw = faiss.IndexHNSWFlat(dim, h.M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = h.ef_construction
        hnsw.hnsw.efSearch = h.ef_search
        params["hnsw"] = asdict(h)
        params["description"] = f"HNSW{h.M},Flat efConstruction={h.ef_construction} efSearch={h.ef_search}"
    else:
        v = spec.ivf
        nlist = v.nlist or max(1, min(count // 39, int(4 * np.sqrt(count))))
        index = ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = min(count, v.train_per_list * nlist)
        ivf.train(vecs[np.sort(np.random.default_rng(seed).choice(count, sample, replace=False))])
        ivf.nprobe = v.nprobe
        params["ivf"] = {**asdict(v), "nlist": nlist}
        params["description"] = f"IVF{nlist},Flat nprobe={v.nprobe}"
    index.add(vecs)
    if kind == "ivf":
        ivf.make_direct_map()  # reconstruct() for the diversity rule
    return index, params


@dataclass
class DocumentTable:
    """One row per document: its caption, its image codes in raster order, which modalities it has."""

    texts: list[str]
    codes: np.ndarray  # (N, L) int16; rows of documents without an image are -1
    has_text: np.ndarray  # (N,) bool
    has_image: np.ndarray  # (N,) bool
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) int64 stable ids;
    # none given: 0..N-1

    def __post_init__(self) -> None:
        n = len(self.texts)
        self.codes = np.asarray(self.codes, dtype=np.int16).reshape(n, -1)
        self.has_text = np.asarray(self.has_text, dtype=bool).reshape(n)
        self.has_image = np.asarray(self.has_image, dtype=bool).reshape(n)
        self.ids = np.asarray(self.ids, np.int64) if len(self.ids) else np.arange(n, dtype=np.int64)
        if self.ids.shape != (n,) or len(np.unique(self.ids)) != n:
            raise BadInputError("document ids must be unique, one per document")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def multimodal(self) -> np.ndarray:
        return self.has_text & self.has_image

    def head(self, count: int) -> DocumentTable:
        """The first `count` documents."""
        return DocumentTable(self.texts[:count], self.codes[:count], self.has_text[:count],
                             self.has_image[:count], self.ids[:count])

    def save(self, path: str | Path) -> None:
        """Deflated: ~77 bytes a Shapes World document (64 codes of 1024 ~61, caption ~13) against
        230 uncompressed. A VQ code carries ~7.6 bits of its 16, so deflate only halves the codes."""
        encoded = [t.encode("utf-8") for t in self.texts]
        offsets = np.cumsum([0, *(len(b) for b in encoded)], dtype=np.int64)
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        narrow = self.codes.astype(np.int8)
        codes = narrow if np.array_equal(narrow, self.codes) else self.codes  # load widens to int16

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez_compressed(f, text_bytes=blob, text_offsets=offsets, codes=codes,
                                    has_text=self.has_text, has_image=self.has_image, ids=self.ids)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> DocumentTable:
        """Raises BundleError naming the file when it is not a table save() wrote (never unpickles)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                blob, offsets = z["text_bytes"].tobytes(), z["text_offsets"].astype(np.int64, casting="safe")
                texts = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
                return cls(texts, z["codes"], z["has_text"], z["has_image"], z["ids"])
        except (OSError, KeyError, ValueError, TypeError, BadInputError) as exc:  # object arrays: ValueError
            reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise BundleError(f"document table {path} is damaged: {reason}") from None


def select(scores: np.ndarray, vectors: np.ndarray, multimodal: np.ndarray, k: int,
           rules: SelectionRules) -> list[int]:
    """Positions (into the candidate arrays) of up to k candidates chosen by the rules, best first.

    Near duplicates of the query (relevance > max_relevance) are skipped; the rest are ranked by
    relevance plus a bonus for text+image documents (a stable sort, so ties keep FAISS order); a
    candidate whose cosine to an already selected one exceeds max_similarity is skipped (diversity).
    """
    rank = scores + rules.multimodal_bonus * multimodal.astype(np.float32)
    chosen: list[int] = []
    for i in np.argsort(-rank, kind="stable"):
        if rules.max_relevance is not None and scores[i] > rules.max_relevance:
            continue
        if chosen and float(np.max(vectors[chosen] @ vectors[i])) > rules.max_similarity:
            continue
        chosen.append(int(i))
        if len(chosen) == k:
            break
    return chosen


class MemoryBank:
    """`rules` select what a training query retrieves (`search`), `inference_rules` what a prompt does
    (engine.Engine.retrieve); both are stored in params.json. A bank saved before the two were told
    apart gets the default inference rules."""

    def __init__(self, index: faiss.Index, table: DocumentTable, params: dict,
                 rules: SelectionRules | None = None, inference_rules: SelectionRules | None = None) -> None:
        if index.ntotal != len(table):
            raise BundleError(f"memory index holds {index.ntotal} vectors, the table {len(table)} documents")
        self.index, self.table, self.params = index, table, params
        self.rules = rules or SelectionRules.from_dict(params.get("rules", {}))
        self.inference_rules = inference_rules or SelectionRules.from_dict(
            params.get("inference_rules", {}), INFERENCE_RULES)
        self._position = {int(d): i for i, d in enumerate(table.ids)}

    # -- construction and persistence ------------------------------------------------------
    @classmethod
    def build(cls, doc_embeddings: np.ndarray, table: DocumentTable, *, spec: IndexSpec | None = None,
              rules: SelectionRules | None = None, inference_rules: SelectionRules | None = None,
              meta: dict | None = None) -> MemoryBank:
        """meta: more params.json entries (what the bank was built from)."""
        vecs = _as_vectors(doc_embeddings)
        if len(vecs) != len(table):
            raise BadInputError(f"{len(vecs)} embeddings for {len(table)} documents")
        rules, inference_rules = rules or SelectionRules(), inference_rules or INFERENCE_RULES
        index, params = make_index(vecs, spec or IndexSpec())
        params = {"format": FORMAT_VERSION, **params, "dim": vecs.shape[1], "count": len(vecs),
                  "metric": "inner_product", **(meta or {})}
        return cls(index, table, params, rules, inference_rules)

    def subset(self, count: int, spec: IndexSpec | None = None) -> MemoryBank:
        """A bank of the first `count` documents, its index rebuilt from this one's vectors (no
        re-embedding) under `spec`, with the same rules. A corpus's documents are independent draws,
        so its first N are a fair sample, and the documents `tessera index build --docs N` embeds."""
        if not 0 < count <= len(self):
            raise BadInputError(f"a subset of this bank holds 1 to {len(self)} documents, not {count}")
        meta = {"built_from": self.params["built_from"]} if "built_from" in self.params else None
        return MemoryBank.build(self.index.reconstruct_n(0, count), self.table.head(count), spec=spec,
                                rules=self.rules, inference_rules=self.inference_rules, meta=meta)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / INDEX_FILE, lambda tmp: faiss.write_index(self.index, tmp))
        self.table.save(folder / TABLE_FILE)
        # params.json last: a folder whose params disagree with its index is refused on load.
        params = {**self.params, "rules": asdict(self.rules), "inference_rules": asdict(self.inference_rules)}
        atomic_write_text(folder / PARAMS_FILE, json.dumps(params, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> MemoryBank:
        folder = Path(folder)
        missing = [n for n in (INDEX_FILE, TABLE_FILE, PARAMS_FILE) if not (folder / n).is_file()]
        if missing:
            raise BundleError(f"memory bank {folder} is incomplete: missing {', '.join(missing)}")
        params = json.loads((folder / PARAMS_FILE).read_text())
        if params.get("format") != FORMAT_VERSION:
            raise BundleError(f"memory bank {folder}: unknown format {params.get('format')}")
        index = faiss.read_index(str(folder / INDEX_FILE))
        if index.ntotal != params["count"] or index.d != params["dim"]:
            raise BundleError(f"memory bank {folder}: index does not match params.json (interrupted write?)")
        if params["kind"] == "hnsw":  # search-time settings are not part of the index file
            cast(faiss.IndexHNSWFlat, index).hnsw.efSearch = params["hnsw"]["ef_search"]
        elif params["kind"] == "ivf":
            cast(faiss.IndexIVFFlat, index).nprobe = params["ivf"]["nprobe"]
        return cls(index, DocumentTable.load(folder / TABLE_FILE), params)

    # -- queries ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.d

    def document(self, doc_id: int) -> tuple[str | None, np.ndarray | None]:
        """(text, image codes) of a document; None for a missing modality."""
        i = self._position[int(doc_id)]
        t = self.table
        text = t.texts[i] if t.has_text[i] else None
        return text, (t.codes[i].astype(np.int64) if t.has_image[i] else None)

    def vectors(self, doc_ids: Sequence[int]) -> np.ndarray:
        pos = np.array([self._position[int(d)] for d in doc_ids], dtype=np.int64)
        return self.index.reconstruct_batch(pos) if len(pos) else np.zeros((0, self.dim), np.float32)

    def nearest(self, query_vecs: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS search, no rules: (scores (Q, depth), doc ids (Q, depth), -1 where fewer)."""
        q = _as_vectors(query_vecs, self.dim)
        scores, pos = self.index.search(q, min(depth, len(self)))
        ids = np.where(pos >= 0, self.table.ids[np.maximum(pos, 0)], -1)
        return scores, ids

    def candidates(self, query_vecs: np.ndarray, depth: int) -> list[Candidates]:
        scores, ids = self.nearest(query_vecs, depth)
        out = []
        for s, d in zip(scores, ids, strict=True):
            keep = d >= 0
            d = d[keep]
            pos = np.array([self._position[int(x)] for x in d], dtype=np.int64)
            out.append(Candidates(d, s[keep], self.index.reconstruct_batch(pos) if len(pos) else
                                  np.zeros((0, self.dim), np.float32), self.table.multimodal[pos]))
        return out

    def search(self, query_vecs: np.ndarray, k: int = 2, *,
               exclude_ids: Sequence[Collection[int]] | None = None) -> list[list[tuple[int, float]]]:
        """Up to k (doc_id, relevance) per query, chosen by the (training) selection rules.

        exclude_ids: one collection of document ids per query (e.g. the query document itself).
        """
        exclude = None if exclude_ids is None else [{("bank", int(d)) for d in e} for e in exclude_ids]
        hits = retrieve([("bank", self)], query_vecs, k, rules=self.rules, exclude=exclude)
        return [[(doc_id, score) for _, doc_id, score in row] for row in hits]


@dataclass
class Candidates:
    """Raw nearest neighbours of one query from one source."""

    ids: np.ndarray  # (n,) int64
    scores: np.ndarray  # (n,) float32
    vectors: np.ndarray  # (n, dim) float32 document embeddings (for the diversity rule)
    multimodal: np.ndarray  # (n,) bool


Hit = tuple[str, int, float]  # (source name, doc_id, relevance)


def retrieve(sources: Sequence[tuple[str, MemoryBank]], query_vecs: np.ndarray, k: int = 2, *,
             rules: SelectionRules | None = None,
             exclude: Sequence[Collection[tuple[str, int]]] | None = None) -> list[list[Hit]]:
    """Search several sources (the bundle's bank, the user library...) and apply the selection
    rules to their merged candidates: up to k (source name, doc_id, relevance) per query.

    A source is anything with `__len__` and `candidates(query_vecs, depth) -> list[Candidates]`.
    exclude: per query, (source name, doc_id) pairs never to return. If the rules leave fewer
    than k documents, the search is repeated 4x deeper (up to 64x) before giving up.
    """
    rules = rules or SelectionRules()
    q = _as_vectors(query_vecs)
    if exclude is not None and len(exclude) != len(q):
        raise BadInputError(f"exclude has {len(exclude)} entries for {len(q)} queries")
    exclude = exclude if exclude is not None else [()] * len(q)
    results: list[list[Hit]] = [[] for _ in range(len(q))]
    total = sum(len(src) for _, src in sources)
    todo = np.arange(len(q)) if k > 0 and total > 0 else np.zeros(0, np.int64)
    depth = k * rules.depth + max((len(e) for e in exclude), default=0)
    while len(todo):
        per_source = [(name, src.candidates(q[todo], depth)) for name, src in sources if len(src)]
        short = []
        for row, qi in enumerate(todo.tolist()):
            names, cand = _merge([(name, cands[row]) for name, cands in per_source], exclude[qi])
            chosen = select(cand.scores, cand.vectors, cand.multimodal, k, rules)
            results[qi] = [(names[i], int(cand.ids[i]), float(cand.scores[i])) for i in chosen]
            if len(chosen) < k and depth < min(total, 64 * k * rules.depth):
                short.append(qi)
        todo, depth = np.array(short, dtype=np.int64), depth * 4
    return results


def _merge(parts: list[tuple[str, Candidates]], exclude: Collection[tuple[str, int]]
           ) -> tuple[list[str], Candidates]:
    names: list[str] = []
    keep = []
    for name, c in parts:
        k = np.array([(name, int(d)) not in exclude for d in c.ids], dtype=bool) if exclude \
            else np.ones(len(c.ids), bool)
        names += [name] * int(k.sum())
        keep.append(k)

    def cat(f: str) -> np.ndarray:
        return np.concatenate([getattr(c, f)[k] for (_, c), k in zip(parts, keep, strict=True)])

    return names, Candidates(cat("ids"), cat("scores").astype(np.float32), cat("vectors").astype(np.float32),
                             cat("multimodal"))


def _as_vectors(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        raise BadInputError(f"expected vectors of shape (N, {dim or 'dim'}), got {tuple(np.shape(x))}")
    if not np.isfinite(arr).all():
        raise BadInputError("embedding vectors contain NaN or infinity")
    return np.ascontiguousarray(arr)
