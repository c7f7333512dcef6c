"""A Llama decoder as Tessera's two ONNX graphs (prefill, decode), written node by node from a
checkpoint's tensors with one tensor in memory at a time.

The graphs keep the backend contract of engine/backends.py (ids, n_pad, past_{k,v}.{i} in; logits,
present_{k,v}.{i} out; left-padded rows whose padding no query sees). What goes in and comes out is
up to the caller: `Embed` maps Tessera ids onto the model's own embedding tables and `Head` maps the
last hidden state onto the logits (training/importers/janus.py gives Janus's image embedding and
head). Weights live in one external-data file shared by both graphs:

    fp32  MatMul on float32 weights
    fp16  float16 weights, cast to float32 when the session loads them (half the file; fp32 compute)
    int8  MatMulNBits (ORT contrib op): 8-bit weights in blocks of 32 input features, int8 compute
    int4  the same with 4-bit weights

Embedding tables are float32 at fp32 and float16 otherwise (a step gathers a few rows of them);
norms and biases stay float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
PRECISIONS = ("fp32", "fp16", "int8", "int4")
BLOCK = 32  # MatMulNBits block size (input features per scale)
PAGE = 1 << 16  # large tensors start on 64 KiB boundaries, so ONNX Runtime can map them in place


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    n_layer: int
    n_head: int
    rope_theta: float
    eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_head


# -- weights --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Linear:
    """y = x W^T + b as stored in the weights file: kind "fp32"/"fp16" (W^T), or "nbits" (MatMulNBits)."""

    weight: str
    kind: str
    k: int  # input features
    n: int  # output features
    bias: str | None = None
    scales: str | None = None
    bits: int = 0


@dataclass(frozen=True)
class Table:
    """An embedding table (rows gathered by index), float32 or float16."""

    name: str
    half: bool


class WeightFile:
    """Appends tensors to one external-data file and keeps the initializers that point into it."""

    def __init__(self, path: Path, precision: str):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.path, self.precision = path, precision
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.initializers: list[TensorProto] = []

    def close(self) -> None:
        self.file.close()

    def _put(self, name: str, chunks: Iterator[np.ndarray], dtype, shape: tuple[int, ...]) -> str:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        align = PAGE if nbytes >= PAGE else 64
        self.file.write(b"\0" * (-self.file.tell() % align))
        offset = self.file.tell()
        for chunk in chunks:
            self.file.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
        if self.file.tell() - offset != nbytes:
            raise ValueError(f"{name}: wrote {self.file.tell() - offset} bytes, expected {nbytes}")
        t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims=shape)
        for key, value in (("location", self.path.name), ("offset", offset), ("length", nbytes)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        t.data_location = TensorProto.EXTERNAL
        self.initializers.append(t)
        return name

    def vector(self, name: str, values: np.ndarray) -> str:
        """A float32 tensor as it is (norm weights, biases)."""
        values = np.asarray(values, np.float32)
        return self._put(name, iter([values]), np.float32, values.shape)

    def table(self, name: str, rows: int, cols: int, read: Callable[[int, int], np.ndarray]) -> Table:
        """An embedding table read in blocks of rows (`read(start, stop)` -> float32 rows)."""
        half = self.precision != "fp32"
        step = max(1, (64 << 20) // (4 * cols))  # 64 MB of float32 rows at a time
        chunks = (read(i, min(i + step, rows)) for i in range(0, rows, step))
        return Table(self._put(name, chunks, np.float16 if half else np.float32, (rows, cols)), half)

    def linear(self, name: str, weight: np.ndarray, bias: np.ndarray | None = None) -> Linear:
        """A Linear's (out, in) weight at this file's precision. Layers whose input is not a multiple of
        the block (Janus's 8-wide code embedding) stay float32 at int8/int4."""
        weight = np.asarray(weight, np.float32)
        n, k = weight.shape
        b = None if bias is None else self.vector(f"{name}.bias", bias)
        if self.precision in ("int8", "int4") and k % BLOCK == 0:
            bits = 8 if self.precision == "int8" else 4
            packed, scales = quantize_blocks(weight, bits)
            w = self._put(f"{name}.weight", iter([packed]), np.uint8, packed.shape)
            s = self._put(f"{name}.scales", iter([scales]), np.float32, scales.shape)
            return Linear(w, "nbits", k, n, b, s, bits)
        kind = "fp16" if self.precision == "fp16" else "fp32"
        dtype = np.float16 if kind == "fp16" else np.float32
        return Linear(self._put(f"{name}.weight", iter([weight.T]), dtype, (k, n)), kind, k, n, b)


def quantize_blocks(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric round-to-nearest per block of BLOCK input features, in MatMulNBits' layout: packed
    (N, K/BLOCK, BLOCK*bits/8) uint8 with the default zero point 2^(bits-1), scales (N * K/BLOCK,)."""
    n, k = weight.shape
    blocks = weight.reshape(n, k // BLOCK, BLOCK)
    top = 2 ** (bits - 1) - 1
    scales = np.abs(blocks).max(axis=-1) / top
    scales[scales == 0] = 1.0
    q = (np.clip(np.rint(blocks / scales[..., None]), -top, top) + 2 ** (bits - 1)).astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scales.astype(np.float32).reshape(-1)


# -- graph building -------------------------------------------------------------------------------
@dataclass
class Graph:
    """Nodes of one graph; every op returns its output name(s)."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)

    def op(self, op_type: str, *inputs: str, domain: str = "", **attrs) -> str:
        out = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], domain=domain or None, **attrs))
        return out

    def split(self, x: str, halves: int) -> tuple[str, str]:
        """x's last axis cut in two equal halves."""
        outs = [f"split_{len(self.nodes)}_{i}" for i in range(2)]
        self.nodes.append(helper.make_node("Split", [x, self.const([halves, halves])], outs, axis=-1))
        return outs[0], outs[1]

    def const(self, value, dtype=np.int64) -> str:
        return self.op("Constant", value=numpy_helper.from_array(np.asarray(value, dtype)))

    def linear(self, x: str, lin: Linear) -> str:
        if lin.scales is not None:  # kind "nbits"
            y = self.op("MatMulNBits", x, lin.weight, lin.scales, domain="com.microsoft", K=lin.k, N=lin.n,
                        bits=lin.bits, block_size=BLOCK, accuracy_level=4)
        else:
            w = self.op("Cast", lin.weight, to=TensorProto.FLOAT) if lin.kind == "fp16" else lin.weight
            y = self.op("MatMul", x, w)
        return self.op("Add", y, lin.bias) if lin.bias else y

    def gather(self, table: Table, index: str) -> str:
        rows = self.op("Gather", table.name, index)
        return self.op("Cast", rows, to=TensorProto.FLOAT) if table.half else rows

    def rms_norm(self, x: str, weight: str, eps: float) -> str:
        var = self.op("ReduceMean", self.op("Mul", x, x), axes=[-1], keepdims=1)
        inv = self.op("Reciprocal", self.op("Sqrt", self.op("Add", var, self.const(eps, np.float32))))
        return self.op("Mul", self.op("Mul", x, inv), weight)

    def gelu(self, x: str) -> str:
        """The exact (erf) GELU."""
        erf = self.op("Erf", self.op("Mul", x, self.const(2**-0.5, np.float32)))
        return self.op("Mul", self.op("Mul", x, self.const(0.5, np.float32)),
                       self.op("Add", erf, self.const(1.0, np.float32)))

    def silu(self, x: str) -> str:
        return self.op("Mul", x, self.op("Sigmoid", x))


