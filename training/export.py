"""Export a trained model to a bundle (docs/architecture.md): the transformer as two ONNX graphs plus the
other components, checked against torch and sealed by a manifest.

    prefill.onnx  ids (B, T), n_pad (B,)                       -> logits (B, V), present_{k,v}.{layer}
    decode.onnx   ids (B, T), n_pad (B,), past_{k,v}.{layer}   -> logits (B, V), present_{k,v}.{layer}

Each cache entry is (B, n_head, P, head_dim); B, T and P are dynamic. Rows are left-padded with
n_pad <pad> tokens that no query sees (engine.backends.padded_step), so prompts of different lengths
share a batch exactly. logits are those of the last position only (nanoGPT's inference trick).
model/*_int8.onnx are the same graphs with int8 weights (ORT MatMulNBits: 8 bits, blocks of 32,
int8 compute; gpt-fast's weight-only int8). All four keep their weights in one file, model/weights.bin
(ONNX external data), each distinct tensor once.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import engine.nn.transformer as transformer_module
from engine.backends import GridCells, OnnxBackend, cells_of, graph_names, padded_step
from engine.bundle import (
    BUNDLE_FORMAT,
    CONFIG_FILE,
    DECODE_FILE,
    GRAPHS,
    ONNX_WEIGHTS_FILE,
    PREFILL_FILE,
    TEXT_TOKENIZER_FILE,
    WEIGHTS_FILE,
    write_manifest,
)
from engine.decode import left_pad
from engine.errors import BadInputError
from engine.io import atomic_write, atomic_write_text, publish_folder
from engine.nn.transformer import ModelConfig, Transformer
from engine.vocab import Vocab

OPSET = 17
TRAINING_STATE = ("checkpoint*", "*.jsonl", "*.log")  # in components: never copied into a bundle
TORCH_ONLY = ("*.safetensors",)  # in components; left out by runtime_only
PARITY_TOLERANCE = 1e-3  # max |Δlogit| accepted between ONNX Runtime and torch (float32)


class _Prefill(nn.Module):
    """inputs: ids, n_pad[, cell] (a model with a grid takes the cells)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model, self.heads = model, 3 if model.config.grid_rows else 2

    def forward(self, *inputs):
        ids, n_pad, cells = (*inputs, None) if self.heads == 2 else inputs
        logits, ks, vs = padded_step(self.model, ids, n_pad, cells)
        return logits, *ks, *vs


class _Decode(_Prefill):
    """inputs: ids, n_pad[, cell], past_k.*, past_v.*"""

    def forward(self, *inputs):
        head, past = inputs[: self.heads], inputs[self.heads :]
        ids, n_pad, cells = (*head, None) if self.heads == 2 else head
        n = len(past) // 2
        logits, ks, vs = padded_step(self.model, ids, n_pad, cells, past[:n], past[n:])
        return logits, *ks, *vs


@contextlib.contextmanager
def _static_layer_norm(d_model: int):
    """The TorchScript exporter needs LayerNorm's normalized_shape as a constant, and the model takes
    it from x.shape[-1] (a traced value); every LayerNorm in the model normalises over d_model."""
    original = transformer_module.layer_norm
    transformer_module.layer_norm = lambda x: F.layer_norm(x, (d_model,))
    try:
        yield
    finally:
        transformer_module.layer_norm = original


