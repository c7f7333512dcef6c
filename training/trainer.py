"""The training loop, shared by pretraining and SFT (which differ only in recipe, source and init_from).

One optimizer step = grad_accum micro-batches of micro_batch sequences on each of world_size ranks.
The loss of a step is sum(w * ce) / sum(w) over the whole global batch: every micro-batch loss is
divided by the global weight total (one all_reduce of a scalar per step), so neither the split into
micro-batches nor the number of ranks changes the gradient.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.backends import GridCells
from engine.errors import BadInputError
from engine.io import atomic_write_text
from engine.nn.transformer import ModelConfig, Transformer, count_params, flops_per_token, get_preset
from training import checkpoint, parallel
from training.config import OptimSection, TrainConfig
from training.sources import SequenceSource, build_source


def lr_at(step: int, optim: OptimSection, total_steps: int) -> float:
    """Learning rate of update `step` (1-based): linear warmup, then cosine down to min_lr at total_steps."""
    if step <= optim.warmup:
        return optim.lr * step / optim.warmup
    progress = min(1.0, (step - optim.warmup) / max(1, total_steps - optim.warmup))
    return optim.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (optim.lr - optim.min_lr)


def configure_optimizer(model: torch.nn.Module, optim: OptimSection) -> torch.optim.AdamW:
    """AdamW; weight decay on 2-D weights (matrices, embeddings) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=optim.lr, betas=optim.betas, eps=optim.eps
    )


def resolve_model_config(cfg: TrainConfig, source: SequenceSource, init_config: dict | None) -> ModelConfig:
    """Preset (or the init_from model's config) + recipe overrides; the vocabulary comes from the data."""
    overrides = dict(cfg.model.overrides)
    source_vocab = getattr(source, "vocab_size", None)
    if source_vocab is not None and overrides.setdefault("vocab_size", source_vocab) != source_vocab:
        raise BadInputError(
            f"[model] vocab_size {overrides['vocab_size']} != the data's vocabulary {source_vocab}"
        )
    if init_config is not None:
        model_cfg = ModelConfig.from_dict({**init_config, **overrides})
        if model_cfg.to_dict() != ModelConfig.from_dict(init_config).to_dict():
            raise BadInputError(
                f"init_from model {init_config} does not match the recipe's model {model_cfg}"
            )
    else:
        model_cfg = get_preset(cfg.model.preset, **overrides)
    if cfg.batch.seq_len > model_cfg.max_seq_len:
        raise BadInputError(
            f"batch.seq_len {cfg.batch.seq_len} exceeds the model's max_seq_len {model_cfg.max_seq_len}"
        )
    return model_cfg


