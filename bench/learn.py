"""Learning speed: real tokens to quality, one training design against another (`tessera bench learn`).

Each design trains the `shapes` model from scratch on the text->image + captioning mixture of
Shapes World for the same budget of *real* (non-pad) tokens, then every checkpoint is scored on
fixed sets: image NLL (nats per image token) of 64 validation caption->image documents given their
caption, compositional accuracy (the judge reads 50 images generated from the quick suite's test
captions, through the engine's own decoding: CFG 3, top-p 0.9, one candidate, no retrieval) and
caption exact match on 50 test images, and the judge-feature FID of those 50 images against 50 real
validation images (biased at n = 50, but the same n for every design). Object recall (the share of
asked objects the judge finds with their kind, colour and cell) gives partial credit before any design
composes a whole scene. Unlike NLL, recall and FID compare runs on different image tokenizers
(--image-tokenizer; default the shipped one).
The figure of merit is real tokens to a target, not wall time (nanoGPT speedrun style); every design
here costs the same per token.

Designs (training/data/sft_source.py explains the layouts):
    packed       the first design: packed rows, loss on every token, CM3 transform 0.25
    output-loss  loss on each document's output only (no CM3 transform)
    separate     + each document its own positions and attention in the packed row
    cells        + a learned row/column embedding of the grid cell of image and segmentation tokens
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

DESIGNS: dict[str, tuple[dict, dict]] = {  # name -> ([data] keys, [model] keys)
    "packed": ({"cm3_prob": 0.25, "loss": "all", "separate_docs": False}, {}),
    "output-loss": ({"loss": "output", "separate_docs": False}, {}),
    "separate": ({"loss": "output", "separate_docs": True}, {}),
    "cells": ({"loss": "output", "separate_docs": True}, {"grid_rows": 8, "grid_cols": 8}),
}
MIXTURE = {"t2i": 3.0, "caption": 1.0}
SEQ_LEN, MICRO_BATCH = 256, 16


def train_config(design: str, out: Path, steps: int, lr: float, threads: int, checkpoints: int,
                 mixture: dict[str, float], image_tokenizer: str | None = None):
    from training.config import TrainConfig

    data, model = DESIGNS[design]
    if image_tokenizer:
        data = {**data, "image_tokenizer": image_tokenizer}
    every = max(1, steps // checkpoints)
    return TrainConfig.from_dict({
        "model": {"preset": "shapes", **model},
        "optim": {"lr": lr, "min_lr": lr / 10, "warmup": min(100, steps // 10 + 1), "weight_decay": 0.1,
                  "grad_clip": 1.0},
        "batch": {"micro_batch": MICRO_BATCH, "grad_accum": 1, "seq_len": SEQ_LEN},
        "run": {"steps": steps, "eval_every": every, "eval_batches": 2, "ckpt_every": every,
                "keep_ckpts": checkpoints + 1, "seed": 0, "out_dir": str(out), "threads": threads},
        "data": {"kind": "shapes-sft", "weights": mixture, "cond_dropout": 0.1, **data},
    })


def real_tokens_per_step(cfg, probe_steps: int = 8) -> float:
    """Mean non-pad input tokens of the first steps' batches (the data is a pure function of the step)."""
    from training.sources import build_source

    source = build_source(cfg.data, "train", cfg.batch.seq_len, cfg.run.seed)
    real = [int((source.batch(s, 0, 0, 1, cfg.batch.micro_batch)[0] != source.vocab.pad).sum())
            for s in range(1, probe_steps + 1)]
    return float(np.mean(real))


