"""Retrieval ablation at equal compute: pretrain the `shapes` preset from scratch with k = 0 and
k = 2 retrieved documents and compare the validation loss on the query document's tokens.

    python bench/retrieval_ablation.py [--base recipes/shapes.toml] [--steps 300] [--out runs/ablation]

Equal compute means equal tokens through the model per step (micro_batch x seq_len) and equal steps:
k = 2 rows are 320 tokens (two retrieved documents and the query), k = 0 rows hold the query alone, so
that run takes shorter rows and proportionally more of them. Validation retrieves from the training
corpus (k = 2) or not at all (k = 0), with no CM3 masking, and scores only the query's tokens
(training/data/sequences.py). Prints one JSON object; the curves go to <out>/k<k>/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from training.config import TrainConfig
from training.model_commands import run_training

# A Shapes World document is 64 image ids, <break> and a caption of 18 tokens (median; 36 at the
# 99th percentile, 41 at most): with <eos> around it and CM3 sentinels a k = 0 row fits in 112.
ROW_TOKENS = {0: 112, 2: 320}


def ablation_config(base: TrainConfig, k: int, steps: int, out: Path, threads: int) -> TrainConfig:
    cfg = copy.deepcopy(base)
    tokens_per_step = base.batch.micro_batch * base.batch.seq_len
    cfg.batch.seq_len = ROW_TOKENS[k]
    cfg.batch.micro_batch = round(tokens_per_step / ROW_TOKENS[k])
    cfg.data.params["k"] = k
    cfg.run.steps, cfg.run.eval_every, cfg.run.ckpt_every = steps, max(1, steps // 6), steps
    cfg.run.eval_batches = 8
    cfg.run.out_dir, cfg.run.threads = str(out / f"k{k}"), threads
    cfg.optim.warmup = min(cfg.optim.warmup, steps // 10)
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="recipes/shapes.toml")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("runs/ablation"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    base = TrainConfig.from_toml(args.base)
    result: dict = {"steps": args.steps}
    for k in (0, 2):
        cfg = ablation_config(base, k, args.steps, args.out, args.threads)
        t0 = time.perf_counter()
        run_training(cfg)
        metrics = Path(cfg.run.out_dir) / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        val = [(r["step"], round(r["val_loss"], 4)) for r in rows if "val_loss" in r]
        result[f"k{k}"] = {"micro_batch": cfg.batch.micro_batch, "seq_len": cfg.batch.seq_len,
                           "tokens": rows[-1]["tokens"], "seconds": round(time.perf_counter() - t0, 1),
                           "val_loss_curve": val, "final_val_loss": val[-1][1]}
    gain = result["k0"]["final_val_loss"] - result["k2"]["final_val_loss"]
    result["query_loss_gain_k2_vs_k0"] = round(gain, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
