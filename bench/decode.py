"""Decode speed, side by side in one run on one machine with the same weights (`tessera bench decode`).

Paths, each generating one 8x8 image (64 tokens) from a 20-token prompt:
  (a) hf_generate    Hugging Face transformers `generate()` (greedy, KV cache) on a LlamaConfig of the
                     same width, depth, heads and vocabulary, random weights (built from the config);
                     its SwiGLU MLP gets 2/3 of our d_ff so both models have the same parameters/FLOPs
  (b) torch_nocache  our transformer, the whole sequence recomputed every step (nanoGPT's generate)
  (c) torch_cache    our transformer with its static KV cache (engine.backends.TorchBackend)
  (d) onnx           the exported graphs on ONNX Runtime (engine.backends.OnnxBackend)
  (d8) onnx_int8     the same with int8 weights (bundle precision "int8"; not bit-exact with torch)
(b)-(d) run the real decode loop: CFG in the batch (cond + `<eos> <mask:0> <break>` streams), the
modality mask, temperature/top-p, seeded sampling. Batch 2 = one image with CFG, 16 = 8 candidates.

Roofline: per step max(FLOPs / measured GEMM peak, bytes moved / measured memory bandwidth), both
measured here. Then the default model (assets/models/shapes, or the shapes preset with random weights
when it is absent) through `Engine.generate`: request -> first partial image and -> final image.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PROMPT_LEN = 20
BATCHES = (2, 16)
Clock = Callable[[], float]


# -- machine ---------------------------------------------------------------------------------------------
def gemm_peak_gflops(clock: Clock, n: int = 1024, seconds: float = 1.0) -> float:
    """Best fp32 GEMM rate of torch (MKL/oneDNN) over ~`seconds`, GFLOP/s."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    best, t_end = 0.0, clock() + seconds
    while clock() < t_end:
        t = clock()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (clock() - t) / 1e9)
    return best


def memory_bandwidth_gbs(clock: Clock, mb: int = 256, repeats: int = 5) -> float:
    """Best copy rate of a buffer far larger than the caches, counting read + write, GB/s."""
    src = np.ones(mb * (1 << 20) // 8)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(repeats):
        t = clock()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (clock() - t) / 1e9)
    return best


def roofline_ms(cfg, matmul_params: int, batch: int, prompt: int, steps: int, peak: float,
                bw: float) -> float:
    """Lower bound for prefill + `steps` decode steps: each step reads every weight once (fp32) and its
    batch's KV cache, and does 2 FLOPs per weight per row plus the attention."""
    d, n_layer = cfg.d_model, cfg.n_layer

    def cost(rows: int, ctx: int) -> float:  # rows new tokens attending over ctx positions
        flops = 2 * rows * matmul_params + 4 * rows * n_layer * d * ctx
        bytes_ = 4 * matmul_params + 2 * 4 * n_layer * batch * ctx * d
        return max(flops / (peak * 1e9), bytes_ / (bw * 1e9))

    total = cost(batch * prompt, prompt)
    total += sum(cost(batch, prompt + i) for i in range(steps - 1))
    return 1e3 * total


# -- the four paths -----------------------------------------------------------------------------------------
class NoCacheBackend:
    """(b): every step recomputes the whole (left-padded) sequence; the state is the sequence."""

    def __init__(self, model):
        import torch

        self.torch, self.model = torch, model
        self.vocab_size, self.max_len = model.config.vocab_size, model.config.max_seq_len

    def _logits(self, ids: np.ndarray, n_pad: np.ndarray) -> np.ndarray:
        from engine.backends import padded_step

        with self.torch.no_grad():
            logits, _, _ = padded_step(self.model, self.torch.from_numpy(ids), self.torch.from_numpy(n_pad))
        return logits.numpy()

    def prefill(self, ids, n_pad=None):
        from engine.backends import check_batch

        ids, n_pad = check_batch(ids, n_pad)
        return self._logits(ids, n_pad), (ids, n_pad)

    def decode(self, ids, state):
        seq = np.concatenate([state[0], np.asarray(ids, np.int64).reshape(-1, 1)], axis=1)
        return self._logits(seq, state[1]), (seq, state[1])

    def reorder(self, state, index):
        return state[0][index], state[1][index]


