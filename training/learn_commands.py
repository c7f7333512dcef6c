"""`tessera bench learn --design D --tokens N --out DIR --json`: real tokens to quality (bench/learn.py)."""

from __future__ import annotations

import argparse
import json
import sys


def register(groups: dict) -> None:
    p = groups["bench"].add_parser("learn", help="learning speed: train a design from scratch for N real "
                                                 "tokens and score its checkpoints")
    p.add_argument("--design", default="cells", help="packed, output-loss, separate or cells (default)")
    p.add_argument("--tokens", type=float, default=1e6, help="real (non-pad) training tokens (default 1e6)")
    p.add_argument("--out", required=True, help="run folder (resumed when it holds checkpoints)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoints", type=int, default=4, help="scored checkpoints along the run")
    p.add_argument("--n", type=int, default=50, help="prompts and images per score")
    p.add_argument("--image-tokenizer", default=None, help="image tokenizer folder (default: shipped)")
    p.add_argument("--json", action="store_true", help="one line of JSON")
    p.set_defaults(func=cmd_learn)


def cmd_learn(args: argparse.Namespace) -> int:
    from engine.tasks import check_count
    from training.export_commands import bench_module

    check_count(args.threads, "--threads", 1, 256)
    check_count(args.checkpoints, "--checkpoints", 1, 100)
    check_count(args.n, "--n", 1, 10_000)
    result = bench_module("learn").run(args.design, args.tokens, args.out, lr=args.lr, threads=args.threads,
                                       checkpoints=args.checkpoints, n=args.n,
                                       image_tokenizer=args.image_tokenizer,
                                       log=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