class Scorer:
    """The fixed evaluation sets and the engine pieces that score a checkpoint."""

    def __init__(self, n: int = 50, nll_docs: int = 64, image_tokenizer: str | None = None) -> None:
        from engine.engine import Engine
        from engine.image_tokenizer import ImageTokenizer
        from engine.instructions import prompt
        from training.data.shapes import ShapesWorld
        from training.eval.judge import Judge
        from training.eval.suite import compositional_scenes

        self.engine = Engine.load()  # the shipped bundle's text tokenizer and vocabulary
        if image_tokenizer:  # same codebook size, so the same vocabulary
            self.engine.image_tokenizer = ImageTokenizer.load(image_tokenizer)
        self.judge = Judge.load()
        size = int(self.engine.image_tokenizer.image_size)
        self.samples = compositional_scenes("test", n, size)
        real = np.stack([s.image for s in compositional_scenes("val", n, size)])
        self.reference = self.judge.features(real)
        v, text = self.engine.vocab, self.engine.text_tokenizer
        world = ShapesWorld("val", seed=1_000_003)
        scenes = [world.sample(i) for i in range(nll_docs)]
        codes = self.engine.image_tokenizer.encode(np.stack([s.image for s in scenes])).reshape(nll_docs, -1)
        self.nll_docs = [(prompt("t2i", v, text, text=s.caption), v.image_ids(c))
                         for s, c in zip(scenes, codes, strict=True)]

    def image_nll(self, model, grid) -> float:
        import torch

        from engine.backends import cells_of

        total, count = 0.0, 0
        with torch.no_grad():
            for head, image in self.nll_docs:
                ids = np.concatenate([head, image])[None]
                cells = torch.from_numpy(cells_of(grid, ids)) if grid is not None else None
                logits, _ = model(torch.from_numpy(ids), cells=cells)
                logp = torch.log_softmax(logits[0, len(head) - 1: -1].float(), dim=-1)
                total -= float(logp[torch.arange(len(image)), torch.from_numpy(image)].sum())
                count += len(image)
        return total / count

    def score(self, model) -> dict:
        from engine.backends import GridCells, TorchBackend
        from training.eval.fid import fid
        from training.eval.suite import Decoding, EngineTasks, caption_exact, compositional

        grid = GridCells.of(self.engine.vocab) if model.config.grid_rows else None
        self.engine.backend = TorchBackend(model.eval(), max_batch=4, grid=grid)
        tasks = EngineTasks(self.engine, Decoding(n=1, retrieve=0))  # fixed, whatever the studio does
        comp = compositional(tasks.generate, self.judge, self.samples)
        return {"image_nll": round(self.image_nll(model, grid), 4), "compositional": comp["acc"],
                "object_recall": round(comp["object_recall"], 4),
                "fid": round(fid(comp["pred"].features, self.reference), 2),
                "caption_exact": caption_exact(tasks.caption, self.samples)}


def run(design: str, tokens: float, out: str | Path, *, lr: float = 1e-3, threads: int = 2,
        checkpoints: int = 4, mixture: dict[str, float] | None = None, n: int = 50,
        image_tokenizer: str | None = None, log=print) -> dict:
    """Train `design` for `tokens` real tokens into `out` (resumable), then score every checkpoint."""
    import torch

    from engine.errors import BadInputError
    from training.checkpoint import load_model_source
    from training.trainer import Trainer

    if design not in DESIGNS:
        raise BadInputError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")
    if not (math.isfinite(tokens) and tokens > 0 and math.isfinite(lr) and lr > 0):
        raise BadInputError(f"--tokens and --lr must be positive numbers, got {tokens} and {lr}")
    out = Path(out)
    mixture = mixture or MIXTURE
    probe = train_config(design, out, 1, lr, threads, 1, mixture, image_tokenizer)
    per_step = real_tokens_per_step(probe)
    steps = checkpoints * math.ceil(tokens / per_step / checkpoints)  # the last checkpoint is the end
    cfg = train_config(design, out, steps, lr, threads, checkpoints, mixture, image_tokenizer)
    log(f"[learn] {design}: {steps} steps x {SEQ_LEN * MICRO_BATCH} positions, "
        f"~{per_step:.0f} real tokens/step")
    t0 = time.time()
    Trainer(cfg).train(resume=(out / "checkpoints").exists())
    train_s = time.time() - t0
    torch.set_num_threads(threads)
    from engine.nn.transformer import ModelConfig, Transformer

    scorer, points = Scorer(n=n, image_tokenizer=image_tokenizer), []
    for folder in sorted((out / "checkpoints").glob("step-*")):
        state, model_cfg = load_model_source(folder)
        model = Transformer(ModelConfig.from_dict(model_cfg))
        model.load_state_dict(state)
        info = json.loads((folder / "state.json").read_text())
        point = {"step": info["step"], **info.get("counts", {}), **scorer.score(model)}
        log(f"[learn] {design} {json.dumps(point)}")
        points.append(point)
    return {"design": design, "image_tokenizer": image_tokenizer or "shipped", "lr": lr, "mixture": mixture,
            "steps": steps, "train_seconds": round(train_s), "points": points}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--design", choices=list(DESIGNS), default="cells")
    p.add_argument("--tokens", type=float, default=1e6)
    p.add_argument("--out", required=True)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoints", type=int, default=4)
    p.add_argument("--image-tokenizer", default=None)
    args = p.parse_args(argv)
    result = run(args.design, args.tokens, args.out, lr=args.lr, threads=args.threads,
                 checkpoints=args.checkpoints, image_tokenizer=args.image_tokenizer,
                 log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
