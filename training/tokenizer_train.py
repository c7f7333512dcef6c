"""Train the VQ image tokenizer, checkpoint it resumably, export encoder/decoder to ONNX.

Output folder layout:
  checkpoint.json + checkpoint-<step>.safetensors   resumable state (JSON names the tensors file)
  train_log.jsonl                                   one line per log interval
  config.json, image_tokenizer.safetensors, encoder.onnx, decoder.onnx   the finished tokenizer
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from engine.errors import BadInputError, TesseraError
from engine.io import atomic_write, atomic_write_text
from engine.nn.vqvae import DecoderGraph, EncoderGraph, VQConfig, VQModel

ENCODER_IO = ("images", "codes")  # ONNX input, output names
DECODER_IO = ("codes", "images")
FORMAT = "tessera-image-tokenizer/1"


@dataclass
class TrainConfig:
    data: str = "shapes"  # "shapes" or a folder of images
    out: str = "runs/tokenizer"
    steps: int = 3500
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # without it, 2 of 2 runs at lr 2e-3 diverged (loss 0.1 -> 10) near step 200-600
    edge_weight: float = 0.5  # L1 on image gradients: cheap sharpness prior (no LPIPS weights offline)
    # Decoder refinement: start from this exported tokenizer, train only the decoder (deepened to the
    # VQConfig's up_blocks) on MSE. Encoder and codebook stay frozen, so every image keeps its codes
    # and a transformer trained on them stays valid.
    refine_from: str | None = None
    kmeans_batches: int = 8
    kmeans_iters: int = 10
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 250
    threads: int = 2


# ---- data ------------------------------------------------------------------------------------------
class ImageSource:
    """Training images as a pure function of (seed, step): exact resume needs no data state."""

    def __init__(self, data: str, size: int, seed: int):
        self.seed = seed
        if data == "shapes":
            from training.data.shapes import ShapesWorld

            world = ShapesWorld("train", seed=seed, size=size)
            self._get = lambda idx: world.batch(idx)
            self._sequential = True
        else:
            if not Path(data).is_dir():
                raise BadInputError(f"--data must be 'shapes' or a folder of images; {data!r} is neither")
            from training.data.folder import FolderDataset

            ds = FolderDataset(data, size)
            if len(ds) == 0:
                raise BadInputError(f"no readable images in {data}")
            self._len = len(ds)
            self._get = ds.batch
            self._sequential = False

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        if self._sequential:  # the infinite train split: each step sees fresh scenes
            idx = np.arange(step * batch_size, (step + 1) * batch_size)
        else:
            idx = np.random.default_rng([self.seed, step]).integers(self._len, size=batch_size)
        return self._get(idx)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB on the 0..255 scale, for tensors in [-1, 1]."""
    mse = (recon.clamp(-1, 1) - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def edge_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    def grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]

    (ry, rx), (ty, tx) = grads(recon), grads(target)
    return F.l1_loss(ry, ty) + F.l1_loss(rx, tx)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # Weight decay on conv weights only, not on norms and biases. (The codebook is an EMA buffer.)
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99))


def deepen_decoder(model: VQModel, up_blocks: int, pixel_channels: int | None = None,
                   pixel_blocks: int | None = None) -> VQModel:
    """A copy of a patch-layout tokenizer whose decoder has `up_blocks` residual blocks beyond the
    encoder's and, when `pixel_channels` is set, a full-resolution head (engine/nn/vqvae.PixelHead).

    New blocks are appended after the existing ones with a zero second conv and a new head's last conv
    is zero, so they start as the identity: the copy decodes exactly like the original until it is
    trained. A head the source already has is kept as it is."""
    old = model.cfg
    if old.arch != "patch":
        raise BadInputError("decoder refinement needs a patch-layout tokenizer")
    if up_blocks < old.up_blocks:
        raise BadInputError(f"up_blocks {up_blocks} < the source's {old.up_blocks}: a decoder only grows")
    head = {"pixel_channels": old.pixel_channels if pixel_channels is None else pixel_channels,
            "pixel_blocks": old.pixel_blocks if pixel_blocks is None else pixel_blocks}
    if old.pixel_channels and (head["pixel_channels"], head["pixel_blocks"]) != (old.pixel_channels,
                                                                                old.pixel_blocks):
        raise BadInputError("the source decoder already has a pixel head of another shape")
    new = VQModel(VQConfig.from_dict({**asdict(old), "up_blocks": up_blocks, **head}))
    new.encoder.load_state_dict(model.encoder.state_dict())
    new.quantizer.load_state_dict(model.quantizer.state_dict())
    src, dst = list(model.decoder.net), list(new.decoder.net)
    kept = old.res_blocks + old.up_blocks
    with torch.no_grad():
        for i in range(1 + kept):  # the input conv and the existing blocks
            dst[i].load_state_dict(src[i].state_dict())
        for block in dst[1 + kept:-3]:
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
        dst[-2].load_state_dict(src[-2].state_dict())  # the 1x1 conv before the pixel shuffle
        if model.decoder.head is not None:
            new.decoder.head.load_state_dict(model.decoder.head.state_dict())
    return new


