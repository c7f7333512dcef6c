"""Where a recipe's tokens go: per task, the share of positions and of loss (output) tokens.

    python bench/mixture_shares.py [RECIPE.toml ...] [--n 300] [--json]

With the loss on outputs only, a task's share of the loss is weight x output length, not its weight:
a caption or a VQA answer costs a whole input image of positions for a few loss tokens. This is the
measurement the mixture weights in recipes/shapes-sft.toml are set from (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import tomllib


def shares(weights: dict[str, float], n: int = 300, seed: int = 0) -> dict:
    from engine.instructions import Task
    from training.data.sft_source import shapes_sft

    source = shapes_sft("train", 256, seed, weights=weights)
    data = source.mixture.data
    rows = {}
    for task, weight in weights.items():
        if weight <= 0:
            continue
        lengths = [(ex.ids.size, ex.ids.size - ex.prompt_len)
                   for ex in (data.example(Task(task), i) for i in range(n))]
        size, out = np.mean(lengths, axis=0)
        rows[task] = {"weight": weight, "tokens": float(size), "output": float(out)}
    total_w = sum(r["weight"] for r in rows.values())
    pos = sum(r["weight"] * r["tokens"] for r in rows.values())
    loss = sum(r["weight"] * r["output"] for r in rows.values())
    for r in rows.values():
        r["doc_share"] = round(r["weight"] / total_w, 4)
        r["position_share"] = round(r["weight"] * r["tokens"] / pos, 4)
        r["loss_share"] = round(r["weight"] * r["output"] / loss, 4)
        r["tokens"], r["output"] = round(r["tokens"], 1), round(r["output"], 1)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipes", nargs="*", default=["recipes/shapes-sft.toml"])
    p.add_argument("--n", type=int, default=300, help="examples per task")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for path in args.recipes:
        with open(path, "rb") as f:
            weights = tomllib.load(f)["data"]["weights"]
        rows = shares(weights, args.n)
        if args.json:
            print(json.dumps({"recipe": path, "tasks": rows}))
            continue
        print(f"{path}\n| task | weight | tokens | output | documents (= loss per document) | positions | "
              "loss per token |\n|---|---|---|---|---|---|---|")
        for task, r in rows.items():
            print(f"| {task} | {r['weight']} | {r['tokens']} | {r['output']} | {r['doc_share']:.3f} | "
                  f"{r['position_share']:.3f} | {r['loss_share']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