def export_transformer(model: Transformer, out_dir: str | Path, int8: bool = True) -> None:
    """Write prefill.onnx and decode.onnx (TorchScript exporter: ~1 s, the dynamo one ~20 s), and
    their int8 twins unless int8 is False."""
    model = model.eval().float()
    c = model.config
    out_dir = Path(out_dir)
    grid = bool(c.grid_rows)
    names = graph_names(c.n_layer, cells=grid)
    ids = torch.randint(0, c.vocab_size, (2, 5))
    n_pad = torch.tensor([0, 2])
    cells = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])
    head = (ids, n_pad, cells) if grid else (ids, n_pad)
    n_head = len(head)
    axes = {"ids": {0: "batch", 1: "tokens"}, "n_pad": {0: "batch"}, "logits": {0: "batch"},
            "cell": {0: "batch", 1: "tokens"}}
    axes |= {name: {0: "batch", 2: "cache"} for name in names["outputs"][1:]}
    axes |= {name: {0: "batch", 2: "past"} for name in names["decode_inputs"][n_head:]}
    with torch.no_grad(), _static_layer_norm(c.d_model), warnings_off():
        _, pk, pv = padded_step(model, ids, n_pad, cells if grid else None)
        step_head = tuple(t[:, :1] if t.dim() == 2 else t for t in head)
        graphs = [
            (_Prefill(model), head, names["prefill_inputs"], out_dir / PREFILL_FILE),
            (_Decode(model), (*step_head, *pk, *pv), names["decode_inputs"], out_dir / DECODE_FILE),
        ]
        for module, args, inputs, path in graphs:
            used = {k: v for k, v in axes.items() if k in inputs or k in names["outputs"]}

            def write(tmp: str, module=module, args=args, inputs=inputs, used=used) -> None:
                torch.onnx.export(module, args, tmp, input_names=inputs, output_names=names["outputs"],
                                  dynamic_axes=used, opset_version=OPSET, dynamo=False)

            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, write)
    precisions = ("fp32", "int8") if int8 else ("fp32",)
    if int8:
        quantize_int8(out_dir)
    share_weights([out_dir / f for p in precisions for f in GRAPHS[p]], out_dir / ONNX_WEIGHTS_FILE)