# ---- checkpoints -----------------------------------------------------------------------------------
def save_checkpoint(out: Path, model: VQModel, opt: torch.optim.Optimizer, step: int, state: dict) -> None:
    """Tensors to checkpoint-<step>.safetensors, then checkpoint.json (the commit point) names it."""
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).contiguous()
    name = f"checkpoint-{step:07d}.safetensors"
    atomic_write(out / name, lambda tmp: save_file(tensors, tmp))
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    meta = {"format": FORMAT, "step": step, "tensors": name, "optimizer_groups": groups, **state}
    atomic_write_text(out / "checkpoint.json", json.dumps(meta, indent=2))
    for old in out.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink()


def load_checkpoint(out: Path, model: VQModel, opt: torch.optim.Optimizer) -> dict:
    meta = json.loads((out / "checkpoint.json").read_text())
    tensors = load_file(out / meta["tensors"])
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    sd["state"] = state
    for group, saved in zip(sd["param_groups"], meta["optimizer_groups"], strict=True):
        group.update(saved)
    opt.load_state_dict(sd)
    return meta


# ---- training --------------------------------------------------------------------------------------
def train(cfg: TrainConfig, vq: VQConfig, resume: bool = False, quiet: bool = False,
          until: int | None = None) -> VQModel:
    """Train to cfg.steps (or pause, checkpointed, after step `until`; the LR schedule still spans
    cfg.steps, so a paused run resumed later matches an uninterrupted one exactly)."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    has_ckpt = (out / "checkpoint.json").exists()
    if has_ckpt and not resume:
        raise TesseraError(f"{out} already holds a checkpoint; pass --resume to continue, or another --out")
    if has_ckpt:
        meta = json.loads((out / "checkpoint.json").read_text())
        vq = VQConfig.from_dict(meta["vq_config"])  # the checkpoint's architecture wins
    torch.manual_seed(cfg.seed)
    refine = cfg.refine_from is not None
    if refine and not has_ckpt:
        model = deepen_decoder(load_model(cfg.refine_from), vq.up_blocks, vq.pixel_channels, vq.pixel_blocks)
    else:
        model = VQModel(vq)
    opt = make_optimizer(model.decoder if refine else model, cfg)
    source = ImageSource(cfg.data, vq.image_size, cfg.seed)
    step, elapsed = 0, 0.0
    if has_ckpt:
        meta = load_checkpoint(out, model, opt)
        step, elapsed = meta["step"], meta["train_seconds"]
    elif not refine:
        with torch.no_grad():  # k-means init from the first batches, before any training
            feats = [model.encoder_features(to_tensor(source.batch(s, cfg.batch_size)))
                     for s in range(cfg.kmeans_batches)]
        model.quantizer.init_codebook(torch.cat(feats), cfg.kmeans_iters, cfg.seed)
    state = {"vq_config": asdict(vq), "train_config": asdict(cfg)}

    model.train()
    usage = torch.zeros(vq.codebook_size, dtype=torch.long)
    window = {"loss": 0.0, "psnr": 0.0, "restarts": 0, "n": 0}
    bar = tqdm(total=cfg.steps, initial=step, desc="tokenizer", file=sys.stderr, disable=quiet,
               dynamic_ncols=True)
    t0 = time.perf_counter() - elapsed
    stop = cfg.steps if until is None else min(until, cfg.steps)
    while step < stop:
        x = to_tensor(source.batch(step, cfg.batch_size))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        if refine:  # frozen codes; the decoder alone learns, on MSE (what PSNR measures)
            codes = model.encode(x)
            recon = model.decoder(model.quantizer.embed(codes))
            loss = F.mse_loss(recon, x)
        else:
            o = model(x)
            codes, recon = o.codes, o.recon
            loss = F.mse_loss(recon, x) + F.l1_loss(recon, x) + o.vq_loss
            if cfg.edge_weight:
                loss = loss + cfg.edge_weight * edge_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        restarted = 0
        if not refine:
            restarted = model.quantizer.restart_dead_codes(o.flat, seed=cfg.seed * 1_000_003 + step)
        step += 1

        usage += torch.bincount(codes.flatten(), minlength=vq.codebook_size)
        window["loss"] += loss.item()
        window["psnr"] += psnr(recon.detach(), x).mean().item()
        window["restarts"] += restarted
        window["n"] += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == stop:
            n = window["n"]
            row = {"step": step, "loss": window["loss"] / n, "psnr_db": window["psnr"] / n,
                   "usage": (usage > 0).float().mean().item(), "restarts": window["restarts"],
                   "lr": lr_at(step - 1, cfg), "seconds": round(time.perf_counter() - t0, 1)}
            bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr_db']:.2f}",
                            usage=f"{row['usage']:.0%}", dead=row["restarts"])
            with open(out / "train_log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            usage.zero_()
            window = {"loss": 0.0, "psnr": 0.0, "restarts": 0, "n": 0}
        if step % cfg.ckpt_every == 0 or step == stop:
            save_checkpoint(out, model, opt, step, {**state, "train_seconds": time.perf_counter() - t0})
    bar.close()
    model.eval()
    return model


# ---- export ----------------------------------------------------------------------------------------
def _export(module: torch.nn.Module, example: torch.Tensor, io: tuple[str, str], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)

    def write(tmp: str) -> None:
        torch.onnx.export(module, (example,), tmp, input_names=[io[0]], output_names=[io[1]],
                          dynamic_shapes={io[0]: {0: batch}}, dynamo=True, external_data=False,
                          verbose=False)
        store_weights_fp16(tmp)

    atomic_write(path, write)


def store_weights_fp16(path: str | Path, min_elements: int = 1024) -> None:
    """Store a graph's large float32 weights as float16, each behind a Cast back to float32: half the
    file, and ONNX Runtime folds the casts once when it loads the graph. Only weights float16 holds
    exactly are converted (`export` rounds the parameters first; constants the exporter folded, such
    as the normalised codebook, are not exact and stay float32), so the graph computes the same."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT or math.prod(init.dims) < min_elements:
            continue
        name, weights = init.name, numpy_helper.to_array(init)
        if not np.array_equal(weights.astype(np.float16).astype(np.float32), weights):
            continue
        half = numpy_helper.from_array(weights.astype(np.float16), f"{name}.fp16")
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT))
    for node in reversed(casts):
        model.graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


