"""`tessera train sft [--from CHECKPOINT] --config recipes/shapes-sft.toml`: multi-task instruction
tuning. The pretraining trainer, checkpoints, resume and torchrun launch, with `[data] kind =
"shapes-sft"`, from scratch or initialised from a pretrained run."""

from __future__ import annotations

import argparse


def register(groups: dict) -> None:
    p = groups["train"].add_parser("sft", help="train on the instruction task mixture")
    p.add_argument("--from", dest="init_from", default=None,
                   help="start from this run folder or checkpoint (default: the recipe's [model])")
    p.add_argument("--config", required=True, help="TOML recipe, e.g. recipes/shapes-sft.toml")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the out dir")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 instead of DDP (under torchrun)")
    p.add_argument("--out", default=None, help="override [run] out_dir")
    p.add_argument("--steps", type=int, default=None, help="override [run] steps")
    p.set_defaults(func=cmd_sft)


def cmd_sft(args: argparse.Namespace) -> int:
    from training.config import TrainConfig
    from training.model_commands import run_training

    cfg = TrainConfig.from_toml(args.config)
    if args.init_from is not None:
        cfg.model.init_from = args.init_from
    if args.steps is not None:
        cfg.run.steps = args.steps
    return run_training(cfg, resume=args.resume, fsdp=args.fsdp, out_dir=args.out)