def bench_vocab(vocab_size: int):
    """A Vocab filling the model's vocabulary: 512 image codes on an 8x8 grid, 7 seg classes."""
    from engine.vocab import Vocab

    return Vocab(vocab_size - 20 - 512 - 7, 512, 7, (8, 8))


def time_ours(clock: Clock, backend, vocab, batch: int, repeats: int) -> float:
    """Best seconds for prefill + one image span with CFG at this batch (batch // 2 candidates)."""
    from engine.decode import image_span, start
    from engine.formats import unconditional_image_prompt
    from engine.sampling import guided_sampler

    rng = np.random.default_rng(0)
    cond = np.concatenate([[vocab.eos], rng.integers(vocab.text_offset, vocab.image_offset, PROMPT_LEN - 2),
                           [vocab.brk]])
    best = float("inf")
    for r in range(repeats + 1):  # the first run warms up (allocations, ORT's first-run planning)
        t = clock()
        sampler = guided_sampler(r, cfg_scale=3.0, temperature=1.0, top_p=0.9)
        stream = start(backend, cond, unconditional_image_prompt(vocab), batch // 2)
        for _ in image_span(stream, vocab, sampler):
            pass
        if r:
            best = min(best, clock() - t)
    return best


def hf_model(cfg):
    import transformers

    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=round(2 * cfg.d_ff / 3),
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=False, attention_bias=False,
        mlp_bias=False, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(hf_cfg).eval()


def time_hf(clock: Clock, model, vocab_size: int, batch: int, steps: int, repeats: int) -> float:
    import torch

    ids = torch.from_numpy(np.random.default_rng(0).integers(3, vocab_size, (batch, PROMPT_LEN)))
    best = float("inf")
    for r in range(repeats + 1):
        t = clock()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                                 min_new_tokens=steps, do_sample=False, pad_token_id=0)
        assert out.shape[1] == PROMPT_LEN + steps
        if r:
            best = min(best, clock() - t)
    return best


# -- the default model through the Engine ------------------------------------------------------------
def default_bundle(bundle: str | None, preset: str, tmp: Path,
                   log: Callable[[str], None]) -> tuple[Path, str]:
    from engine.paths import default_bundle_dir, default_image_tokenizer_dir, default_text_tokenizer_path

    if bundle:
        return with_int8(Path(bundle), tmp, log), str(bundle)
    if (default_bundle_dir() / "manifest.json").is_file():
        return with_int8(default_bundle_dir(), tmp, log), "assets/models/shapes (trained)"
    log("no shipped model: exporting the shapes preset with random weights")
    import torch

    from engine.nn.transformer import Transformer, get_preset
    from engine.text_tokenizer import TextTokenizer
    from engine.vocab import Vocab
    from training.data.shapes import SEG_CLASSES
    from training.export import write_bundle

    vq, which = default_image_tokenizer_dir(), f"{preset} preset, random weights (no trained model shipped)"
    if not (vq / "config.json").is_file():
        from engine.nn.vqvae import VQConfig, VQModel
        from training.tokenizer_train import export

        log("no shipped image tokenizer: exporting a random-weight VQ")
        which += ", random-weight VQ tokenizer"
        vq = tmp / "vq"
        export(VQModel(VQConfig()).eval(), vq)
    texts = [default_text_tokenizer_path()] if default_text_tokenizer_path().is_file() else []
    if not texts:
        from training.text_tokenizer_train import shapes_corpus, train_text_tokenizer

        texts = [tmp / "tokenizer.json"]
        train_text_tokenizer(shapes_corpus(2000)).save(texts[0])
    vq_cfg = json.loads((vq / "config.json").read_text())
    vocab = Vocab(TextTokenizer.load(texts[0]).size, vq_cfg["vq"]["codebook_size"], len(SEG_CLASSES),
                  tuple(vq_cfg["grid"]))
    torch.manual_seed(0)
    model = Transformer(get_preset(preset, vocab_size=vocab.size))
    for name, p in model.named_parameters():  # the init zeroes output layers: all logits would be 0
        torch.nn.init.normal_(p, std=0.2 if name == "lm_head.weight" else 0.02)
    write_bundle(model, vocab, tmp / "bundle", image_tokenizer=vq, text_tokenizer=texts[0],
                 extra={"tasks": ["t2i"]}, log=log)
    return tmp / "bundle", which


