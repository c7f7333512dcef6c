"""`tessera import janus HF_DIR --out BUNDLE`: a Janus-Pro checkpoint in transformers' format (the folder
`JanusForConditionalGeneration.save_pretrained` writes, plus its tokenizer files) -> a Tessera bundle
for text->image.

    model/prefill.onnx, decode.onnx   the Llama decoder with Janus's image-generation embedding
    model/weights.bin                 (code -> generation_embeddings -> generation_aligner) and head
                                      (generation_head), at one precision (training/importers/onnx_llama.py)
    image_tokenizer/                  Janus's VQ encoder and decoder as ONNX
    tokenizer.json                    the checkpoint's text tokenizer
    config.json, manifest.json

Tessera ids: specials 0-19, then the checkpoint's text ids, then one id per VQ code, then one unused
segmentation id (a Tessera vocabulary has that range). The graphs map text ids onto the text embedding
and image ids onto the generation embedding, and return the generation head's logits in the image
range (everything else -inf). Weights are read one tensor at a time from safetensors (never pickles),
so importing needs about one tensor's memory beside the VQ model, not the checkpoint's.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.bundle import (
    BUNDLE_FORMAT,
    CONFIG_FILE,
    DECODE_FILE,
    ONNX_WEIGHTS_FILE,
    PREFILL_FILE,
    TEXT_TOKENIZER_FILE,
    write_manifest,
)
from engine.errors import BadInputError, BundleError
from engine.io import atomic_write, atomic_write_text, publish_folder
from engine.vocab import Vocab
from training.importers.onnx_llama import (
    Graph,
    Layer,
    LlamaShape,
    WeightFile,
    build_graph,
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# DeepSeek's SFT format with an empty system prompt, as Janus-Pro's image generation uses it
PROMPT_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"
BOI_TOKEN = "<begin_of_image>"
TASKS = ["t2i"]
UNSUPPORTED = {
    "caption": "Janus reads images through its SigLIP encoder, which is not a token path and is not imported",
    "answer": "Janus reads images through its SigLIP encoder, which is not a token path and is not imported",
    "inpaint": "Janus was not trained to fill masked image tokens",
    "edit": "Janus was not trained for instruction editing",
    "segment": "Janus has no segmentation tokens",
    "ground": "Janus was not trained on layout boxes",
}
LM = "model.language_model."


class Checkpoint:
    """A transformers Janus folder: its config (resolved by transformers) and its safetensors, read one
    tensor (or block of rows) at a time."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "config.json").is_file():
            raise BadInputError(f"{self.root} is not a transformers model folder: config.json is missing")
        shards = sorted(self.root.glob("*.safetensors"))
        if not shards:
            pickles = sorted(p.name for p in self.root.iterdir() if p.suffix in PICKLE_SUFFIXES)
            what = f"only pickle weights ({', '.join(pickles)})" if pickles else "no *.safetensors weights"
            raise BadInputError(f"{self.root} holds {what}; Tessera never unpickles: convert the checkpoint "
                                "to safetensors first (e.g. save_pretrained(..., safe_serialization=True))")
        from safetensors import safe_open
        from transformers import JanusConfig

        try:
            self.config: Any = JanusConfig.from_pretrained(str(self.root))
        except (ValueError, OSError, TypeError) as exc:
            raise BadInputError(f"{self.root / 'config.json'} is not a Janus config: {exc}") from None
        self._files = [safe_open(str(p), framework="pt") for p in shards]
        self._where = {name: f for f in self._files for name in f.keys()}  # noqa: SIM118 (not a dict)

    def has(self, name: str) -> bool:
        return name in self._where

    def _file(self, name: str):
        if name not in self._where:
            raise BadInputError(f"{self.root} lacks the tensor {name} (not a JanusForConditionalGeneration "
                                "checkpoint?)")
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._file(name).get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        return self._file(name).get_tensor(name).float().numpy()

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._file(name).get_slice(name)[start:stop].float().numpy()

    def prefixed(self, prefix: str) -> dict:
        """Every tensor under a prefix as torch tensors, prefix stripped (the VQ model, a few % of it)."""
        return {n[len(prefix):]: f.get_tensor(n) for n, f in self._where.items() if n.startswith(prefix)}


