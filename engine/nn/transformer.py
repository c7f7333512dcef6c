"""The CM3Leon-style decoder-only transformer (CM3Leon §2.3; nanoGPT/gpt-fast in spirit).

Relative to GPT/OPT: no bias terms, no dropout, LayerNorm without learnable affine parameters,
learned absolute positions initialised near zero (std 0.0002), truncated-normal weights
(std 0.006, cut at 3 sigma), and zero-initialised output layers: the attention and MLP output
projections and the lm_head.

The lm_head is *not* tied to the token embedding: a tied head cannot start at zero without zeroing
the embedding too. A zero lm_head still trains: its own gradient (softmax - onehot) x h is non-zero
from the first step, and once it moves the gradient reaches every other weight (tested).

Image and segmentation tokens also get a learned row and column embedding of the grid cell they
fill (`cells`, 1..H*W from engine.formats.grid_cells, 0 for every other token), added to the absolute
position. Without it the model must count tokens since `<break>` to know where it writes, which
costs most of a small model's early training (docs/architecture.md, "Cell positions").
A training row may hold several documents (`doc_ids`): positions restart at each document and
attention stays inside it, so a packed document sees exactly what it sees alone at inference.

Three ways to run it:
  forward(ids)                         training / scoring: causal attention over ids
  forward(ids, input_pos) after        generation with a static KV cache (gpt-fast): writes the cache
      setup_cache(batch, max_len)      at input_pos and attends to everything cached so far
  step(ids, past_k, past_v)            functional past -> present (ONNX export); past length 0 = prefill
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import BadInputError
from engine.model_config import PAPER_VOCAB, PRESETS, ModelConfig, get_preset  # noqa: F401  (re-exported)


def layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],))  # no weight, no bias (CM3Leon)


class KVCache(nn.Module):
    """Static cache (gpt-fast): preallocated to max_len, written in place at input_pos."""

    k: Tensor
    v: Tensor

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype, device=None):
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        batch = k.shape[0]
        self.k[:batch, :, input_pos] = k
        self.v[:batch, :, input_pos] = v
        return self.k[:batch], self.v[:batch]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        input_pos: Tensor | None = None,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        B, T, C = x.shape
        q, k, v = (
            self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # 3 x (B, nh, T, hs)
        if past is not None:  # functional: present = past ++ new
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        elif input_pos is not None:  # static cache
            if self.kv_cache is None:
                raise BadInputError("forward with input_pos needs setup_cache(batch, max_len) first")
            k, v = self.kv_cache.update(input_pos, k, v)
        # mask None means plain causal attention of T queries over the same T keys (training)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.proj(y.transpose(1, 2).reshape(B, T, C)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # GELU as GPT-2/nanoGPT; OPT used ReLU and the paper does not say which CM3Leon kept.
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(
        self, x: Tensor, mask: Tensor | None, input_pos=None, past=None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, kv = self.attn(layer_norm(x), mask, input_pos, past)
        x = x + a
        return x + self.mlp(layer_norm(x)), kv


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model)
        if config.grid_rows:  # index 0 = not a grid token, an all-zero row
            self.wrow = nn.Embedding(config.grid_rows + 1, config.d_model, padding_idx=0)
            self.wcol = nn.Embedding(config.grid_cols + 1, config.d_model, padding_idx=0)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.cache_len = 0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.006
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name == "lm_head.weight":
                nn.init.zeros_(p)  # output layers start at 0 (CM3Leon)
            elif name == "wpe.weight":
                nn.init.trunc_normal_(p, std=0.0002, a=-0.0006, b=0.0006)
            else:
                nn.init.trunc_normal_(p, std=std, a=-3 * std, b=3 * std)
        if self.config.grid_rows:
            with torch.no_grad():
                self.wrow.weight[0].zero_()
                self.wcol.weight[0].zero_()

    # -- generation cache ---------------------------------------------------------------------
    def setup_cache(self, max_batch: int, max_len: int | None = None) -> None:
        """Allocate a static KV cache of max_len positions (default max_seq_len) for every layer."""
        max_len = max_len or self.config.max_seq_len
        if max_len > self.config.max_seq_len:
            raise BadInputError(f"cache length {max_len} exceeds max_seq_len {self.config.max_seq_len}")
        p = self.lm_head.weight
        for block in self.layers():
            block.attn.kv_cache = KVCache(
                max_batch, self.config.n_head, max_len, self.config.head_dim, p.dtype, p.device
            )
        self.cache_len = max_len

    def clear_cache(self) -> None:
        for block in self.layers():
            block.attn.kv_cache = None
        self.cache_len = 0

    def layers(self) -> list[Block]:
        """The blocks, typed (an nn.ModuleList yields plain Modules)."""
        return [cast(Block, block) for block in self.blocks]

    # -- forward ------------------------------------------------------------------------------
    def embed(self, ids: Tensor, pos: Tensor, cells: Tensor | None) -> Tensor:
        """Token + absolute position (+ grid row and column for tokens with a cell > 0)."""
        x = self.wte(ids) + self.wpe(pos)
        if not self.config.grid_rows:
            return x
        if cells is None:
            raise BadInputError("this model embeds grid cells: pass cells (engine.formats.grid_cells)")
        on = cells > 0
        c = (cells - 1).clamp(min=0)
        zero = torch.zeros_like(c)
        row = torch.where(on, c // self.config.grid_cols + 1, zero)
        col = torch.where(on, c % self.config.grid_cols + 1, zero)
        return x + self.wrow(row) + self.wcol(col)

    def forward(
        self,
        ids: Tensor,
        input_pos: Tensor | None = None,
        targets: Tensor | None = None,
        loss_weights: Tensor | None = None,
        loss_norm: Tensor | float | None = None,
        cells: Tensor | None = None,
        doc_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """ids (B, T) -> logits (B, T, V) for every given position, and the loss when targets are given.

        input_pos (T,) int: absolute positions of ids; they are written to the KV cache (setup_cache first)
        and each attends to every cached position <= its own. Without it, positions are 0..T-1.
        cells (B, T) int: grid cell of each token (models with a grid). doc_ids (B, T) int: the document
        each position belongs to (training on packed rows): positions restart and attention stays inside.
        loss = sum(w * ce) / sum(w) with w = loss_weights (default 1). loss_norm replaces sum(w): data
        parallel training passes the weight total of the *global* batch so that summed per-rank,
        per-micro-batch gradients equal the gradient of the whole batch.
        """
        B, T = ids.shape
        mask: Tensor | None
        if input_pos is None:
            if self.config.max_seq_len < T:
                raise BadInputError(f"sequence of {T} tokens exceeds max_seq_len {self.config.max_seq_len}")
            pos, mask = torch.arange(T, device=ids.device), None
            if doc_ids is not None:
                pos, mask = document_positions(doc_ids)
        else:
            if not self.cache_len:
                raise BadInputError("forward with input_pos needs setup_cache(batch, max_len) first")
            pos = input_pos
            mask = pos[:, None] >= torch.arange(self.cache_len, device=ids.device)[None, :]  # (T, cache_len)
        x = self.embed(ids, pos, cells)
        for block in self.blocks:
            x, _ = block(x, mask, input_pos)
        logits = self.lm_head(layer_norm(x))
        if targets is None:
            return logits, None
        return logits, weighted_cross_entropy(logits, targets, loss_weights, loss_norm)

    def step(
        self, ids: Tensor, past_k: Tensor, past_v: Tensor, cells: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Functional decoding: ids (B, T) continue a prefix whose keys/values are past_k/past_v,
        shaped (n_layer, B, n_head, P, head_dim). Returns logits (B, T, V) and the presents (P + T long)."""
        B, T = ids.shape
        P = past_k.shape[3]
        pos = torch.arange(T, device=ids.device) + P
        mask = pos[:, None] >= torch.arange(P + T, device=ids.device)[None, :]  # (T, P + T)
        x = self.embed(ids, pos, cells)
        present_k, present_v = [], []
        for i, block in enumerate(self.blocks):
            x, (k, v) = block(x, mask, past=(past_k[i], past_v[i]))
            present_k.append(k)
            present_v.append(v)
        return self.lm_head(layer_norm(x)), torch.stack(present_k), torch.stack(present_v)

    def empty_past(self, batch: int) -> tuple[Tensor, Tensor]:
        """A zero-length past for step() (prefill)."""
        c, p = self.config, self.lm_head.weight
        shape = (c.n_layer, batch, c.n_head, 0, c.head_dim)
        return torch.zeros(shape, dtype=p.dtype, device=p.device), torch.zeros(
            shape, dtype=p.dtype, device=p.device
        )