def with_int8(bundle: Path, tmp: Path, log: Callable[[str], None]) -> Path:
    """The bundle, or a copy with int8 graphs made from its float32 ones if it was exported without."""
    import shutil

    from engine.bundle import Bundle, write_manifest
    from training.export import quantize_int8

    if "int8" in Bundle.load(bundle).precisions:
        return bundle
    log(f"{bundle} has no int8 graphs: quantizing a copy for this run")
    copy = tmp / "bundle-int8"
    shutil.copytree(bundle, copy)
    quantize_int8(copy)
    write_manifest(copy)
    return copy


def time_request(clock: Clock, bundle: Path, repeats: int) -> dict:
    """Engine.generate (one image, CFG 3, no retrieval) with the float32 and the int8 graphs: ms to the
    first partial image and to the result; and what the image tokenizer's decoder costs in them."""
    from engine.engine import Engine
    from engine.events import Finished, PartialImage

    loaded = Engine.load(bundle)
    out = {"provider": loaded.provider}
    for precision in loaded.bundle.precisions:
        engine = Engine(loaded.bundle, loaded.bundle.backend(precision=precision), loaded.text_tokenizer,
                        loaded.image_tokenizer, loaded.retriever, loaded.bank)
        first, final = [], []
        for r in range(repeats + 1):
            t = clock()
            seen = None
            for event in engine.generate("a red circle above a blue square", n=1, seed=r, retrieve=0):
                if isinstance(event, PartialImage) and seen is None:
                    seen = clock() - t
                if isinstance(event, Finished) and r:
                    first.append(seen)
                    final.append(clock() - t)
        out[precision] = {"first_preview_ms": round(1e3 * min(first), 1),
                          "image_ms": round(1e3 * min(final), 1)}
    tok, grid = loaded.image_tokenizer, loaded.vocab.image_grid
    codes = np.zeros((1, *grid), np.int64)
    for name, call in (("decode_ms", lambda: tok.decode(codes)),
                       ("decode_partial_ms", lambda: tok.decode_partial(codes.reshape(1, -1)[:, : grid[1]]))):
        call()
        t = clock()
        for _ in range(10):
            call()
        out[f"image_tokenizer_{name}"] = round(1e3 * (clock() - t) / 10, 2)
    return out


