"""Retrieval commands of `tessera`:

    tessera train retriever --data shapes|DIR --out DIR      bi-encoder + ONNX export
    tessera index build --data shapes|DIR --out DIR [--docs N]   a memory bank folder
    tessera index subset BANK --out DIR --docs N [--storage fp16] its first N documents, re-indexed
    tessera index bench --docs 1000000 --json                  ANN recall and latency at scale
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import BadInputError

if TYPE_CHECKING:
    from engine.memory import MemoryBank


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["train"].add_parser("retriever", help="train the text-image retriever (bi-encoder)")
    p.add_argument("--data", required=True, help="'shapes' or a folder of captioned images")
    p.add_argument("--out", required=True, help="run folder; receives the exported retriever")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--scenes", type=int, default=None, help="Shapes World scenes rendered for training")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--json", action="store_true", help="print one JSON report on stdout")
    p.set_defaults(func=_train_retriever)

    p = groups["index"].add_parser("build", help="embed documents and write a memory bank folder")
    p.add_argument("--data", required=True, help="'shapes' (train split) or a folder dataset")
    p.add_argument("--out", required=True, help="memory bank folder (index.faiss, table.npz, params.json)")
    p.add_argument("--docs", type=int, default=20000, help="number of documents (default 20000)")
    p.add_argument("--retriever", default=None, help="retriever folder (default: the shipped one)")
    p.add_argument("--image-tokenizer", default=None, help="image tokenizer folder (default: shipped)")
    _index_options(p, "auto: exact below 64k documents, IVF above")
    p.add_argument("--rules", type=_rules, default={}, metavar="KEY=VALUE,...",
                   help="selection rules of training queries, e.g. max_relevance=0.9,max_similarity=0.9 "
                        "(engine.memory.SelectionRules; 'none' lifts max_relevance)")
    p.add_argument("--inference-rules", type=_rules, default={}, metavar="KEY=VALUE,...",
                   help="selection rules of a prompt at inference (default: max_relevance=none,"
                        "max_similarity=0.97: the closest documents are what the artist asked for)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_index_build)

    p = groups["index"].add_parser("subset", help="write a smaller memory bank: the first N documents of "
                                                  "one, re-indexed from its vectors (no re-embedding)")
    p.add_argument("bank", help="memory bank folder to read")
    p.add_argument("--out", required=True, help="memory bank folder to write")
    p.add_argument("--docs", type=int, required=True, help="number of documents kept (the first N)")
    _index_options(p, "auto: exact below 64k documents, IVF above")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_index_subset)

    p = groups["index"].add_parser("bench", help="recall@4 and latency of the ANN index on a synthetic bank")
    p.add_argument("--docs", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=None, help="vector size (default: the retriever's)")
    p.add_argument("--queries", type=int, default=1000)
    _index_options(p, "auto: what a memory bank of --docs documents uses (IVF from 64k on)")
    p.add_argument("--M", type=int, default=None, help="HNSW links per node")
    p.add_argument("--ef-construction", type=int, default=None)
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 sqrt(docs))")
    p.add_argument("--search", default=None,
                   help="more search settings to measure after the one build: IVF nprobe or HNSW "
                        "efSearch values, comma-separated (default 8,16,32,64 / 64,128,256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_index_bench)


def _index_options(p: argparse.ArgumentParser, index_help: str) -> None:
    p.add_argument("--index", choices=("auto", "flat", "ivf", "hnsw"), default="auto", help=index_help)
    p.add_argument("--storage", choices=("fp32", "fp16"), default="fp32",
                   help="vectors of the exact index: fp16 halves index.faiss (recall@4 0.999 against fp32)")


def _rules(text: str) -> dict:
    """"max_relevance=none,depth=8" -> {"max_relevance": None, "depth": 8}; checked by SelectionRules."""
    out: dict = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = None if value.strip().lower() == "none" else json.loads(value)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(f"{item!r}: {value!r} is not a number") from None
    return out


def _bank_report(bank: MemoryBank, out: str) -> dict:
    size = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    return {"docs": len(bank), "dim": bank.dim, "index": bank.params["description"],
            "multimodal": int(bank.table.multimodal.sum()), "size_mb": round(size / 1e6, 2), "out": out}


def _emit(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")


# ---- train retriever -------------------------------------------------------------------------------
def _train_retriever(args: argparse.Namespace) -> int:
    from training.retriever_train import RetrieverTrainConfig, run

    cfg = RetrieverTrainConfig(data=args.data, out=args.out)
    for name in ("steps", "batch_size", "lr", "scenes", "threads", "seed"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if cfg.steps < 1 or cfg.batch_size < 2:
        raise BadInputError("--steps must be >= 1 and --batch-size >= 2")
    t0 = time.time()
    report = run(cfg, resume=args.resume)
    report["wall_s"] = round(time.time() - t0, 1)
    _emit(report, args.json)
    return 0


# ---- index build -------------------------------------------------------------------------------------
def _index_build(args: argparse.Namespace) -> int:
    from engine.image_tokenizer import ImageTokenizer
    from engine.memory import INFERENCE_RULES, IndexSpec, MemoryBank, SelectionRules
    from engine.paths import default_image_tokenizer_dir
    from engine.retriever import OnnxRetriever, default_retriever_dir
    from training.components import record
    from training.data.corpus import build_corpus

    if args.docs < 1:
        raise BadInputError("--docs must be positive")
    rules = SelectionRules.from_dict(args.rules)
    inference_rules = SelectionRules.from_dict(args.inference_rules, INFERENCE_RULES)
    parts = {"retriever": args.retriever or default_retriever_dir(),
             "image_tokenizer": args.image_tokenizer or default_image_tokenizer_dir()}
    t0 = time.time()
    embedder = OnnxRetriever.load(parts["retriever"])
    corpus = build_corpus(args.data, "train", args.docs, embedder=embedder,
                          image_tokenizer=ImageTokenizer.load(parts["image_tokenizer"]), seed=args.seed)
    t1 = time.time()
    spec = IndexSpec(kind=args.index, storage=args.storage)
    bank = MemoryBank.build(corpus.embeddings, corpus.table(), spec=spec, rules=rules,
                            inference_rules=inference_rules, meta={"built_from": record(**parts)})
    bank.save(args.out)
    _emit({**_bank_report(bank, args.out), "embed_s": round(t1 - t0, 1),
           "index_s": round(time.time() - t1, 1)}, args.json)
    return 0


def _index_subset(args: argparse.Namespace) -> int:
    from engine.memory import IndexSpec, MemoryBank

    bank = MemoryBank.load(args.bank).subset(args.docs, IndexSpec(kind=args.index, storage=args.storage))
    bank.save(args.out)
    _emit(_bank_report(bank, args.out), args.json)
    return 0


# ---- index bench -------------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_vectors(n: int, dim: int, seed: int, queries: int, chunk: int = 100_000):
    """Unit vectors with structure at two scales, like real embeddings: 100 topics, n/100
    sub-clusters around them, points around the sub-clusters. Two points of one sub-cluster have
    cosine ~0.55, of one topic ~0.4, unrelated ~0; a query's nearest neighbour ~0.66. Returns
    (bank, queries), the queries drawn from the same distribution (not members of the bank)."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((100, dim), dtype=np.float32))
    n_sub = max(1, n // 100)
    spread = _unit(rng.standard_normal((n_sub, dim), dtype=np.float32))
    subs = _unit(topics[rng.integers(100, size=n_sub)] + 0.6 * spread)

    def points(m: int) -> np.ndarray:
        noise = _unit(rng.standard_normal((m, dim), dtype=np.float32))
        return _unit(subs[rng.integers(n_sub, size=m)] + 0.9 * noise).astype(np.float32)

    bank = np.concatenate([points(min(chunk, n - i)) for i in range(0, n, chunk)])
    return bank, points(queries)


def _measure(index, queries: np.ndarray, truth: np.ndarray, k: int) -> dict:
    t0 = time.time()
    _, found = index.search(queries, k)
    batched_ms = (time.time() - t0) * 1000 / len(queries)
    single = queries[: min(len(queries), 300)]
    t0, c0 = time.time(), time.thread_time()
    for q in single:
        index.search(q[None], k)
    # wall time of queries one by one, and their CPU time: one query runs on the calling thread,
    # so the CPU time is what it costs on an idle machine (this one is shared)
    single_ms = (time.time() - t0) * 1000 / len(single)
    single_cpu_ms = (time.thread_time() - c0) * 1000 / len(single)
    recall = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))
    return {"recall_at_4": round(recall, 4), "ms_per_query": round(single_ms, 3),
            "cpu_ms_per_query": round(single_cpu_ms, 3), "ms_per_query_batched": round(batched_ms, 4)}


