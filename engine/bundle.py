"""Model bundles (docs/architecture.md, "Model bundle"): one folder with everything a model needs at run time.

    config.json            architecture, vocabulary, components, export record (parity, versions)
    model/prefill.onnx     transformer graphs (training/export.py describes their I/O), float32
    model/decode.onnx
    model/*_int8.onnx      the same with int8 weights (optional)
    model/weights.bin      the graphs' weights (ONNX external data), each tensor once
    model.safetensors      the same weights for the torch backend (development, fine-tuning)
    tokenizer.json         byte-level BPE text tokenizer
    image_tokenizer/       VQ encoder/decoder ONNX graphs + their config
    retriever/             retriever encoders (optional)
    memory/                FAISS index + document table (optional)
    manifest.json          sha256 and size of every other file, written last

`Bundle.load` refuses a bundle whose manifest is missing (an interrupted export), that lacks a listed
file, holds a file the manifest does not list, or whose file differs from its hash. Nothing in a
bundle is unpickled: JSON, ONNX, safetensors, FAISS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.errors import BadInputError, BundleError
from engine.io import atomic_write_text
from engine.model_config import ModelConfig
from engine.vocab import Vocab

BUNDLE_FORMAT = "tessera-bundle/1"
MANIFEST_FORMAT = "tessera-manifest/1"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
PREFILL_FILE = "model/prefill.onnx"
DECODE_FILE = "model/decode.onnx"
# precision -> (prefill, decode) graphs
GRAPHS = {"fp32": (PREFILL_FILE, DECODE_FILE), "int8": ("model/prefill_int8.onnx", "model/decode_int8.onnx")}
WEIGHTS_FILE = "model.safetensors"
ONNX_WEIGHTS_FILE = "model/weights.bin"
TEXT_TOKENIZER_FILE = "tokenizer.json"
REQUIRED_FILES = (CONFIG_FILE, PREFILL_FILE, DECODE_FILE, TEXT_TOKENIZER_FILE)
COMPONENTS = ("image_tokenizer", "retriever", "memory")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _bundle_files(root: Path) -> list[str]:
    """Every file under root except the manifest and hidden files (.DS_Store, editor swap files)."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != MANIFEST_FILE and not any(p.startswith(".") for p in rel.split("/")):
            files.append(rel)
    return files


def content_digest(manifest: dict) -> str:
    """sha256 over the hashes of every file that shapes a bundle's outputs: all but config.json, whose
    export date changes with every export. Two trainings of a preset differ in the weights file (the
    graphs are the same), two bundles of one training with other image decoders in image_tokenizer/;
    either way the digest differs. "unverified" for a manifest without files."""
    files = manifest.get("files") or {}
    lines = sorted(f"{path}:{entry.get('sha256', '')}" for path, entry in files.items()
                   if path != CONFIG_FILE)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest() if lines else "unverified"