def setup_torch(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        parallel_mode: str = "ddp",
        info: parallel.DistInfo | None = None,
        out_dir: str | Path | None = None,
    ):
        self.cfg = cfg
        self.info = info or parallel.DistInfo()
        self.out_dir = Path(out_dir or cfg.run.out_dir)
        setup_torch(cfg, self.info.device)
        self.source = build_source(cfg.data, "train", cfg.batch.seq_len, cfg.run.seed)
        self.val_source = build_source(cfg.data, "val", cfg.batch.seq_len, cfg.run.seed)
        init_state, init_config = None, None
        if cfg.model.init_from:
            init_state, init_config = checkpoint.load_model_source(cfg.model.init_from)
        self.model_config = resolve_model_config(cfg, self.source, init_config)
        torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
        model = Transformer(self.model_config)
        if init_state is not None:
            model.load_state_dict(init_state)
        counts = count_params(model)
        self.n_params = counts["params"]
        self.flops_per_token = flops_per_token(self.model_config, counts["matmul_params"], cfg.batch.seq_len)
        self.model = parallel.wrap_model(model.to(self.info.device), self.info, parallel_mode)
        self.optimizer = configure_optimizer(self.model, cfg.optim)
        self.step = 0
        b = cfg.batch
        self.tokens_per_step = b.micro_batch * b.grad_accum * b.seq_len * self.info.world_size
        vocab = getattr(self.source, "vocab", None)
        self.grid = GridCells.of(vocab) if self.model_config.grid_rows else None
        self.pad_id = vocab.pad if vocab is not None else None
        self.counts = {"real_tokens": 0, "loss_tokens": 0.0}  # cumulative over the run, all ranks

    # -- one step -------------------------------------------------------------------------
    def _autocast(self):
        if self.info.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _tensor(self, a: np.ndarray, dtype=None) -> torch.Tensor:
        return torch.from_numpy(a).to(self.info.device, dtype=dtype, non_blocking=True)

    def _inputs(self, batch: tuple) -> dict[str, torch.Tensor]:
        """A source's (inputs, targets, weights[, doc_ids]) as the model's keyword arguments."""
        x, y, w = batch[:3]
        kw = {"ids": self._tensor(x), "targets": self._tensor(y), "loss_weights": self._tensor(w)}
        if len(batch) > 3:  # packed documents kept apart (positions restart, attention stays inside)
            kw["doc_ids"] = self._tensor(batch[3])
        if self.grid is not None:
            kw["cells"] = self._tensor(self.grid(x))
        return kw

    def forward_backward(self, step: int) -> float:
        """Accumulate the gradients of update `step` (1-based); returns the global-batch loss."""
        b, info = self.cfg.batch, self.info
        micro = [
            self.source.batch(step, m, info.rank, info.world_size, b.micro_batch) for m in range(b.grad_accum)
        ]
        for x, *_ in micro:
            if x.shape != (b.micro_batch, b.seq_len):
                raise BadInputError(
                    f"data source gave a batch of shape {x.shape}, expected {(b.micro_batch, b.seq_len)}"
                )
        # a source without a vocabulary has no padding: every position is a real token
        real = sum(int((m[0] != self.pad_id).sum()) if self.pad_id is not None else m[0].size for m in micro)
        counts = [sum(float(m[2].sum(dtype=np.float64)) for m in micro), float(real),
                  sum(float(np.count_nonzero(m[2])) for m in micro)]
        totals = parallel.all_reduce_sum(torch.tensor(counts, dtype=torch.float64).to(info.device), info)
        total_w = float(totals[0])
        self.counts["real_tokens"] += int(totals[1])
        self.counts["loss_tokens"] += float(totals[2])  # tokens with a weight, whatever the weight
        norm = max(total_w, 1e-8)
        loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
        self.model.train()
        for m, batch in enumerate(micro):
            with parallel.gradient_sync(self.model, sync=m == b.grad_accum - 1), self._autocast():
                _, loss = self.model(**self._inputs(batch), loss_norm=norm)
            # the wrappers average gradients over ranks: scale back up to a sum (see training/parallel.py)
            (loss * info.world_size).backward()
            loss_sum += loss.detach().double()
        return float(parallel.all_reduce_sum(loss_sum, info).item())

    def clip_and_update(self, step: int) -> tuple[float, float]:
        """Clip, set the learning rate, take the AdamW step; -> (grad norm before clipping, lr)."""
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        lr = lr_at(step, self.cfg.optim, self.cfg.run.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm), lr

    @torch.no_grad()
    def evaluate(self) -> float:
        """Weighted validation loss over run.eval_batches fixed batches (the same ones every time)."""
        b, info = self.cfg.batch, self.info
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=info.device)
        for i in range(self.cfg.run.eval_batches):
            batch = self.val_source.batch(i, 0, info.rank, info.world_size, b.micro_batch)
            w = batch[2]
            with self._autocast():
                _, loss = self.model(**self._inputs(batch), loss_norm=1.0)
            totals += torch.stack(
                [loss.double(), torch.tensor(float(w.sum(dtype=np.float64)), device=info.device)]
            )
        totals = parallel.all_reduce_sum(totals, info)
        return float(totals[0] / totals[1].clamp_min(1e-8))

    # -- state ------------------------------------------------------------------------------
    def run_info(self) -> dict:
        info = {"model": self.model_config.to_dict(), "train": self.cfg.to_dict()}
        info["world_size"] = self.info.world_size
        vocab = getattr(self.source, "vocab", None)
        if vocab is not None:  # the export needs the id layout (engine.vocab.Vocab) beside the weights
            info["vocab"] = vocab.to_dict()
        for key in ("tasks", "seg_classes"):  # what the engine may ask of this model, and class names
            if getattr(self.source, key, None) is not None:
                info[key] = list(getattr(self.source, key))
        if getattr(self.source, "trained_with", None):  # the tokenizers (retriever) of the data, by hash
            info["trained_with"] = self.source.trained_with
        return info

    def save(self) -> None:
        model_state, optim_state = parallel.get_state(self.model, self.optimizer)  # collective
        if self.info.is_main:
            checkpoint.save_checkpoint(
                self.out_dir,
                self.step,
                model_state,
                optim_state,
                {**self.run_info(), "counts": self.counts},
                keep=self.cfg.run.keep_ckpts,
            )

    def resume(self) -> bool:
        folder = checkpoint.latest_checkpoint(self.out_dir)
        if folder is None:
            return False
        model_state, optim_state, state = checkpoint.load_checkpoint(folder)
        if state["model"] != self.model_config.to_dict():
            raise BadInputError(
                f"checkpoint {folder} is for model {state['model']}, not {self.model_config.to_dict()}"
            )
        parallel.set_state(self.model, self.optimizer, model_state, optim_state)
        self.step = int(state["step"])
        self.counts = dict(state.get("counts", self.counts))
        return True

    def export(self, val_loss: float | None) -> None:
        model_state, _ = parallel.get_state(self.model, self.optimizer)
        if self.info.is_main:
            summary = {"step": self.step, "tokens": self.step * self.tokens_per_step, **self.counts,
                       "val_loss": val_loss}
            checkpoint.export_model(self.out_dir, model_state, {**self.run_info(), **summary})

    # -- the loop -----------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict:
        run, main = self.cfg.run, self.info.is_main
        metrics_path = self.out_dir / "metrics.jsonl"
        val_loss = None
        if resume and self.resume():
            if main:
                val_loss = _truncate_log(metrics_path, self.step)
        elif checkpoint.latest_checkpoint(self.out_dir) is not None:
            raise BadInputError(f"{self.out_dir} already holds a run: pass --resume, or choose another --out")
        elif main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(metrics_path, "")
        if main:
            print(
                f"tessera: {self.n_params / 1e6:.2f}M params, {self.tokens_per_step} tokens/step, "
                f"world size {self.info.world_size}, from step {self.step}",
                file=sys.stderr,
            )
        bar = tqdm(total=run.steps, initial=self.step, disable=not main, file=sys.stderr, dynamic_ncols=True)
        log = open(metrics_path, "a") if main else None  # noqa: SIM115 (closed below)
        try:
            while self.step < run.steps:
                t0 = time.perf_counter()
                step = self.step + 1
                loss = self.forward_backward(step)
                grad_norm, lr = self.clip_and_update(step)
                self.step = step
                dt = time.perf_counter() - t0
                record = {
                    "step": step,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tok_s": round(self.tokens_per_step / dt, 1),
                    "tokens": step * self.tokens_per_step,  # positions, pads included
                    **self.counts,
                }
                if run.eval_every and (step % run.eval_every == 0 or step == run.steps):
                    val_loss = record["val_loss"] = self.evaluate()
                if main:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.set_postfix(
                        loss=f"{loss:.4f}",
                        tok_s=f"{record['tok_s']:.0f}",
                        **({"val": f"{val_loss:.4f}"} if val_loss is not None else {}),
                    )
                    bar.update(1)
                if run.ckpt_every and step % run.ckpt_every == 0 and step < run.steps:
                    self.save()
            self.save()
            self.export(val_loss)
        finally:
            bar.close()
            if log:
                log.close()
        return {"step": self.step, "val_loss": val_loss, "out_dir": str(self.out_dir)}


def _truncate_log(path: Path, step: int) -> float | None:
    """Drop log lines past the checkpoint being resumed (the killed run may have logged further);
    returns the last validation loss kept."""
    if not path.exists():
        return None
    kept, val_loss = [], None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if record.get("step", step + 1) <= step:
            kept.append(line + "\n")
            val_loss = record.get("val_loss", val_loss)
    atomic_write_text(path, "".join(kept))
    return val_loss
