"""The retriever at run time: captions and images -> one L2-normalised embedding space.

`OnnxRetriever` runs the two exported encoders of Tessera's bi-encoder on ONNX Runtime (no
torch). `CLIPEmbedder` adapts a CLIP model the user already has on disk (Hugging Face
`transformers` format, loaded with local_files_only: nothing is downloaded). Both satisfy
`Embedder`, which is all the memory bank, the user library and re-ranking need.

A document's embedding is the mean of its normalised text and image vectors, renormalised
(RA-CM3); a document with one modality is that modality's vector.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from engine.errors import BadInputError, BundleError

CONFIG_FILE = "config.json"
FORMAT = 1
TEXT_IO = ("bytes", "text_vector", "text_encoder.onnx")  # (input name, output name, file)
IMAGE_IO = ("images", "image_vector", "image_encoder.onnx")


def default_retriever_dir() -> Path:
    """The shipped Shapes World retriever (written by `tessera train retriever`)."""
    from engine.paths import assets_dir

    return assets_dir() / "retrievers" / "shapes"


@runtime_checkable
class Embedder(Protocol):
    dim: int

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32, unit rows."""
        ...

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> (N, dim) float32, unit rows."""
        ...


def encode_bytes(texts: Sequence[str], max_bytes: int) -> np.ndarray:
    """(B, L) int64 byte ids (byte + 1; 0 pads), L = the longest caption rounded up to 8.
    Captions longer than max_bytes are cut (at a byte; the encoder does not mind)."""
    raw = [t.encode("utf-8", errors="replace")[:max_bytes] for t in texts]
    longest = max((len(r) for r in raw), default=0)
    out = np.zeros((len(raw), max(8, -(-longest // 8) * 8)), dtype=np.int64)
    for i, r in enumerate(raw):
        out[i, : len(r)] = np.frombuffer(r, dtype=np.uint8).astype(np.int64) + 1
    return out


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise BadInputError("embed_texts takes a list of strings, not one string")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise BadInputError(f"text {i} is empty or not a string: {t!r}")
        out.append(t)
    return out


def check_images(images: np.ndarray, size: int | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) (a single (H, W, 3) image is promoted), resized to size x size if given."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or 0 in arr.shape[1:3]:
        raise BadInputError(f"images must be uint8 (N, H, W, 3) RGB, got {arr.dtype} {tuple(arr.shape)}")
    if size is not None and arr.shape[1:3] != (size, size):
        from PIL import Image

        from engine.imageio import square_resize

        arr = np.stack([square_resize(Image.fromarray(a), size) for a in arr]) if len(arr) else \
            np.zeros((0, size, size, 3), np.uint8)
    return np.ascontiguousarray(arr)


class OnnxRetriever:
    """Tessera's bi-encoder on ONNX Runtime. `OnnxRetriever.load(folder)`; the folder is written by
    `tessera train retriever` (and copied into model bundles as `retriever/`)."""

    def __init__(self, config: dict, text_session, image_session, provider: str = "cpu") -> None:
        self.config = config
        # identifies the weights, so that stored embeddings (the user library) know when to refresh
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        self.name = f"tessera-biencoder:{digest[:12]}"
        self.dim = int(config["dim"])
        self.image_size = int(config["image_size"])
        self.max_bytes = int(config["max_bytes"])
        self.provider = provider
        self._text, self._image = text_session, image_session

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", threads: int | None = None) -> OnnxRetriever:
        from engine.providers import create_session

        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"retriever {folder}: cannot read {CONFIG_FILE}: {exc}") from None
        if config.get("format") != FORMAT or config.get("kind") != "tessera-biencoder":
            raise BundleError(f"retriever {folder}: not a Tessera bi-encoder of format {FORMAT}")
        sessions = []
        for part in ("text", "image"):
            path = folder / config[part]["file"]
            if not path.is_file():
                raise BundleError(f"retriever {folder}: missing {path.name}")
            chosen = "cpu" if device == "auto" else device
            sessions.append(create_session(path, device=chosen, threads=threads))
        # The encoders are tiny: the CPU provider answers faster than a round trip to a GPU.
        return cls(config, sessions[0][0], sessions[1][0], sessions[0][1])

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        texts = check_texts(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch
        for i in range(0, len(texts), batch_size):
            rows = order[i:i + batch_size]
            ids = encode_bytes([texts[r] for r in rows], self.max_bytes)
            out[rows] = self._text.run(None, {TEXT_IO[0]: ids})[0]
        return out

    def embed_images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = check_images(images, self.image_size)
        out = np.zeros((len(images), self.dim), np.float32)
        for i in range(0, len(images), batch_size):
            out[i:i + batch_size] = self._image.run(None, {IMAGE_IO[0]: images[i:i + batch_size]})[0]
        return out


class CLIPEmbedder:
    """A CLIP model the user already has, e.g. a local copy of openai/clip-vit-base-patch32
    (the retriever RA-CM3 and CM3Leon used). Needs `transformers` and torch; nothing is downloaded."""

    def __init__(self, model, processor, name: str = "clip") -> None:
        self.model, self.processor = model, processor
        self.dim = int(model.config.projection_dim)
        self.name = name

    @classmethod
    def load(cls, path: str | Path) -> CLIPEmbedder:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise BadInputError(f"{path} is not a local CLIP model folder (no config.json)")
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError:
            raise BadInputError("using a CLIP model needs the `transformers` package (and torch)") from None
        try:
            model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
            processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"cannot load a CLIP model from {path}: {exc}") from None
        return cls(model, processor, name=f"clip:{path.resolve().name}")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = check_texts(texts)
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            out = self.model.get_text_features(**inputs)
        return normalize(getattr(out, "pooler_output", out).numpy())

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        import torch

        images = check_images(images)
        inputs = self.processor(images=list(images), return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_image_features(**inputs)
        return normalize(getattr(out, "pooler_output", out).numpy())


def text_image_score(embedder: Embedder, texts: str | Sequence[str], images: np.ndarray) -> np.ndarray:
    """Cosine between each text and its image, (N,) float32; one text is scored against every
    image (re-ranking N candidates of one prompt)."""
    v = embedder.embed_images(images)
    t = embedder.embed_texts([texts] if isinstance(texts, str) else texts)
    if len(t) not in (1, len(v)):
        raise BadInputError(f"{len(t)} texts for {len(v)} images")
    return np.sum(t * v, axis=1).astype(np.float32)


def document_embeddings(embedder: Embedder, texts: Sequence[str | None],
                        images: Sequence[np.ndarray | None] | np.ndarray) -> np.ndarray:
    """(N, dim): mean of each document's normalised text and image vectors, renormalised.
    texts[i] None (or "") / images[i] None mark a missing modality; every document needs one."""
    n = len(texts)
    if len(images) != n:
        raise BadInputError(f"{n} texts for {len(images)} images")
    has_t = [i for i, t in enumerate(texts) if t]
    has_i = [i for i, im in enumerate(images) if im is not None]
    out = np.zeros((n, embedder.dim), np.float32)
    if has_t:
        out[has_t] += embedder.embed_texts([t for t in texts if t])
    if has_i:
        out[has_i] += embedder.embed_images(np.stack([im for im in images if im is not None]))
    empty = np.flatnonzero(np.linalg.norm(out, axis=1) == 0)
    if len(empty):
        raise BadInputError(f"document {int(empty[0])} has neither text nor image")
    return normalize(out)


def query_dropout(text: str | None, image: np.ndarray | None, rng: np.random.Generator, p: float = 0.2,
                  patch: int = 8) -> tuple[str | None, np.ndarray | None]:
    """Drop a share p of the query's tokens before it is embedded (RA-CM3's 20 % query dropout).

    Text: each whitespace-separated word is dropped with probability p (one word always stays).
    Image: each patch x patch pixel cell (one VQ code's footprint at 64 px) is replaced, with
    probability p, by the image's mean colour - the pixel-space analogue of dropping an image token.
    """
    if text:
        words = text.split()
        keep = rng.random(len(words)) >= p
        if not keep.any():
            keep[rng.integers(len(words))] = True
        text = " ".join(w for w, k in zip(words, keep, strict=True) if k)
    if image is not None:
        image = np.array(image, dtype=np.uint8, copy=True)
        h, w = image.shape[0] // patch, image.shape[1] // patch
        drop = rng.random((h, w)) < p
        mean = image.reshape(-1, 3).mean(0).round().astype(np.uint8)
        for r, c in zip(*np.nonzero(drop), strict=True):
            image[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = mean
    return text, image