def write_manifest(root: str | Path) -> dict:
    """Hash every file of the bundle into manifest.json (atomically). Call it last."""
    root = Path(root)
    files = {rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}
             for rel in _bundle_files(root)}
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    atomic_write_text(root / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return manifest


def verify(root: str | Path, hashes: bool = True) -> dict:
    """Check a bundle against its manifest; returns the manifest or raises BundleError naming the file.
    hashes=False checks every file's presence and size but reads none (listing bundles, not loading)."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"model bundle not found: {root} is not a folder")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a complete model bundle: {MANIFEST_FILE} is missing "
                          "(an interrupted export?)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        ok = manifest.get("format") == MANIFEST_FORMAT and isinstance(files, dict)
    except OSError as exc:
        raise BundleError(f"cannot read {manifest_path}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise BundleError(f"{manifest_path} is not a valid manifest")
    for rel in files:
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts:
            raise BundleError(f"{manifest_path} lists a path outside the bundle: {rel!r}")
    for rel in REQUIRED_FILES:
        if rel not in files:
            raise BundleError(f"model bundle {root} is incomplete: {rel} is not in its manifest")
    for rel, entry in files.items():
        path = root / rel
        if not path.is_file():
            raise BundleError(f"model bundle {root} is incomplete: {rel} is missing")
        if path.stat().st_size != entry.get("size") or (hashes and sha256_file(path) != entry.get("sha256")):
            raise BundleError(f"model bundle {root} was modified: {rel} does not match its manifest hash")
    extra = sorted(set(_bundle_files(root)) - set(files))
    if extra:
        raise BundleError(f"model bundle {root} was modified: {extra[0]} is not in its manifest")
    return manifest


@dataclass(frozen=True)
class Bundle:
    root: Path
    config: dict
    vocab: Vocab
    manifest: dict

    @classmethod
    def load(cls, root: str | Path, check: bool = True, hashes: bool = True) -> Bundle:
        """Read a bundle; with check=True (always, outside tests of this module) verify the manifest,
        with hashes=False only its files' sizes (engine.installed lists bundles without reading them)."""
        root = Path(root)
        manifest = verify(root, hashes) if check else {}
        try:
            config = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read {root / CONFIG_FILE}: {exc}") from None
        if not isinstance(config, dict):
            raise BundleError(f"{root / CONFIG_FILE} is malformed: not a JSON object")
        if config.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{root} has bundle format {config.get('format')!r}; this Tessera reads "
                              f"{BUNDLE_FORMAT!r}")
        try:
            vocab = Vocab.from_dict(config["vocab"])
            model = config["model"]
            ModelConfig.from_dict(model)
        except (KeyError, TypeError, ValueError, BadInputError) as exc:
            raise BundleError(f"{root / CONFIG_FILE} is malformed: {exc}") from None
        if vocab.size > int(model["vocab_size"]):
            raise BundleError(f"{root}: the vocabulary has {vocab.size} ids, the model only "
                              f"{model['vocab_size']}")
        return cls(root, config, vocab, manifest)

    # -- what is inside ---------------------------------------------------------------------------
    @property
    def model_config(self) -> dict:
        return self.config["model"]

    @property
    def trained_tasks(self) -> frozenset[str]:
        """The model tasks (engine.instructions.Task values) config.json lists; CM3 pretraining's if none."""
        from engine.task_table import PRETRAINED_TASKS

        tasks = self.config.get("tasks") or PRETRAINED_TASKS
        if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
            raise BundleError(f"{self.root / CONFIG_FILE} is malformed: tasks is not a list of task names")
        return frozenset(tasks)

    @property
    def image_size(self) -> int:
        """The side of the square images the model reads and makes: its image tokenizer's."""
        folder = self.image_tokenizer_dir
        if folder is None:
            raise BundleError(f"model bundle {self.root} has no image tokenizer")
        path = folder / CONFIG_FILE
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["vq"]["image_size"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"cannot read the image size from {path}: {exc!r}") from None

    @property
    def max_len(self) -> int:
        return int(self.model_config["max_seq_len"])

    @property
    def parity(self) -> float | None:
        """max |Δlogit| between ONNX Runtime and torch measured at export."""
        return self.config.get("export", {}).get("parity_max_abs_logit_diff")

    @property
    def prefill_path(self) -> Path:
        return self.root / PREFILL_FILE

    @property
    def decode_path(self) -> Path:
        return self.root / DECODE_FILE

    @property
    def precisions(self) -> list[str]:
        """Weight precisions this bundle has graphs for: "fp32" always, "int8" when exported."""
        return [p for p, files in GRAPHS.items() if all((self.root / f).is_file() for f in files)]

    @property
    def weights_path(self) -> Path:
        return self.root / WEIGHTS_FILE

    @property
    def text_tokenizer_path(self) -> Path:
        return self.root / TEXT_TOKENIZER_FILE

    def component(self, name: str) -> Path | None:
        """The folder of an optional component (image_tokenizer, retriever, memory) or None."""
        if name not in COMPONENTS:
            raise KeyError(f"unknown component {name!r}; bundles have {', '.join(COMPONENTS)}")
        rel = self.config.get("components", {}).get(name)
        return None if rel is None else self.root / rel

    @property
    def image_tokenizer_dir(self) -> Path | None:
        return self.component("image_tokenizer")

    @property
    def retriever_dir(self) -> Path | None:
        return self.component("retriever")

    @property
    def memory_dir(self) -> Path | None:
        return self.component("memory")

    # -- runners ----------------------------------------------------------------------------------
    def backend(self, device: str = "auto", threads: int | None = None, precision: str = "fp32"):
        """The ONNX Runtime backend (engine.backends.OnnxBackend); `.provider` says "cuda" or "cpu".

        precision "fp32" gives the same tokens as the torch backend; "int8" (weight-only, int8 compute,
        about 4x faster where a step is bound by reading the weights) differs by quantisation noise
        (config.json export.parity_int8_max_abs_logit_diff)."""
        from engine.backends import OnnxBackend

        if precision not in GRAPHS:
            raise BundleError(f"unknown precision {precision!r}; choose one of {', '.join(GRAPHS)}")
        if precision not in self.precisions:
            raise BundleError(f"{self.root} has no {precision} graphs (export them with `tessera export`)")
        prefill, decode = (self.root / f for f in GRAPHS[precision])
        backend = OnnxBackend(prefill, decode, int(self.model_config["vocab_size"]), self.max_len,
                              device=device, threads=threads, grid=self.grid_cells())
        self._check_graph(backend.decode_session.get_inputs())
        return backend

    def _check_graph(self, inputs) -> None:
        """config.json's model against the decode graph it describes: its inputs, one k and one v past
        per layer, each (batch, n_head, past, head_dim)."""
        from engine.backends import graph_names

        c = ModelConfig.from_dict(self.model_config)
        expected = graph_names(c.n_layer, cells=self.grid_cells() is not None)["decode_inputs"]
        names = [i.name for i in inputs]
        shapes = {tuple(i.shape[1::2]) for i in inputs if i.name.startswith("past_")}
        if names != expected or shapes != {(c.n_head, c.head_dim)}:
            raise BundleError(f"{self.root / CONFIG_FILE} does not describe its graphs: n_layer {c.n_layer}, "
                              f"n_head {c.n_head}, d_model {c.d_model} against graph inputs "
                              f"{', '.join(names)} of (heads, head size) {sorted(shapes, key=str)}")

    def grid_cells(self):
        """The cells a model with a grid takes beside its ids (engine.backends.GridCells), else None."""
        from engine.backends import GridCells

        return GridCells.of(self.vocab) if int(self.model_config.get("grid_rows", 0)) else None

    def torch_backend(self, max_batch: int = 16):
        """The torch reference backend over model.safetensors (needs torch: development only)."""
        from safetensors.torch import load_file

        from engine.backends import TorchBackend
        from engine.nn.transformer import ModelConfig, Transformer

        if not self.weights_path.is_file():
            raise BundleError(f"{self.root} has no {WEIGHTS_FILE}: the torch backend needs it")
        model = Transformer(ModelConfig.from_dict(self.model_config))
        model.load_state_dict(load_file(str(self.weights_path)))
        return TorchBackend(model, max_batch=max_batch, grid=self.grid_cells())