def export(model: VQModel, out: str | Path, extra: dict | None = None) -> dict:
    """Write config.json, image_tokenizer.safetensors, encoder.onnx, decoder.onnx; return parity figures.

    The safetensors copy is float16 (it would otherwise double the asset's size). The weights are
    rounded to float16 once, here, before the ONNX export too, so both files hold the same numbers.
    """
    out = Path(out)
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    cfg = model.cfg
    h, w = cfg.grid
    images = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    codes = torch.randint(cfg.codebook_size, (2, h, w))
    _export(EncoderGraph(model).eval(), images, ENCODER_IO, out / "encoder.onnx")
    _export(DecoderGraph(model).eval(), codes, DECODER_IO, out / "decoder.onnx")
    weights = {k: (v.half() if v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}
    atomic_write(out / "image_tokenizer.safetensors", lambda tmp: save_file(weights, tmp))
    config = {
        "format": FORMAT, "vq": asdict(cfg), "grid": list(cfg.grid),
        "pixels": "float32 NCHW RGB in [-1, 1]", "weights": "image_tokenizer.safetensors (float16)",
        "encoder": {"file": "encoder.onnx", "input": ENCODER_IO[0], "output": ENCODER_IO[1]},
        "decoder": {"file": "decoder.onnx", "input": DECODER_IO[0], "output": DECODER_IO[1]},
        **(extra or {}),
    }
    atomic_write_text(out / "config.json", json.dumps(config, indent=2))
    return parity(model, out)


def load_model(path: str | Path) -> VQModel:
    """The torch model of an exported tokenizer folder (float32, eval mode)."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    model = VQModel(VQConfig.from_dict(config["vq"]))
    tensors = load_file(path / "image_tokenizer.safetensors")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return model.eval()


def parity(model: VQModel, out: Path, n: int = 8, seed: int = 0) -> dict:
    """Torch vs ONNX Runtime on the same inputs: share of equal codes, max pixel difference."""
    import onnxruntime as ort

    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    # Smooth random images exercise the encoder better than white noise.
    x = F.interpolate(torch.rand(n, 3, 8, 8, generator=gen) * 2 - 1, size=cfg.image_size, mode="bilinear")
    enc = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    codes_t = model.encode(x)
    codes_o = enc.run(None, {ENCODER_IO[0]: x.numpy()})[0]
    img_t = model.decode(codes_t).numpy()
    img_o = dec.run(None, {DECODER_IO[0]: codes_t.numpy()})[0]
    return {"codes_equal": float((codes_o == codes_t.numpy()).mean()),
            "decoder_max_abs_diff": float(np.abs(img_o - img_t).max())}


@torch.no_grad()
def evaluate_torch(model: VQModel, images: np.ndarray, batch_size: int = 64) -> dict:
    """PSNR and codebook usage of the torch model on uint8 images (used at the end of training)."""
    scores, used = [], torch.zeros(model.cfg.codebook_size, dtype=torch.bool)
    for i in range(0, len(images), batch_size):
        x = to_tensor(images[i:i + batch_size])
        codes = model.encode(x)
        used[codes.flatten()] = True
        scores.append(psnr(model.decode(codes), x))
    return {"psnr_db": torch.cat(scores).mean().item(), "codebook_usage": used.float().mean().item(),
            "images": len(images)}