def document_positions(doc_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Positions restarting at every document of a packed row, and the causal attention mask (B, 1, T, T)
    that keeps each query inside its own document."""
    B, T = doc_ids.shape
    t = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.cummax(torch.where(starts, t, torch.zeros_like(t)), dim=1).values
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return t - first, (same & causal)[:, None]


def weighted_cross_entropy(
    logits: Tensor, targets: Tensor, weights: Tensor | None = None, norm: Tensor | float | None = None
) -> Tensor:
    """sum(w * ce) / norm, norm = sum(w) by default (fp32 whatever the logits' dtype)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    if weights is None:
        weights = torch.ones_like(ce)
    weights = weights.flatten().to(ce.dtype)
    if norm is None:
        norm = weights.sum().clamp_min(1e-8)  # an all-zero-weight batch gives loss 0, not NaN
    return (weights * ce).sum() / norm


LOOKUPS = ("wte", "wpe", "wrow", "wcol")  # embedding tables: lookups, no FLOPs


# -- planning figures (documented in docs/training.md) -------------------------------------------
def count_params(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    # lookups cost no FLOPs: the matmul weights are everything but the two embedding tables
    lookup = sum(p.numel() for name, p in model.named_parameters() if name.split(".")[0] in LOOKUPS)
    return {"params": total, "matmul_params": total - lookup}


def flops_per_token(config: ModelConfig, matmul_params: int, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6 * matmul params (fwd + bwd) + causal attention 6 * L * d * T.

    QK^T and AV cost 2 * 2 * d * t FLOPs per layer for a query at position t; averaged over a causal
    sequence of T that is 2 * d * T forward, times 3 with the backward. (PaLM's 12 * L * d * T counts
    the masked half too; we count only what a causal kernel has to do.)"""
    T = seq_len or config.max_seq_len
    return 6 * matmul_params + 6 * config.n_layer * config.d_model * T


def train_memory_bytes(
    config: ModelConfig, params: int, seq_len: int | None = None, micro_batch: int = 1
) -> dict:
    """Memory of mixed-precision AdamW training without activation recomputation or sharding.

    states: bf16 weights (2) + bf16 grads (2) + fp32 master weights (4) + fp32 Adam m and v (8) = 16 B/param.
    activations: 32 * T * b * d bytes per layer saved for backward in bf16 with a fused (flash) attention
    and no dropout (Korthikanti et al. 2022 count without the dropout masks and the T^2 scores: LN inputs
    4, QKV input 2, Q, K, V 6, attention output 2, MLP input 2, GELU input 8 and output 8),
    plus the logits: 2 bytes bf16 + 4 bytes fp32 for the loss per vocabulary entry and token."""
    T = seq_len or config.max_seq_len
    states = 16 * params
    activations = (
        32 * T * micro_batch * config.d_model * config.n_layer + 6 * T * micro_batch * config.vocab_size
    )
    return {"states": states, "activations": activations, "total": states + activations}


def model_info(config: ModelConfig, seq_len: int | None = None) -> dict:
    """Sizes and costs of a configuration, built on the meta device (no memory, any size)."""
    with torch.device("meta"):
        model = Transformer(config)
    counts = count_params(model)
    T = seq_len or config.max_seq_len
    mem = train_memory_bytes(config, counts["params"], T)
    return {
        **config.to_dict(),
        "head_dim": config.head_dim,
        **counts,
        "seq_len": T,
        "flops_per_token": flops_per_token(config, counts["matmul_params"], T),
        "train_memory_gb_bf16": round(mem["total"] / 1e9, 3),
        "train_memory_breakdown_gb": {k: round(v / 1e9, 3) for k, v in mem.items()},
    }
