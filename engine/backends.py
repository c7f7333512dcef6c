"""Transformer backends: the exported ONNX graphs (the runtime) and torch (development, parity).

Both run the same contract on a batch of left-padded rows:

    prefill(ids (B, T) int64, n_pad (B,) int64) -> (logits of the last position (B, V) float32, state)
    decode(ids (B, 1) int64, state)             -> (logits (B, V) float32, state)
    reorder(state, index (B',) int64)           -> state with rows index (select / replicate rows)

Row b starts with n_pad[b] <pad> tokens. Those are invisible to every query (attention mask) and the
first real token sits at position 0, so a padded row computes exactly what it would alone; this is
how prompts of different lengths (CFG's conditional and unconditional streams, retrieval) share one
batch. The KV cache is one (B, n_head, T, head_dim) array per layer and per k/v: a stacked
(n_layer, ...) cache would be split and re-stacked inside the graph, two extra copies of the whole
cache per step.

A model with a grid (ModelConfig.grid_rows) also takes the grid cell of every token; the backend
computes it from the ids (`GridCells`, engine.formats.grid_cells) and carries the last token's cell
in its state, so callers feed ids only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.formats import grid_cells
from engine.providers import create_session
from engine.vocab import Vocab


def graph_names(n_layer: int, cells: bool = False) -> dict[str, list[str]]:
    """ONNX graph I/O names (training/export.py writes them): ids, n_pad, [cell,] past_k.{i}, past_v.{i}
    in; logits, present_k.{i}, present_v.{i} out."""
    kv = lambda prefix: [f"{prefix}_{c}.{i}" for c in "kv" for i in range(n_layer)]  # noqa: E731
    head = ["ids", "n_pad", *(["cell"] if cells else [])]
    return {"prefill_inputs": head, "decode_inputs": [*head, *kv("past")],
            "outputs": ["logits", *kv("present")]}


@dataclass(frozen=True)
class GridCells:
    """The grid cell of each token fed to a model with a grid (see engine.formats.grid_cells)."""

    is_grid: np.ndarray  # bool over the vocabulary
    per_image: int

    @classmethod
    def of(cls, vocab: Vocab) -> GridCells:
        return cls(np.asarray(vocab.is_grid(np.arange(vocab.size))), vocab.image_tokens_per_image)

    def __call__(self, ids: np.ndarray, last: np.ndarray | None = None) -> np.ndarray:
        return grid_cells(self.is_grid, ids, self.per_image, last)


def cells_of(grid: GridCells | None, ids: np.ndarray, last: np.ndarray | None = None) -> np.ndarray:
    """The cells to feed (all 0 for a model without a grid, whose state still carries them)."""
    return grid(ids, last) if grid is not None else np.zeros(ids.shape, np.int64)


class Backend(Protocol):
    vocab_size: int
    max_len: int  # the longest sequence (prompt + generated) the model has positions for

    def prefill(self, ids: np.ndarray, n_pad: np.ndarray | None = None) -> tuple[np.ndarray, Any]: ...

    def decode(self, ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]: ...

    def reorder(self, state: Any, index: np.ndarray) -> Any: ...


def check_batch(ids: np.ndarray, n_pad: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"ids must be (B, T) with T >= 1, got shape {ids.shape}")
    n_pad = np.zeros(ids.shape[0], np.int64) if n_pad is None else np.ascontiguousarray(n_pad, dtype=np.int64)
    if n_pad.shape != (ids.shape[0],) or (n_pad < 0).any() or (n_pad >= ids.shape[1]).any():
        raise ValueError("n_pad must give each row's left padding, leaving at least one real token")
    return ids, n_pad


@dataclass
class KVState:
    """numpy KV cache of the ONNX backend: per layer k then v, each (B, n_head, T, head_dim)."""

    kv: list[np.ndarray]
    n_pad: np.ndarray  # (B,)
    cell: np.ndarray  # (B,) grid cell of the last token (0 without a grid)

    @property
    def length(self) -> int:
        return self.kv[0].shape[2]


class OnnxBackend:
    """Runs prefill.onnx and decode.onnx with ONNX Runtime (CUDA when it works, else CPU)."""

    def __init__(self, prefill_path: str | Path, decode_path: str | Path, vocab_size: int, max_len: int,
                 device: str = "auto", threads: int | None = None, grid: GridCells | None = None):
        self.vocab_size, self.max_len, self.grid = vocab_size, max_len, grid
        probe_ids = np.zeros((1, 1), np.int64)

        def probe(session) -> None:
            session.run(None, self._feeds(probe_ids, np.zeros(1, np.int64), np.zeros((1, 1), np.int64)))

        self.prefill_session, self.provider = create_session(prefill_path, device, probe, threads)
        self.decode_session, _ = create_session(decode_path, self.provider, None, threads)
        head = 3 if grid is not None else 2
        self.past_names = [i.name for i in self.decode_session.get_inputs()][head:]
        self.outputs = [o.name for o in self.decode_session.get_outputs()]

    def _feeds(self, ids: np.ndarray, n_pad: np.ndarray, cells: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"ids": ids, "n_pad": n_pad}
        if self.grid is not None:
            feeds["cell"] = np.ascontiguousarray(cells, dtype=np.int64)
        return feeds


    def prefill(self, ids: np.ndarray, n_pad: np.ndarray | None = None) -> tuple[np.ndarray, KVState]:
        """Rows of equal padding run together without their padding (a 3-token unconditional prompt
        beside a 200-token retrieval prompt costs 3 tokens, not 200); the caches are then left-padded
        with zeros that the mask hides, which is exactly what a padded run would compute."""
        ids, n_pad = check_batch(ids, n_pad)
        if ids.shape[1] > self.max_len:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds the model's {self.max_len}")
        cells = cells_of(self.grid, ids)
        groups = np.unique(n_pad)
        if len(groups) == 1:
            logits, *kv = self.prefill_session.run(self.outputs, self._feeds(ids, n_pad, cells))
            return logits, KVState(kv, n_pad, cells[:, -1])
        logits, kv = None, None
        for p in groups:
            rows = np.flatnonzero(n_pad == p)
            feeds = self._feeds(np.ascontiguousarray(ids[rows, p:]), np.zeros(len(rows), np.int64),
                                cells[rows, p:])
            part, *part_kv = self.prefill_session.run(self.outputs, feeds)
            if logits is None:
                logits = np.empty((len(ids), part.shape[1]), part.dtype)
                _, h, _, d = part_kv[0].shape
                kv = [np.zeros((len(ids), h, ids.shape[1], d), part.dtype) for _ in part_kv]
            logits[rows] = part
            for whole, a in zip(kv, part_kv, strict=True):
                whole[rows, :, p:] = a
        return logits, KVState(kv, n_pad, cells[:, -1])

    def decode(self, ids: np.ndarray, state: KVState) -> tuple[np.ndarray, KVState]:
        if state.length >= self.max_len:
            raise ValueError(f"the model's context of {self.max_len} tokens is full")
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1, 1)
        cells = cells_of(self.grid, ids, state.cell)
        feeds = {**self._feeds(ids, state.n_pad, cells), **dict(zip(self.past_names, state.kv, strict=True))}
        logits, *kv = self.decode_session.run(self.outputs, feeds)
        return logits, KVState(kv, state.n_pad, cells[:, -1])

    def reorder(self, state: KVState, index: np.ndarray) -> KVState:
        index = np.asarray(index, np.int64)
        return KVState([a[index] for a in state.kv], state.n_pad[index], state.cell[index])


# -- torch (development backend and ONNX export; torch is imported only here) ------------------------
def padded_attention(n_pad, past_len, t: int, key_len: int):
    """Positions (B, t) and the attention mask (B, 1, t, key_len) of t new tokens after past_len cached
    ones, for left-padded rows. A pad query may see only itself (an all-masked row would give NaN)."""
    import torch

    q_abs = torch.arange(t, device=n_pad.device) + past_len  # (t,) absolute index in the batch
    keys = torch.arange(key_len, device=n_pad.device)
    pos = (q_abs[None, :] - n_pad[:, None]).clamp(min=0)
    causal = keys[None, :] <= q_abs[:, None]  # (t, K)
    visible = keys[None, None, :] >= n_pad[:, None, None]  # (B, 1, K)
    itself = keys[None, :] == q_abs[:, None]  # (t, K)
    return pos, (causal[None] & (visible | itself[None]))[:, None]


def padded_step(model, ids, n_pad, cells=None, past_k=None, past_v=None):
    """The exported computation for left-padded rows: logits of the last position (B, V) and the
    per-layer presents [(B, n_head, P + T, head_dim)] for k and v. cells: (B, T) grid cells (models with
    a grid). past_k/past_v: per-layer lists (None = prefill).

    The blocks of engine.nn.transformer with their attention written out: the additive mask is built
    once per step instead of per layer, and the graph has ~25 % fewer nodes than the exported
    scaled_dot_product_attention (per-node overhead dominates a small model's decode step). Export
    checks the result against the model's own forward (training/export.py: parity)."""
    import torch

    from engine.nn import transformer as tm  # looked up at call time: export swaps tm.layer_norm

    b, t = ids.shape
    c = model.config
    past_len = 0 if past_k is None else past_k[0].shape[2]
    pos, mask = padded_attention(n_pad, past_len, t, past_len + t)
    bias = torch.zeros(mask.shape, dtype=model.wte.weight.dtype).masked_fill(~mask, float("-inf"))
    x = model.embed(ids, pos, cells)
    ks, vs = [], []
    for i, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv(tm.layer_norm(x)).view(b, t, 3, c.n_head, c.head_dim).permute(2, 0, 3, 1, 4)
        if past_k is not None:
            k, v = torch.cat([past_k[i], k], dim=2), torch.cat([past_v[i], v], dim=2)
        ks.append(k)
        vs.append(v)
        att = (q * c.head_dim**-0.5) @ k.transpose(-1, -2) + bias  # (B, nh, T, P + T)
        y = att.softmax(dim=-1) @ v
        x = x + block.attn.proj(y.transpose(1, 2).reshape(b, t, c.d_model))
        x = x + block.mlp(tm.layer_norm(x))
    return model.lm_head(tm.layer_norm(x[:, -1])), ks, vs


@dataclass
class TorchState:
    length: int  # cached positions
    batch: int
    n_pad: Any  # torch (B,) int64
    cell: np.ndarray  # (B,) grid cell of the last token


class TorchBackend:
    """The reference: engine.nn.transformer with its static KV cache (gpt-fast `input_pos`).

    The cache lives in the model, so a state is valid until the next prefill/decode/reorder."""

    def __init__(self, model, max_batch: int = 16, max_len: int | None = None, grid: GridCells | None = None):
        import torch

        if bool(model.config.grid_rows) != (grid is not None):
            raise ValueError("a model with a grid needs GridCells, and only such a model takes them")
        self.torch, self.model, self.grid = torch, model.eval(), grid
        self.vocab_size = model.config.vocab_size
        self.max_len = max_len or model.config.max_seq_len
        self.device = model.lm_head.weight.device
        self.capacity = 0
        self._ensure(max_batch)

    def _ensure(self, batch: int) -> None:
        if batch > self.capacity:
            old = [(b.attn.kv_cache.k, b.attn.kv_cache.v) for b in self.model.blocks] if self.capacity else []
            self.model.setup_cache(batch, self.max_len)
            if old:  # keep what is cached (reorder to a larger batch)
                for b, (k, v) in zip(self.model.blocks, old, strict=True):
                    b.attn.kv_cache.k[: k.shape[0]] = k
                    b.attn.kv_cache.v[: v.shape[0]] = v
            self.capacity = batch

    def _run(self, ids: np.ndarray, n_pad, start: int, cells: np.ndarray) -> np.ndarray:
        """Write positions start.. of the static cache and return the last position's logits."""
        from engine.nn.transformer import layer_norm

        torch, model, t = self.torch, self.model, ids.shape[1]
        pos, mask = padded_attention(n_pad, start, t, self.max_len)
        input_pos = torch.arange(start, start + t, device=self.device)
        with torch.no_grad():
            ids_t, cells_t = (torch.from_numpy(a).to(self.device) for a in (ids, cells))
            x = model.embed(ids_t, pos, cells_t)
            for block in model.blocks:
                x, _ = block(x, mask, input_pos)
            logits = model.lm_head(layer_norm(x[:, -1]))
        return logits.float().cpu().numpy()

    def prefill(self, ids: np.ndarray, n_pad: np.ndarray | None = None) -> tuple[np.ndarray, TorchState]:
        ids, n_pad = check_batch(ids, n_pad)
        if ids.shape[1] > self.max_len:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds the model's {self.max_len}")
        self._ensure(ids.shape[0])
        n_pad_t = self.torch.from_numpy(n_pad).to(self.device)
        cells = cells_of(self.grid, ids)
        state = TorchState(ids.shape[1], ids.shape[0], n_pad_t, cells[:, -1])
        return self._run(ids, n_pad_t, 0, cells), state

    def decode(self, ids: np.ndarray, state: TorchState) -> tuple[np.ndarray, TorchState]:
        if state.length >= self.max_len:
            raise ValueError(f"the model's context of {self.max_len} tokens is full")
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1, 1)
        cells = cells_of(self.grid, ids, state.cell)
        logits = self._run(ids, state.n_pad, state.length, cells)
        return logits, TorchState(state.length + 1, state.batch, state.n_pad, cells[:, -1])


    def reorder(self, state: TorchState, index: np.ndarray) -> TorchState:
        index_t = self.torch.as_tensor(np.asarray(index, np.int64), device=self.device)
        self._ensure(len(index_t))
        with self.torch.no_grad():
            for b in self.model.blocks:
                cache = b.attn.kv_cache
                cache.k[: len(index_t)] = cache.k[index_t]  # the gather copies before the write
                cache.v[: len(index_t)] = cache.v[index_t]
        return TorchState(state.length, len(index_t), state.n_pad[index_t], state.cell[np.asarray(index)])