@dataclass(frozen=True)
class Layer:
    input_norm: str
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    post_norm: str
    gate: Linear
    up: Linear
    down: Linear


# Embed(graph, ids) -> hidden states (B, T, hidden); Head(graph, last hidden (B, hidden)) -> logits (B, V)
Embed = Callable[[Graph, str], str]
Head = Callable[[Graph, str], str]


def _rotate(g: Graph, x: str, cos: str, sin: str, half: int) -> str:
    """Llama's rotary embedding: x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1)."""
    x1, x2 = g.split(x, half)
    rotated = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))


def build_graph(shape: LlamaShape, layers: list[Layer], final_norm: str, embed: Embed, head: Head,
                initializers: list[TensorProto], decode: bool, name: str) -> onnx.ModelProto:
    """The prefill graph (decode=False) or the one-step-or-more decode graph (past caches in)."""
    s, g = shape, Graph()
    ids, n_pad = "ids", "n_pad"
    past = [(f"past_k.{i}", f"past_v.{i}") for i in range(s.n_layer)]
    zero, one, ax0, ax1 = g.const(0), g.const(1), g.const([0]), g.const([1])
    t = g.op("Gather", g.op("Shape", ids), one)  # tokens this call
    p = g.op("Gather", g.op("Shape", past[0][0]), g.const(2)) if decode else zero
    total = g.op("Add", p, t)
    q_abs = g.op("Range", p, total, one)  # (T,) absolute index of each new token
    keys = g.op("Range", zero, total, one)  # (K,)
    pos = g.op("Max", g.op("Sub", g.op("Unsqueeze", q_abs, ax0), g.op("Unsqueeze", n_pad, ax1)), zero)
    # mask (B, 1, T, K): causal, and no query sees the padding (a pad query sees itself: no empty row)
    causal = g.op("LessOrEqual", g.op("Unsqueeze", keys, ax0), g.op("Unsqueeze", q_abs, ax1))
    itself = g.op("Equal", g.op("Unsqueeze", keys, ax0), g.op("Unsqueeze", q_abs, ax1))
    visible = g.op("GreaterOrEqual", g.op("Unsqueeze", keys, g.const([0, 1])),
                   g.op("Unsqueeze", n_pad, g.const([1, 2])))  # (B, 1, K)
    allowed = g.op("And", g.op("Unsqueeze", causal, ax0), g.op("Or", visible, g.op("Unsqueeze", itself, ax0)))
    bias = g.op("Where", allowed, g.const(0.0, np.float32), g.const(-np.inf, np.float32))
    bias = g.op("Unsqueeze", bias, ax1)
    # rotary tables (B, 1, T, head_dim), as transformers computes them (float32 positions x inv_freq)
    exponents = np.arange(0, s.head_dim, 2, dtype=np.int64).astype(np.float32) / s.head_dim
    inv_freq = 1.0 / (s.rope_theta**exponents)
    freqs = g.op("Mul", g.op("Unsqueeze", g.op("Cast", pos, to=TensorProto.FLOAT), g.const([-1])),
                 g.const(inv_freq.astype(np.float32), np.float32))
    angles = g.op("Unsqueeze", g.op("Concat", freqs, freqs, axis=-1), ax1)
    cos, sin = g.op("Cos", angles), g.op("Sin", angles)

    x = embed(g, ids)
    scale = g.const(s.head_dim**-0.5, np.float32)
    heads = lambda y, n: g.op("Transpose", g.op("Reshape", y, g.const([0, 0, n, s.head_dim])),  # noqa: E731
                              perm=[0, 2, 1, 3])
    presents: list[tuple[str, str]] = []
    for i, layer in enumerate(layers):
        h = g.rms_norm(x, layer.input_norm, s.eps)
        q = _rotate(g, heads(g.linear(h, layer.q), s.n_head), cos, sin, s.head_dim // 2)
        k = _rotate(g, heads(g.linear(h, layer.k), s.n_head), cos, sin, s.head_dim // 2)
        v = heads(g.linear(h, layer.v), s.n_head)
        if decode:
            k, v = g.op("Concat", past[i][0], k, axis=2), g.op("Concat", past[i][1], v, axis=2)
        presents.append((k, v))
        scores = g.op("MatMul", g.op("Mul", q, scale), g.op("Transpose", k, perm=[0, 1, 3, 2]))
        att = g.op("Add", scores, bias)
        y = g.op("MatMul", g.op("Softmax", att, axis=-1), v)
        y = g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]), g.const([0, 0, s.n_head * s.head_dim]))
        x = g.op("Add", x, g.linear(y, layer.o))
        h = g.rms_norm(x, layer.post_norm, s.eps)
        act = g.op("Mul", g.silu(g.linear(h, layer.gate)), g.linear(h, layer.up))
        x = g.op("Add", x, g.linear(act, layer.down))
    last = g.op("Gather", x, g.const(-1), axis=1)  # (B, hidden): the last position
    g.nodes.append(helper.make_node("Identity", [head(g, g.rms_norm(last, final_norm, s.eps))], ["logits"]))
    for i, (k, v) in enumerate(presents):
        g.nodes.append(helper.make_node("Identity", [k], [f"present_k.{i}"]))
        g.nodes.append(helper.make_node("Identity", [v], [f"present_v.{i}"]))

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    cache = lambda n: helper.make_tensor_value_info(n, f32, ["batch", s.n_head, "past", s.head_dim])  # noqa: E731
    inputs = [helper.make_tensor_value_info(ids, i64, ["batch", "tokens"]),
              helper.make_tensor_value_info(n_pad, i64, ["batch"])]
    if decode:
        inputs += [cache(n) for n in [*(k for k, _ in past), *(v for _, v in past)]]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "vocab"])]
    present: list[str | int] = ["batch", s.n_head, "cache", s.head_dim]
    outputs += [helper.make_tensor_value_info(f"present_{c}.{i}", f32, present)
                for c in "kv" for i in range(s.n_layer)]
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="tessera-import")
