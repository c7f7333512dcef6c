"""Train the retriever bi-encoder (engine/nn/retriever.py) on caption-image pairs and export
both encoders to ONNX for the torch-free runtime (engine/retriever.py).

    tessera train retriever --data shapes --out runs/retriever

Shapes World: `scenes` train scenes are rendered once; every step draws a fresh paraphrase of
each caption with `caption(scene, rng)`, so the text side never sees the same string twice in a
row. A folder dataset trains on its captioned images. The run folder holds

    checkpoints/       model, optimizer and RNG in safetensors + JSON (training/checkpoint.py), for --resume
    log.jsonl          one line per logged step
    config.json, retriever.safetensors, text_encoder.onnx, image_encoder.onnx   the retriever
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from engine.errors import BadInputError
from engine.io import atomic_write, atomic_write_text
from engine.nn.retriever import BiEncoder, RetrieverConfig
from engine.retriever import CONFIG_FILE, FORMAT, IMAGE_IO, TEXT_IO, OnnxRetriever, encode_bytes
from training import checkpoint


@dataclass
class RetrieverTrainConfig:
    data: str = "shapes"  # "shapes" or a folder of captioned images
    out: str = "runs/retriever"
    steps: int = 1200
    batch_size: int = 192
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 60
    scenes: int = 24_000  # Shapes World train scenes rendered once (captions are re-drawn every step)
    seed: int = 0
    threads: int = 2
    log_every: int = 50
    ckpt_every: int = 200
    eval_n: int = 1000  # Shapes World test pairs for recall@k
    model: RetrieverConfig = field(default_factory=RetrieverConfig)


class PairData:
    """Caption-image training pairs; `batch(step)` is a pure function of (seed, step)."""

    def __init__(self, cfg: RetrieverTrainConfig) -> None:
        self.seed, self.batch_size = cfg.seed, cfg.batch_size
        size = cfg.model.image_size
        if cfg.data == "shapes":
            from training.data.shapes import ShapesWorld, caption

            world = ShapesWorld("train", seed=cfg.seed, size=size)
            self.scenes = [world.scene(i) for i in range(cfg.scenes)]
            self.images = world.batch(range(cfg.scenes))
            self._caption = caption
            self.texts = None
        else:
            from training.data.folder import FolderDataset

            ds = FolderDataset(cfg.data, size=size)
            keep = [i for i, (_, text) in enumerate(ds.items) if text.strip()]
            if len(keep) < 2:
                raise BadInputError(f"{cfg.data}: need at least 2 captioned images, found {len(keep)}")
            self.images = ds.batch(keep)
            self.texts = [ds.items[i][1] for i in keep]
            for item in ds.report["skipped"]:
                print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, step: int) -> tuple[list[str], np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        idx = rng.choice(len(self), size=min(self.batch_size, len(self)), replace=False)
        if self.texts is not None:
            texts = [self.texts[i] for i in idx]
        else:
            texts = [self._caption(self.scenes[i], rng) for i in idx]
        order = np.argsort([len(t) for t in texts], kind="stable")  # pairs stay pairs; see length_chunks
        return [texts[i] for i in order], self.images[idx[order]]


def length_chunks(texts: list[str], max_bytes: int, chunks: int = 4) -> list[torch.Tensor]:
    """Byte ids of consecutive slices of `texts` (sorted by length by PairData.batch), each padded
    only to its own longest caption."""
    step = -(-len(texts) // chunks)
    return [torch.from_numpy(encode_bytes(texts[i:i + step], max_bytes)) for i in range(0, len(texts), step)]


def lr_at(step: int, cfg: RetrieverTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def make_optimizer(model: BiEncoder, cfg: RetrieverTrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def train(cfg: RetrieverTrainConfig, resume: bool = False, quiet: bool = False) -> tuple[BiEncoder, dict]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = BiEncoder(cfg.model)
    opt = make_optimizer(model, cfg)
    start = 0
    if (out / "checkpoint.pt").is_file():  # written by older versions: a pickle, never loaded
        raise BadInputError(f"{out / 'checkpoint.pt'} is a pickle checkpoint of an older version, which "
                            "Tessera does not load: delete it and train again")
    if resume and checkpoint.latest_checkpoint(out) is not None:
        model_state, optim_state, state = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(out))
        model.load_state_dict(model_state)
        # optimizer state keys are parameter numbers (JSON turned them into strings)
        opt.load_state_dict({**optim_state, "state": {int(k): v for k, v in optim_state["state"].items()}})
        start = int(state["step"])
    t0 = time.time()
    data = PairData(cfg)
    if not quiet:
        print(f"retriever: {len(data)} pairs ready in {time.time() - t0:.1f}s", file=sys.stderr)
    t0, last = time.time(), {}
    model.train()
    for step in range(start, cfg.steps):
        texts, images = data.batch(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss, acc = model(length_chunks(texts, cfg.model.max_bytes), torch.from_numpy(images))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last = {"step": step + 1, "loss": round(loss.item(), 4), "acc": round(acc.item(), 4),
                "temperature": round(1 / model.logit_scale.exp().item(), 4), "s": round(time.time() - t0, 1)}
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(last) + "\n")
            if not quiet:
                print(f"step {last['step']}/{cfg.steps} loss {last['loss']:.3f} acc {last['acc']:.3f} "
                      f"{last['s']:.0f}s", file=sys.stderr)
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            checkpoint.save_checkpoint(out, step + 1, model.state_dict(), opt.state_dict(),
                                       {"model": cfg.model.to_dict()}, keep=1)
    model.eval()
    return model, {**last, "train_s": round(time.time() - t0, 1)}


@torch.no_grad()
def recall_at(model: BiEncoder, texts: list[str], images: np.ndarray, ks=(1, 5), batch: int = 250) -> dict:
    """Text->image and image->text recall@k over a pool of matching pairs (row i matches row i)."""
    t = torch.cat([model.text(torch.from_numpy(encode_bytes(texts[i:i + batch], model.cfg.max_bytes)))
                   for i in range(0, len(texts), batch)])
    v = torch.cat([model.image(torch.from_numpy(images[i:i + batch])) for i in range(0, len(images), batch)])
    sim = (t @ v.T).numpy()
    truth = np.diag(sim)
    rank_t2i = (sim - truth[:, None] > 0).sum(1)  # how many images beat the right one
    rank_i2t = (sim - truth[None, :] > 0).sum(0)  # how many captions beat the right one
    out = {}
    for k in ks:
        out[f"t2i_recall@{k}"] = round(float((rank_t2i < k).mean()), 4)
        out[f"i2t_recall@{k}"] = round(float((rank_i2t < k).mean()), 4)
    return out


def shapes_eval_set(n: int, size: int, split: str = "test") -> tuple[list[str], np.ndarray]:
    from training.data.shapes import ShapesWorld

    world = ShapesWorld(split, size=size)
    samples = [world.sample(i) for i in range(min(n, len(world)))]
    return [s.caption for s in samples], np.stack([s.image for s in samples])


# ---- export ----------------------------------------------------------------------------------------
def _onnx(module: torch.nn.Module, example: torch.Tensor, io: tuple[str, str, str], shapes: dict,
          path: Path) -> None:
    def write(tmp: str) -> None:
        torch.onnx.export(module, (example,), tmp, input_names=[io[0]], output_names=[io[1]],
                          dynamic_shapes=(shapes,), dynamo=True, external_data=False, verbose=False)

    atomic_write(path, write)


def export(model: BiEncoder, out: str | Path, metrics: dict | None = None) -> dict:
    """Write config.json, retriever.safetensors, text_encoder.onnx, image_encoder.onnx and check
    ONNX Runtime against torch; returns the parity figures (also stored in config.json)."""
    out = Path(out)
    model = model.eval()
    cfg = model.cfg
    eighth = torch.export.Dim("length_div_8", min=1, max=cfg.max_bytes // 8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    ids = torch.from_numpy(encode_bytes(["a red circle", "a blue star at the top left"], cfg.max_bytes))
    images = torch.randint(0, 256, (2, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
    _onnx(model.text, ids, TEXT_IO, {0: batch, 1: 8 * eighth}, out / TEXT_IO[2])
    _onnx(model.image, images, IMAGE_IO, {0: batch}, out / IMAGE_IO[2])
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "retriever.safetensors", lambda tmp: save_file(weights, tmp))
    config = {"format": FORMAT, "kind": "tessera-biencoder", "model": cfg.to_dict(), "dim": cfg.dim,
              "image_size": cfg.image_size, "max_bytes": cfg.max_bytes,
              "text": {"file": TEXT_IO[2], "input": TEXT_IO[0], "output": TEXT_IO[1]},
              "image": {"file": IMAGE_IO[2], "input": IMAGE_IO[0], "output": IMAGE_IO[1]},
              "metrics": metrics or {}}
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2))
    config["parity"] = parity(model, out)
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2))
    return config["parity"]


@torch.no_grad()
def parity(model: BiEncoder, out: Path, seed: int = 0) -> dict:
    """max |torch - ONNX Runtime| over embeddings of varied captions (lengths 1..180 bytes) and images."""
    rng = np.random.default_rng(seed)
    texts = ["x", "a red circle", "ünïcödé ★ shapes", "a small blue square at the top left and " * 4]
    images = rng.integers(0, 256, (5, model.cfg.image_size, model.cfg.image_size, 3), dtype=np.uint8)
    rt = OnnxRetriever.load(out)
    torch_t = model.text(torch.from_numpy(encode_bytes(texts, model.cfg.max_bytes))).numpy()
    torch_i = model.image(torch.from_numpy(images)).numpy()
    return {"text_max_abs_diff": float(np.abs(rt.embed_texts(texts) - torch_t).max()),
            "image_max_abs_diff": float(np.abs(rt.embed_images(images) - torch_i).max())}


def run(cfg: RetrieverTrainConfig, resume: bool = False, quiet: bool = False) -> dict:
    """Train, evaluate recall on Shapes World test (for shapes data), export; return the report."""
    model, summary = train(cfg, resume=resume, quiet=quiet)
    shapes_only = () if cfg.data == "shapes" else ("scenes", "eval_n")
    metrics = {"train": summary,
               "config": {k: v for k, v in asdict(cfg).items() if k not in ("model", *shapes_only)}}
    if cfg.data == "shapes":
        texts, images = shapes_eval_set(cfg.eval_n, cfg.model.image_size)
        metrics["shapes_test"] = {"pool": len(texts), **recall_at(model, texts, images)}
    metrics["parity"] = export(model, cfg.out, metrics)
    return metrics
