"""`tessera train text-tokenizer --data shapes|DIR --out FILE [--vocab-size N]`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from engine.errors import BadInputError


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["train"].add_parser("text-tokenizer", help="train the byte-level BPE text tokenizer")
    p.add_argument("--data", required=True, help="'shapes' (Shapes World text) or a folder dataset")
    p.add_argument("--out", required=True, help="output tokenizer.json (a folder gets tokenizer.json inside)")
    p.add_argument("--vocab-size", type=int, default=1536,
                   help="upper bound; training stops earlier when no pair is frequent enough (default 1536)")
    p.add_argument("--scenes", type=int, default=20000, help="Shapes World scenes in the corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.text_tokenizer_train import (
        folder_corpus,
        shapes_corpus,
        tokens_per_text,
        train_text_tokenizer,
    )

    if args.scenes < 1:
        raise BadInputError("--scenes must be positive")
    t0 = time.perf_counter()
    print(f"collecting text from {args.data} ...", file=sys.stderr)
    if args.data == "shapes":
        corpus = list(shapes_corpus(args.scenes, seed=args.seed))
        check = list(shapes_corpus(200, seed=args.seed + 1))  # unseen scenes
    else:
        corpus = list(folder_corpus(args.data))
        check = corpus[:1000]
    print(f"training BPE on {len(corpus)} texts ...", file=sys.stderr)
    tok = train_text_tokenizer(corpus, vocab_size=args.vocab_size)
    out = Path(args.out)
    if out.is_dir() or not out.suffix:
        out = out / "tokenizer.json"
    tok.save(out)
    summary = {"out": str(out), "vocab_size": tok.size, "texts": len(corpus),
               "tokens_per_text": round(tokens_per_text(tok, check), 3),
               "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")
    return 0