# -- the run ---------------------------------------------------------------------------------------------
def run(repeats: int = 3, bundle: str | None = None, preset: str = "shapes", threads: int | None = None,
        log: Callable[[str], None] = print) -> dict:
    """threads: for torch and ONNX Runtime alike (default: the physical cores). On a machine shared
    with other jobs, 1 thread keeps OpenMP's barriers from thrashing and the comparison fair."""
    import os

    import torch

    from engine.backends import OnnxBackend, TorchBackend
    from engine.bundle import GRAPHS
    from engine.nn.transformer import Transformer, count_params, get_preset
    from engine.providers import physical_cores
    from training.export import export_transformer

    threads = threads or physical_cores()
    # One clock for every figure: wall time, or with 1 thread the process's CPU time, which for a
    # single-threaded process is its wall time on an idle core. On a machine shared with other jobs
    # (ours: 2 cores, load 10-20) wall time measures the neighbours more than the code.
    clock = time.process_time if threads == 1 else time.perf_counter
    os.environ["TESSERA_THREADS"] = str(threads)  # the Engine's sessions too
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    cfg = get_preset(preset)
    vocab = bench_vocab(cfg.vocab_size)
    steps = vocab.image_tokens_per_image
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    for name, p in model.named_parameters():
        torch.nn.init.normal_(p, std=0.2 if name == "lm_head.weight" else 0.02)
    hf = hf_model(cfg)
    log("measuring the machine ...")
    peak, bw = gemm_peak_gflops(clock), memory_bandwidth_gbs(clock)
    params = count_params(model)["matmul_params"]
    result: dict = {
        "clock": "process CPU time (1 thread)" if threads == 1 else "wall time",
        "machine": {"cores": physical_cores(), "threads": threads, "gemm_peak_gflops": round(peak, 1),
                    "mem_bandwidth_gbs": round(bw, 1)},
        "model": {"preset": preset, **cfg.to_dict(), "matmul_params": params,
                  "hf_params": sum(p.numel() for p in hf.parameters())},
        "tokens_per_image": steps, "prompt_tokens": PROMPT_LEN,
        "paths": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_transformer(model, tmp)
        onnx = {precision: OnnxBackend(tmp / prefill, tmp / decode, cfg.vocab_size, cfg.max_seq_len,
                                       threads=threads) for precision, (prefill, decode) in GRAPHS.items()}
        backends = {
            "torch_nocache": NoCacheBackend(model),
            "torch_cache": TorchBackend(model, max_batch=max(BATCHES), max_len=PROMPT_LEN + steps),
            "onnx": onnx["fp32"],
            "onnx_int8": onnx["int8"],
        }
        for batch in BATCHES:
            timings = {"hf_generate": time_hf(clock, hf, cfg.vocab_size, batch, steps, repeats)}
            log(f"batch {batch}: hf_generate {timings['hf_generate'] * 1e3:.0f} ms")
            for name, backend in backends.items():
                timings[name] = time_ours(clock, backend, vocab, batch, repeats)
                log(f"batch {batch}: {name} {timings[name] * 1e3:.0f} ms")
            timings["roofline"] = roofline_ms(cfg, params, batch, PROMPT_LEN, steps, peak, bw) / 1e3
            for name, seconds in timings.items():
                result["paths"].setdefault(name, {})[f"b{batch}"] = {
                    "ms_per_image": round(seconds * 1e3, 2),
                    "ms_per_token": round(seconds * 1e3 / steps, 3),
                    "tokens_per_s": round(batch * steps / seconds, 1),
                }
        result["provider"] = backends["onnx"].provider
        path, which = default_bundle(bundle, preset, tmp, log)
        log(f"request timing on {which} ...")
        request = time_request(clock, path, repeats)
    p = result["paths"]
    # 1-minute load average before and after: other jobs on the machine inflate every figure
    result["machine"]["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["default_model"] = which
    for b in BATCHES:
        for name in ("onnx", "onnx_int8"):
            ratio = p[name][f"b{b}"]["tokens_per_s"] / p["hf_generate"][f"b{b}"]["tokens_per_s"]
            result[f"{name}_vs_hf_speedup_b{b}"] = round(ratio, 2)
    result["request"] = request
    result["image_ms"] = request["fp32"]["image_ms"]
    result["first_preview_ms"] = request["fp32"]["first_preview_ms"]
    result["roofline_image_ms"] = p["roofline"]["b2"]["ms_per_image"]
    result["targets"] = {
        "onnx_vs_hf_b2_ge_5x": result["onnx_vs_hf_speedup_b2"] >= 5,
        "image_le_150ms": result["image_ms"] <= 150,
        "first_preview_le_30ms": result["first_preview_ms"] <= 30,
        "int8": {"onnx_vs_hf_b2_ge_5x": result["onnx_int8_vs_hf_speedup_b2"] >= 5,
                 "image_le_150ms": request.get("int8", {}).get("image_ms", 1e9) <= 150,
                 "first_preview_le_30ms": request.get("int8", {}).get("first_preview_ms", 1e9) <= 30},
    }
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
