"""`tessera train judge`, `tessera eval judge` and `tessera eval model [BUNDLE] --suite quick|full`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import BadInputError, TesseraError


def _log(quiet: bool):
    return (lambda _: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def train_judge(args: argparse.Namespace) -> int:
    from training.eval.judge import GATED, MIN_ACCURACY, TrainConfig, default_judge_dir, save, train

    _threads(args.threads)
    out = args.out or default_judge_dir()
    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_n=args.eval_n
    )
    net, info = train(cfg, log=_log(args.json))
    save(net, info, out)
    passed = all(info["accuracy"][s][k] >= MIN_ACCURACY for s in ("test", "heldout") for k in GATED)
    if args.json:
        print(json.dumps({"out": str(out), "passed": passed, **info}))
    else:
        for split, acc in info["accuracy"].items():
            print(f"{split:8s} " + "  ".join(f"{k} {v:.4f}" for k, v in acc.items() if isinstance(v, float)))
        print(
            f"trained in {info['training']['seconds']:.0f} s; saved to {out}"
            + ("" if passed else f"  (below {MIN_ACCURACY:.0%}: Judge.load will refuse it)")
        )
    return 0 if passed else 1


def eval_judge(args: argparse.Namespace) -> int:
    """Re-measure a stored judge on real images, and on the image tokenizer's reconstructions of them
    (how well it reads pictures that went through the VQ bottleneck, as generated ones do)."""
    import numpy as np

    from training.data.shapes import ShapesWorld, render
    from training.eval.judge import Judge, evaluate

    _threads(args.threads)
    judge = Judge.load(args.judge, min_accuracy=0.0)
    out = {split: evaluate(judge.net, split, args.n) for split in ("test", "heldout")}
    if args.tokenizer:
        from engine.image_tokenizer import ImageTokenizer

        tok = ImageTokenizer.load(args.tokenizer)
        world = ShapesWorld("test")
        images = np.stack([render(world.scene(i)) for i in range(args.n)])
        recon = np.concatenate([tok.decode(tok.encode(images[i : i + 100])) for i in range(0, args.n, 100)])
        out["test_vq_reconstructions"] = evaluate(judge.net, "test", args.n, images=recon)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


def eval_model(args: argparse.Namespace) -> int:
    from engine.engine import MAX_RETRIEVED, Engine
    from engine.tasks import check_count
    from training.eval.ablation import run_ablation, write_report
    from training.eval.judge import Judge
    from training.eval.suite import METRICS, SUITES, Decoding, run_suite

    only = None
    if args.metrics:
        only = [m.strip() for m in args.metrics.split(",") if m.strip()]
        unknown = sorted(set(only) - set(METRICS))
        if unknown:
            raise BadInputError(f"unknown metrics: {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    _threads(args.threads)
    log = _log(False)
    judge = Judge.load(args.judge)
    engine = Engine.load(args.bundle)
    n = args.n or SUITES[args.suite]
    decoding = Decoding()
    if args.retrieve is not None:
        decoding.retrieve = check_count(args.retrieve, "--retrieve", 0, MAX_RETRIEVED)
    results = run_suite(engine, judge, n=n, seed=args.seed, only=only, decoding=decoding, log=log)
    results["suite"] = args.suite
    if args.suite == "full":
        n_ablation = args.ablation_n
        try:
            tables = run_ablation(engine, judge, n_ablation, args.seed, args.cdk_alpha, args.cdk_k, log=log)
        except TesseraError as exc:  # an untrained or failing generator: the report says so
            tables, results["notes"]["ablation"] = None, f"not run: {exc}"
        results["report"] = str(write_report(args.report_dir, results, tables, n_ablation))
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            if key in METRICS:
                note = results["notes"].get(key, "")
                print(f"{key:26s} {'n/a' if value is None else f'{value:.4f}'}  {note}")
        if "report" in results:
            print(f"report: {results['report']}")
    return 0


def register(groups: dict) -> None:
    p = groups["train"].add_parser("judge", help="train the Shapes World judge (evaluation instrument)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default assets/judge)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-n", type=int, default=2000, help="test and heldout images measured at the end")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the team shares 2 cores)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=train_judge)

    p = groups["eval"].add_parser(
        "judge", help="measure the stored judge on real (and VQ-reconstructed) images"
    )
    p.add_argument("--judge", type=Path, default=None, help="judge folder (default assets/judge)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument(
        "--tokenizer", type=Path, default=None, help="also judge this image tokenizer's reconstructions"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=eval_judge)

    p = groups["eval"].add_parser("model", help="the evaluation suite on a model bundle")
    p.add_argument("bundle", nargs="?", default=None, help="bundle folder (default: the bundled model)")
    p.add_argument("--suite", choices=("quick", "full"), default="quick")
    p.add_argument("--n", type=int, default=None, help="items per metric (quick 50, full 1000)")
    p.add_argument("--metrics", default=None, help="comma-separated subset of the metrics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", type=Path, default=None, help="judge folder (default assets/judge)")
    p.add_argument("--ablation-n", type=int, default=200, help="prompts per decoding-ablation row (full)")
    p.add_argument("--retrieve", type=int, default=None,
                   help="documents retrieved into each generation prompt (default: the studio's, "
                        "engine/settings.py)")
    p.add_argument("--cdk-alpha", type=float, default=0.1)
    p.add_argument("--cdk-k", type=int, default=10)
    p.add_argument("--report-dir", type=Path, default=Path("docs/eval"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=eval_model)
