"""`tessera model info`, `tessera bench train`, `tessera train pretrain`."""

from __future__ import annotations

import json
import os
import time

from engine.errors import BadInputError
from engine.model_config import PRESETS


def register(groups: dict) -> None:
    p = groups["model"].add_parser("info", help="size, FLOPs and training memory of a preset (meta device)")
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument(
        "--seq-len", type=int, default=None, help="sequence length for FLOPs/memory (default: the preset's)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)

    p = groups["bench"].add_parser("train", help="training tokens/s and MFU against the measured GEMM peak")
    p.add_argument("--preset", default="shapes", choices=sorted(PRESETS))
    p.add_argument("--vocab-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--micro-batch", type=int, default=16, help="default: as recipes/shapes.toml")
    p.add_argument("--seq-len", type=int, default=None, help="default: 320 as recipes/shapes.toml")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gemm-size", type=int, default=2048, help="square matrix size for the GEMM peak")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_train)

    p = groups["train"].add_parser(
        "pretrain", help="train the transformer from a TOML recipe (torchrun-ready)"
    )
    p.add_argument("--config", required=True, help="TOML recipe, e.g. recipes/shapes.toml")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the out dir")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 instead of DDP (under torchrun)")
    p.add_argument("--out", default=None, help="override [run] out_dir")
    p.add_argument("--steps", type=int, default=None, help="override [run] steps")
    p.set_defaults(func=cmd_pretrain)


def cmd_model_info(args) -> int:
    from engine.nn.transformer import model_info

    info = model_info(PRESETS[args.preset], args.seq_len)
    info = {"preset": args.preset, **info}
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:>26}: {v}")
    return 0


def cmd_pretrain(args) -> int:
    from training.config import TrainConfig

    cfg = TrainConfig.from_toml(args.config)
    if args.steps is not None:
        cfg.run.steps = args.steps
    return run_training(cfg, resume=args.resume, fsdp=args.fsdp, out_dir=args.out)


def run_training(cfg, resume: bool = False, fsdp: bool = False, out_dir: str | None = None) -> int:
    """Entry point shared with SFT: single process, or one rank of a torchrun launch."""
    from training import parallel
    from training.trainer import Trainer

    info = parallel.init_distributed()
    try:
        trainer = Trainer(cfg, parallel_mode="fsdp" if fsdp else "ddp", info=info, out_dir=out_dir)
        result = trainer.train(resume=resume)
        if info.is_main:
            print(json.dumps(result))
    finally:
        parallel.shutdown()
    return 0


def gemm_peak_gflops(n: int = 2048, reps: int = 4, trials: int = 3) -> tuple[float, float]:
    """Best fp32 torch.mm throughput on n x n matrices: (per wall-clock second, per process CPU second)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    wall = cpu = 0.0
    for _ in range(trials):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(reps):
            torch.mm(a, b)
        flops = 2 * n**3 * reps / 1e9
        wall = max(wall, flops / (time.perf_counter() - t))
        cpu = max(cpu, flops / (time.process_time() - c))
    return wall, cpu


def cmd_bench_train(args) -> int:
    """Tokens/s of the real training step (synthetic data, AdamW, clipping) and MFU against the fp32 GEMM
    peak measured in the same run, before and after (the better of the two: a conservative MFU).
    The machine may be shared: the same figures per process CPU-second are reported beside the
    wall-clock ones, with the load average, since CPU time is far less sensitive to other processes."""
    import torch

    from training.config import TrainConfig
    from training.trainer import Trainer

    preset = PRESETS[args.preset]
    if args.preset.startswith("cm3leon"):
        raise BadInputError("the paper presets are for planning (tessera model info); bench tiny or shapes")
    torch.set_num_threads(args.threads)
    seq_len = args.seq_len or min(320, preset.max_seq_len)
    vocab = args.vocab_size or preset.vocab_size
    cfg = TrainConfig.from_dict(
        {
            "model": {"preset": args.preset},
            "batch": {"micro_batch": args.micro_batch, "grad_accum": 1, "seq_len": seq_len},
            "run": {"steps": args.steps + 2, "eval_every": 0, "ckpt_every": 0, "threads": args.threads},
            "data": {"kind": "synthetic", "vocab_size": vocab},
        }
    )
    load = os.getloadavg()[0]
    peaks = [gemm_peak_gflops(args.gemm_size)]
    trainer = Trainer(cfg, parallel_mode="none")
    wall = cpu = 0.0
    for step in range(1, args.steps + 3):
        t, c = time.perf_counter(), time.process_time()
        trainer.forward_backward(step)
        trainer.clip_and_update(step)
        if step > 2:  # the first steps allocate and warm up
            wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
    peaks.append(gemm_peak_gflops(args.gemm_size))
    peak_wall, peak_cpu = max(p[0] for p in peaks), max(p[1] for p in peaks)
    tokens = trainer.tokens_per_step * args.steps
    flops = trainer.flops_per_token * tokens / 1e9
    result = {
        "preset": args.preset,
        "tokens_per_s": round(tokens / wall, 1),
        "mfu": round(flops / wall / peak_wall, 4),
        "gemm_peak_gflops": round(peak_wall, 1),
        "achieved_gflops": round(flops / wall, 1),
        "tokens_per_cpu_s": round(tokens / cpu, 1),
        "mfu_cpu_time": round(flops / cpu / peak_cpu, 4),
        "gemm_peak_gflops_per_cpu_s": round(peak_cpu, 1),
        "params": trainer.n_params,
        "flops_per_token": trainer.flops_per_token,
        "vocab_size": vocab,
        "micro_batch": args.micro_batch,
        "seq_len": seq_len,
        "threads": args.threads,
        "load_avg_1m": round(load, 2),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")
    return 0