@dataclass(frozen=True)
class Specials:
    bos: int
    pad: int
    boi: int


def read_specials(root: Path, tokenizer) -> Specials:
    """BOS and pad from tokenizer_config.json / special_tokens_map.json, <begin_of_image> by name."""
    names: dict[str, str] = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        path = root / file
        if path.is_file():
            for key, value in json.loads(path.read_text(encoding="utf-8")).items():
                value = value.get("content") if isinstance(value, dict) else value
                if key in ("bos_token", "pad_token", "boi_token") and isinstance(value, str):
                    names.setdefault(key, value)
    names.setdefault("boi_token", BOI_TOKEN)
    ids: list[int] = []
    for key in ("bos_token", "pad_token", "boi_token"):
        token = names.get(key)
        found = tokenizer.token_to_id(token) if token is not None else None
        if found is None:
            raise BadInputError(f"{root}: the tokenizer has no {key} ({token!r}); Janus prompts need it")
        ids.append(int(found))
    return Specials(*ids)


def shape_of(config) -> LlamaShape:
    text = config.text_config
    rope = dict(getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise BadInputError(f"rotary scaling {rope.get('rope_type')!r} is not supported (only the default)")
    theta = float(rope.get("rope_theta", getattr(text, "rope_theta", 10000.0)))
    heads = text.num_attention_heads
    shape = LlamaShape(text.hidden_size, text.num_hidden_layers, heads, theta, float(text.rms_norm_eps))
    # Janus-Pro 1B and 7B: plain multi-head attention, head size hidden / heads (a bundle's cache layout)
    if (text.num_key_value_heads or heads) != heads:
        raise BadInputError(f"grouped-query attention ({text.num_key_value_heads} kv heads for {heads}) "
                            "is not supported: Tessera bundles cache one k and v per attention head")
    if (getattr(text, "head_dim", None) or shape.head_dim) != shape.head_dim or shape.head_dim % 2:
        raise BadInputError(f"head size {text.head_dim} is not hidden / heads ({shape.head_dim}, even)")
    return shape


def vocab_of(config) -> Vocab:
    n = config.vq_config.num_patches
    return Vocab(config.text_config.vocab_size, config.vq_config.num_embeddings, 1, (n, n))


def write_graphs(ckpt: Checkpoint, vocab: Vocab, precision: str, out_dir: Path, log=print) -> None:
    """Stream the decoder's and the generation path's tensors into model/weights.bin and write both graphs."""
    import onnx

    shape = shape_of(ckpt.config)
    model_dir = out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    w = WeightFile(model_dir / Path(ONNX_WEIGHTS_FILE).name, precision)
    try:
        def lin(name: str):
            bias = f"{name}.bias"
            return w.linear(name, ckpt.read(f"{name}.weight"), ckpt.read(bias) if ckpt.has(bias) else None)

        embed = f"{LM}embed_tokens.weight"
        rows, cols = ckpt.shape(embed)
        text_table = w.table("embed_tokens", rows, cols, lambda a, b: ckpt.rows(embed, a, b))
        codes, code_dim = ckpt.shape("model.generation_embeddings.weight")
        code_table = w.table("generation_embeddings", codes, code_dim,
                             lambda a, b: ckpt.rows("model.generation_embeddings.weight", a, b))
        aligner = [lin("model.generation_aligner.fc1")]
        aligner += [lin(f"model.generation_aligner.hidden_layers.{j}")
                    for j in range(ckpt.config.vq_config.num_hidden_layers - 1)]
        head = [lin("model.generation_head.proj_out"), lin("model.generation_head.vision_head")]
        layers = []
        for i in range(shape.n_layer):
            p = f"{LM}layers.{i}."
            norm = w.vector(f"{p}input_layernorm", ckpt.read(f"{p}input_layernorm.weight"))
            q, k, v, o = (lin(f"{p}self_attn.{n}_proj") for n in "qkvo")
            post = w.vector(f"{p}post_attention_layernorm", ckpt.read(f"{p}post_attention_layernorm.weight"))
            gate, up, down = (lin(f"{p}mlp.{n}_proj") for n in ("gate", "up", "down"))
            layers.append(Layer(norm, q, k, v, o, post, gate, up, down))
            log(f"layer {i + 1}/{shape.n_layer}")
        final_norm = w.vector(f"{LM}norm", ckpt.read(f"{LM}norm.weight"))
    finally:
        w.close()
    if codes != vocab.image_size or rows != vocab.text_size:
        raise BadInputError(f"{ckpt.root}: embedding tables of {rows} text ids and {codes} codes do not "
                            f"match the config's {vocab.text_size} and {vocab.image_size}")

    def embed_ids(g: Graph, ids: str) -> str:
        """Text ids -> the text table; image ids -> the code table and the aligner MLP."""
        lo, hi = vocab.image_offset, vocab.seg_offset
        is_image = g.op("And", g.op("GreaterOrEqual", ids, g.const(lo)), g.op("Less", ids, g.const(hi)))
        text_idx = g.op("Clip", g.op("Sub", ids, g.const(vocab.text_offset)), g.const(0), g.const(rows - 1))
        code_idx = g.op("Clip", g.op("Sub", ids, g.const(lo)), g.const(0), g.const(codes - 1))
        y = g.linear(g.gather(code_table, code_idx), aligner[0])
        for layer in aligner[1:]:
            y = g.linear(g.gelu(y), layer)
        return g.op("Where", g.op("Unsqueeze", is_image, g.const([-1])), y, g.gather(text_table, text_idx))

    def logits(g: Graph, hidden: str) -> str:
        """The generation head's code logits, placed in the image range of a -inf row."""
        scores = g.linear(g.gelu(g.linear(hidden, head[0])), head[1])
        batch = g.op("Slice", g.op("Shape", hidden), g.const([0]), g.const([1]))
        fill = lambda n: g.op("Expand", g.const(-np.inf, np.float32),  # noqa: E731
                              g.op("Concat", batch, g.const([n]), axis=0))
        return g.op("Concat", fill(vocab.image_offset), scores, fill(vocab.size - vocab.seg_offset), axis=1)

    for decode, rel in ((False, PREFILL_FILE), (True, DECODE_FILE)):
        model = build_graph(shape, layers, final_norm, embed_ids, logits, w.initializers, decode,
                            Path(rel).stem)
        def save(tmp: str, model: onnx.ModelProto = model) -> None:
            onnx.save_model(model, tmp)

        atomic_write(out_dir / rel, save)
        onnx.checker.check_model(str(out_dir / rel))


def write_image_tokenizer(ckpt: Checkpoint, out: Path) -> None:
    """Janus's VQ encoder (images in [-1, 1] -> codes) and decoder (codes -> images) as ONNX."""
    import torch
    from transformers.models.janus.modeling_janus import JanusVQVAE

    from training.export import warnings_off
    from training.tokenizer_train import DECODER_IO, ENCODER_IO, FORMAT

    vq_config = ckpt.config.vq_config
    vq = JanusVQVAE(vq_config).eval()
    try:
        vq.load_state_dict(ckpt.prefixed("model.vqmodel."))
    except RuntimeError as exc:
        raise BadInputError(f"{ckpt.root}: the VQ model's tensors do not fit its config: {exc}") from None
    vq.float().requires_grad_(False)
    n = vq_config.num_patches
    size = n * 2 ** (len(vq_config.channel_multiplier) - 1)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vq = vq

        def forward(self, images):
            return self.vq.encode(images).image_tokens.view(images.shape[0], n, n)

    class Decoder(Encoder):
        def forward(self, codes):
            return self.vq.decode(codes.reshape(codes.shape[0], n * n))

    graphs = ((Encoder(), torch.zeros(2, 3, size, size), ENCODER_IO, "encoder.onnx"),
              (Decoder(), torch.zeros(2, n, n, dtype=torch.long), DECODER_IO, "decoder.onnx"))
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings_off():
        for module, example, io, file in graphs:
            def write(tmp: str, module=module, example=example, io=io) -> None:
                torch.onnx.export(module, (example,), tmp, input_names=[io[0]], output_names=[io[1]],
                                  dynamic_axes={io[0]: {0: "batch"}, io[1]: {0: "batch"}}, opset_version=17,
                                  dynamo=False)

            atomic_write(out / file, write)
    config = {
        "format": FORMAT, "vq": {"image_size": size, "codebook_size": vq_config.num_embeddings},
        "grid": [n, n], "pixels": "float32 NCHW RGB in [-1, 1]", "source": "JanusVQVAE",
        "encoder": {"file": "encoder.onnx", "input": ENCODER_IO[0], "output": ENCODER_IO[1]},
        "decoder": {"file": "decoder.onnx", "input": DECODER_IO[0], "output": DECODER_IO[1]},
    }
    atomic_write_text(out / "config.json", json.dumps(config, indent=2))


def import_janus(hf_dir: str | Path, out: str | Path, precision: str = "fp32", *, name: str | None = None,
                 force: bool = False, log=print) -> dict:
    """Write the bundle in a staging folder beside `out`, seal it with its manifest, move it into place;
    returns its config. A half-written bundle never sits at `out`."""
    from tokenizers import Tokenizer

    from engine.text_tokenizer import TextTokenizer

    out = Path(out)
    if out.exists() and not force:
        raise BadInputError(f"{out} exists; pass --force to replace it")
    ckpt = Checkpoint(hf_dir)
    tokenizer_file = ckpt.root / TEXT_TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise BadInputError(f"{ckpt.root} has no {TEXT_TOKENIZER_FILE} (the fast tokenizer file)")
    try:
        TextTokenizer.load(tokenizer_file)
    except BundleError as exc:
        raise BadInputError(f"{tokenizer_file}: {exc}") from None
    specials = read_specials(ckpt.root, Tokenizer.from_file(str(tokenizer_file)))
    vocab = vocab_of(ckpt.config)
    if max(specials.bos, specials.pad, specials.boi) >= vocab.text_size:
        raise BadInputError(f"{tokenizer_file} has ids beyond the model's {vocab.text_size} text ids")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        write_graphs(ckpt, vocab, precision, stage, log)
        log(f"wrote the {precision} graphs in {time.perf_counter() - t0:.1f} s")
        write_image_tokenizer(ckpt, stage / "image_tokenizer")
        shutil.copyfile(tokenizer_file, stage / TEXT_TOKENIZER_FILE)
        shape, text = shape_of(ckpt.config), ckpt.config.text_config
        config = {
            "format": BUNDLE_FORMAT,
            "name": name or f"{ckpt.root.name}-{precision}",
            # what engine.model_config.ModelConfig checks the graphs against (the MLP is Llama's)
            "model": {"vocab_size": vocab.size, "n_layer": shape.n_layer, "n_head": shape.n_head,
                      "d_model": shape.hidden, "max_seq_len": int(text.max_position_embeddings),
                      "mlp_ratio": text.intermediate_size / shape.hidden},
            "vocab": vocab.to_dict(),
            "components": {"image_tokenizer": "image_tokenizer"},
            "tasks": TASKS,
            "unsupported": UNSUPPORTED,
            "prompt": {"template": PROMPT_TEMPLATE, "bos_id": specials.bos, "pad_id": specials.pad,
                       "boi_id": specials.boi},
            "import": {
                "family": "janus", "source": str(ckpt.root.resolve()),
                "class": "JanusForConditionalGeneration",
                "precision": precision, "transformers": __import__("transformers").__version__,
                "onnxruntime": __import__("onnxruntime").__version__, "python": sys.version.split()[0],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        }
        atomic_write_text(stage / CONFIG_FILE, json.dumps(config, indent=2))
        write_manifest(stage)  # last: it vouches for everything above
        publish_folder(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return config