def _index_bench(args: argparse.Namespace) -> int:
    """Build the index a memory bank of --docs documents builds (engine.memory.make_index) once and
    measure it: the top level of the report is the bank's own search setting; "sweep" adds the
    other settings of --search to show the recall/latency trade-off."""
    import faiss

    from engine.memory import HNSWParams, IndexSpec, IVFParams, make_index
    from engine.nn.retriever import RetrieverConfig

    if args.docs < 10 or args.queries < 1:
        raise BadInputError("--docs must be >= 10 and --queries >= 1")
    spec = IndexSpec(kind=args.index, storage=args.storage, ivf=IVFParams(nlist=args.nlist or 0),
                     hnsw=HNSWParams(M=args.M or HNSWParams.M,
                                     ef_construction=args.ef_construction or HNSWParams.ef_construction))
    kind = spec.resolve(args.docs)
    default = {"ivf": "8,16,32,64", "hnsw": "64,128,256", "flat": "0"}
    own = {"ivf": spec.ivf.nprobe, "hnsw": spec.hnsw.ef_search, "flat": 0}[kind]
    try:
        settings = sorted({own, *(int(v) for v in (args.search or default[kind]).split(","))})
    except ValueError:
        raise BadInputError(f"--search takes comma-separated integers, not {args.search!r}") from None
    dim = args.dim or RetrieverConfig().dim
    k = 4
    t0 = time.time()
    bank, queries = synthetic_vectors(args.docs, dim, args.seed, args.queries)
    print(f"bench: {args.docs} x {dim} synthetic vectors in {time.time() - t0:.0f}s", file=sys.stderr)
    exact = faiss.IndexFlatIP(dim)
    exact.add(bank)
    t0 = time.time()
    _, truth = exact.search(queries, k)
    exact_ms = (time.time() - t0) * 1000 / len(queries)
    del exact
    t0, c0 = time.time(), time.process_time()
    index, params = make_index(bank, spec, seed=args.seed)
    build_s, build_cpu_s = time.time() - t0, time.process_time() - c0
    base = params["description"].split(" ")[0]
    print(f"bench: built {base} in {build_s:.0f}s ({build_cpu_s:.0f}s CPU)", file=sys.stderr)
    sweep = []
    for value in settings:
        label = base
        if kind == "ivf":
            index.nprobe, label = value, f"{base} nprobe={value}"
        elif kind == "hnsw":
            index.hnsw.efSearch = value
            label = f"{base} efConstruction={spec.hnsw.ef_construction} efSearch={value}"
        sweep.append({"index": label, **_measure(index, queries, truth, k)})
        print(f"bench: {sweep[-1]}", file=sys.stderr)
        if value == own:
            chosen = sweep[-1]
    _emit({**chosen, "docs": args.docs, "dim": dim, "queries": len(queries), "build_s": round(build_s, 1),
           "build_cpu_s": round(build_cpu_s, 1), "exact_ms_per_query_batched": round(exact_ms, 3),
           "threads": faiss.omp_get_max_threads(), "sweep": sweep}, args.json)
    return 0