def quantize_int8(out_dir: Path) -> None:
    """The int8 twins of the float32 graphs (weight-only, per block of 32 input features)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    pairs = list(zip(GRAPHS["fp32"], GRAPHS["int8"], strict=True))
    logging.disable(logging.INFO)  # the quantizer logs every node it skips
    try:
        for src, dst in pairs:
            q = MatMulNBitsQuantizer(onnx.load(str(out_dir / src)), bits=8, block_size=32, is_symmetric=True,
                                     accuracy_level=4)  # 4: int8 compute (the fast kernels)
            q.process()
            atomic_write(out_dir / dst, lambda tmp, q=q: onnx.save_model(q.model.model, tmp))
    finally:
        logging.disable(logging.NOTSET)


def share_weights(graphs: list[Path], weights: Path, min_bytes: int = 1024) -> None:
    """Move the initializers of several graphs (beside each other) into one external-data file,
    each distinct tensor stored once: prefill and decode hold the same weights."""
    import hashlib

    import onnx
    from onnx.external_data_helper import set_external_data

    models = [onnx.load(str(g)) for g in graphs]
    stored: dict[str, tuple[int, int]] = {}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            for model in models:
                for t in model.graph.initializer:
                    if len(t.raw_data) < min_bytes:
                        continue
                    key = hashlib.sha256(t.raw_data).hexdigest()
                    if key not in stored:
                        f.write(b"\0" * (-f.tell() % 64))  # aligned, so ORT can map tensors in place
                        stored[key] = (f.tell(), len(t.raw_data))
                        f.write(t.raw_data)
                    set_external_data(t, weights.name, *stored[key])
                    t.ClearField("raw_data")

    atomic_write(weights, write)
    for model, path in zip(models, graphs, strict=True):
        atomic_write(path, lambda tmp, model=model: onnx.save_model(model, tmp))


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the shape arithmetic, all intended
        yield


def parity(model: Transformer, bundle_dir: str | Path, precision: str = "fp32", seed: int = 0,
           steps: int = 4, grid: GridCells | None = None) -> float:
    """max |Δlogit| between ONNX Runtime (padded batch, prefill + decode steps) and the model's own
    torch forward over each unpadded sequence. grid: the vocabulary's cells (a model with a grid);
    the prompts then hold runs of grid tokens long enough to cross image rows."""
    c = model.config
    rng = np.random.default_rng(seed)
    lengths = [min(c.max_seq_len - steps, n) for n in (7, 3, 1)]
    prompts = [rng.integers(0, c.vocab_size, n) for n in lengths]
    if grid is not None:
        grid_ids = np.flatnonzero(grid.is_grid)
        prompts[0] = np.concatenate([prompts[0][:1], rng.choice(grid_ids, c.grid_cols + 2)])
    prefill, decode = (Path(bundle_dir) / f for f in GRAPHS[precision])
    backend = OnnxBackend(prefill, decode, c.vocab_size, c.max_seq_len, device="cpu", grid=grid)
    ids, n_pad = left_pad(prompts)
    logits, state = backend.prefill(ids, n_pad)
    got = [logits]
    seqs = [list(p) for p in prompts]
    for k in range(steps):
        nxt = rng.integers(0, c.vocab_size, len(prompts))
        if grid is not None and k % 2 == 0:
            nxt[0] = rng.choice(np.flatnonzero(grid.is_grid))
        for s, t in zip(seqs, nxt, strict=True):
            s.append(int(t))
        logits, state = backend.decode(nxt[:, None], state)
        got.append(logits)
    worst = 0.0
    with torch.no_grad():
        for i, s in enumerate(seqs):
            cells = torch.from_numpy(cells_of(grid, np.array([s]))) if grid is not None else None
            ref, _ = model(torch.tensor([s]), cells=cells)
            ref = ref[0, len(prompts[i]) - 1:].numpy()  # positions whose logits the backend returned
            mine = np.stack([g[i] for g in got])
            worst = max(worst, float(np.abs(ref - mine).max()))
    return worst


# -- checkpoints and bundles ------------------------------------------------------------------------
def load_checkpoint(checkpoint_dir: str | Path) -> tuple[Transformer, Vocab, dict]:
    """A trained model (training/checkpoint.py): a run folder's final model.safetensors + config.json,
    a checkpoint folder (model.safetensors + state.json), or a run folder with checkpoints/ (the
    latest). The JSON holds {"model": ModelConfig, "vocab": Vocab, ...}. Returns the model, its
    vocabulary and the JSON's other entries (run summary, tasks) for the bundle's config."""
    from safetensors.torch import load_file

    from training.checkpoint import latest_checkpoint

    root = Path(checkpoint_dir)
    for folder in filter(None, [root, latest_checkpoint(root) if root.is_dir() else None]):
        weights = folder / WEIGHTS_FILE
        cfg_path = next((folder / n for n in (CONFIG_FILE, "state.json") if (folder / n).is_file()), None)
        if weights.is_file() and cfg_path is not None:
            break
    else:
        raise BadInputError(f"{root} is not a model checkpoint: no {WEIGHTS_FILE} beside a config.json "
                            "or state.json")
    meta = json.loads(cfg_path.read_text())
    try:
        config, vocab = ModelConfig.from_dict(meta["model"]), Vocab.from_dict(meta["vocab"])
    except KeyError as exc:
        raise BadInputError(f"{cfg_path} lacks the {exc.args[0]!r} entry") from None
    if config.vocab_size < vocab.size:
        raise BadInputError(f"model vocab_size {config.vocab_size} < the vocabulary's {vocab.size} ids")
    model = Transformer(config)
    model.load_state_dict(load_file(str(weights)))
    extra = {k: v for k, v in meta.items() if k not in ("model", "vocab", "optimizer")}
    return model.eval(), vocab, extra


def write_bundle(
    model: Transformer,
    vocab: Vocab,
    out: str | Path,
    *,
    image_tokenizer: str | Path,
    text_tokenizer: str | Path,
    retriever: str | Path | None = None,
    memory: str | Path | None = None,
    extra: dict | None = None,
    force: bool = False,
    int8: bool = True,
    runtime_only: bool = False,
    name: str | None = None,
    log=print,
) -> dict:
    """Assemble a bundle in a staging folder beside `out`, seal it with manifest.json and move it into
    place; returns its config. A half-written bundle never sits at `out`.

    The components' training checkpoints and logs are never copied. runtime_only also leaves out what
    only torch uses (model.safetensors, the components' safetensors): the bundle the studio ships.
    int8=False leaves out the int8 twin graphs."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not force:
        raise BadInputError(f"{out} exists; pass --force to replace it")
    sources = {"image_tokenizer": image_tokenizer, "retriever": retriever, "memory": memory}
    for part, src in [*sources.items(), ("text_tokenizer", text_tokenizer)]:
        if src is not None and not Path(src).exists():
            raise BadInputError(f"{part} not found: {src}")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        export_transformer(model, stage, int8=int8)
        grid = GridCells.of(vocab) if model.config.grid_rows else None
        diff = parity(model, stage, grid=grid)
        diff_int8 = parity(model, stage, "int8", grid=grid) if int8 else None
        log(f"exported the transformer in {time.perf_counter() - t0:.1f} s; max |Δlogit| vs torch: "
            f"{diff:.2e} (float32)" + (f", {diff_int8:.2e} (int8 weights)" if int8 else ""))
        if diff > PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX and torch disagree: max |Δlogit| {diff:.2e} > {PARITY_TOLERANCE}")
        if not runtime_only:
            atomic_write(stage / WEIGHTS_FILE, lambda tmp: save_file(_contiguous(model.state_dict()), tmp))
        shutil.copyfile(_tokenizer_file(text_tokenizer), stage / TEXT_TOKENIZER_FILE)
        skip = [".*", "__pycache__", *TRAINING_STATE, *(TORCH_ONLY if runtime_only else ())]
        components = {}
        for component, src in sources.items():
            if src is not None:
                shutil.copytree(src, stage / component, ignore=shutil.ignore_patterns(*skip))
                components[component] = component
        config = {
            "format": BUNDLE_FORMAT,
            "model": model.config.to_dict(),
            "vocab": vocab.to_dict(),
            "components": components,
            "export": {
                "opset": OPSET,
                "parity_max_abs_logit_diff": diff,
                **({"parity_int8_max_abs_logit_diff": diff_int8} if int8 else {}),
                "torch": torch.__version__,
                "onnxruntime": __import__("onnxruntime").__version__,
                "python": sys.version.split()[0],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            **(extra or {}),
            **({"name": name} if name else {}),
        }
        atomic_write_text(stage / CONFIG_FILE, json.dumps(config, indent=2))
        write_manifest(stage)  # last: it vouches for everything above
        publish_folder(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return config


def _tokenizer_file(path: str | Path) -> Path:
    path = Path(path)
    return path / TEXT_TOKENIZER_FILE if path.is_dir() else path


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous() for k, v in state.items()}


# -- the tiny bundle (tests) ----------------------------------------------------------------------------
TINY_IMAGE_SIZE = 16  # 16 px, 4x4 codes: small enough for a test to generate images in milliseconds


def build_tiny_bundle(path: str | Path, seed: int = 0, extra: dict | None = None) -> Path:
    """A complete bundle with random weights, every component real but tiny: transformer (preset
    "tiny" with cell embeddings), VQ tokenizer (16 px, 4x4 grid, 32 codes), byte-level BPE (~300 ids),
    bi-encoder retriever and a memory bank of 8 Shapes World documents. Deterministic for a seed."""
    from engine.memory import DocumentTable, MemoryBank
    from engine.nn.retriever import BiEncoder, RetrieverConfig
    from engine.nn.transformer import get_preset
    from engine.nn.vqvae import VQConfig, VQModel
    from engine.retriever import OnnxRetriever, document_embeddings
    from training import retriever_train, tokenizer_train
    from training.data.shapes import SEG_CLASSES, ShapesWorld
    from training.text_tokenizer_train import shapes_corpus, train_text_tokenizer

    path = Path(path)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text_tok = train_text_tokenizer(shapes_corpus(n_scenes=50, seed=seed), vocab_size=300)
        text_tok.save(tmp / TEXT_TOKENIZER_FILE)
        vq = VQModel(VQConfig(image_size=TINY_IMAGE_SIZE, codebook_size=32, code_dim=4, channels=(8, 8),
                              stem_channels=8, res_blocks=1, up_blocks=0)).eval()
        tokenizer_train.export(vq, tmp / "image_tokenizer")
        retriever = BiEncoder(RetrieverConfig(dim=16, width=16, text_layers=2, text_heads=2, max_bytes=64,
                                              image_size=TINY_IMAGE_SIZE, channels=(8, 8))).eval()
        retriever_train.export(retriever, tmp / "retriever")

        world = ShapesWorld("train", seed=seed, size=TINY_IMAGE_SIZE)
        samples = [world.sample(i) for i in range(8)]
        images = np.stack([s.image for s in samples])
        texts = [s.caption for s in samples]
        with torch.no_grad():
            codes = vq.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).numpy()
        table = DocumentTable(texts, codes.reshape(len(samples), -1), np.ones(8, bool), np.ones(8, bool))
        embeddings = document_embeddings(OnnxRetriever.load(tmp / "retriever", device="cpu"), texts, images)
        MemoryBank.build(embeddings, table).save(tmp / "memory")

        vocab = Vocab(text_tok.size, vq.cfg.codebook_size, len(SEG_CLASSES), vq.cfg.grid)
        h, w = vocab.image_grid  # cell embeddings, as the default model has (engine/nn/transformer.py)
        model = Transformer(get_preset("tiny", vocab_size=vocab.size, grid_rows=h, grid_cols=w))
        # random but not degenerate: the model's own init zeroes the output layers (all logits 0)
        for name, p in model.named_parameters():
            nn.init.normal_(p, std=0.2 if name == "lm_head.weight" else 0.02)
        info = {"name": f"tiny-random-{seed}", "weights": "random (tests)", **(extra or {})}
        write_bundle(model.eval(), vocab, path, image_tokenizer=tmp / "image_tokenizer",
                     text_tokenizer=tmp / TEXT_TOKENIZER_FILE, retriever=tmp / "retriever",
                     memory=tmp / "memory", extra=info, log=lambda *_: None)
    return path


def make_tiny_bundle(path: str | Path, seed: int = 0, extra: dict | None = None) -> Path:
    """build_tiny_bundle at `path`, through a build cache in the temp folder: building takes ~20-50 s
    (the VQ and retriever exports use the dynamo exporter), copying a cached bundle milliseconds.
    A cached bundle is reused only while every engine/ and training/ source file that was loaded when
    it was built is unchanged (and the seed, `extra` and library versions are the same).
    TESSERA_NO_BUNDLE_CACHE=1 always builds."""
    import hashlib
    import os

    path = Path(path)
    if os.environ.get("TESSERA_NO_BUNDLE_CACHE"):
        return build_tiny_bundle(path, seed, extra)
    versions = [__import__(m).__version__ for m in ("torch", "onnx", "onnxruntime", "tokenizers", "faiss")]
    key = hashlib.sha256(json.dumps([seed, extra, versions], sort_keys=True).encode()).hexdigest()[:16]
    entry = Path(tempfile.gettempdir()) / "tessera-tiny-bundles" / key
    sources = entry / "sources.json"
    if not (sources.is_file() and _sources_unchanged(json.loads(sources.read_text()))):
        stage = entry.with_name(f".{key}.{os.getpid()}")
        shutil.rmtree(stage, ignore_errors=True)
        build_tiny_bundle(stage / "bundle", seed, extra)
        atomic_write_text(stage / "sources.json", json.dumps(_loaded_sources()))
        shutil.rmtree(entry, ignore_errors=True)
        try:
            stage.rename(entry)
        except OSError:  # another process cached it meanwhile
            shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(entry / "bundle", path, dirs_exist_ok=True)
    return path


def _loaded_sources() -> dict[str, str]:
    """sha256 of every engine/ and training/ module file loaded in this process."""
    import hashlib

    root = Path(__file__).resolve().parent.parent
    packages = (root / "engine", root / "training")
    out = {}
    for module in list(sys.modules.values()):
        file = Path(getattr(module, "__file__", None) or "").resolve()
        if file.suffix == ".py" and any(file.is_relative_to(p) for p in packages):
            out[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def _sources_unchanged(recorded: dict[str, str]) -> bool:
    import hashlib

    return all(Path(f).is_file() and hashlib.sha256(Path(f).read_bytes()).hexdigest() == h
               for f, h in recorded.items())
