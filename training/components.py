"""The parts a transformer is trained with, identified by hash.

    image_tokenizer   its encoder.onnx: the encoder and codebook make the codes (a decoder refined
                      later on the frozen codes keeps them, and keeps this hash)
    text_tokenizer    its tokenizer.json
    retriever         its text_encoder.onnx and image_encoder.onnx: they make the embeddings

A training source records the parts its data came from (`record`, in the run's config.json under
"trained_with"); `tessera export` takes them from there and refuses any other (`check`); `tessera index
build` records the retriever and image tokenizer a memory bank was built with (params.json
"built_from"), so a bank never ships beside a retriever whose embeddings it does not hold.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.bundle import TEXT_TOKENIZER_FILE
from engine.errors import BadInputError

FILES = {
    "image_tokenizer": ("encoder.onnx",),
    "text_tokenizer": (TEXT_TOKENIZER_FILE,),
    "retriever": ("text_encoder.onnx", "image_encoder.onnx"),
}


def fingerprint(kind: str, path: str | Path) -> str:
    """The first 16 hex digits of sha256 over the files that define a part (FILES). A text
    tokenizer may be given as its tokenizer.json or the folder holding it."""
    path = Path(path)
    files = [path] if path.is_file() else [path / name for name in FILES[kind]]
    h = hashlib.sha256()
    for f in files:
        if not f.is_file():
            raise BadInputError(f"{kind.replace('_', ' ')} {path}: {f.name} not found")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def record(**paths: str | Path | None) -> dict[str, dict[str, str]]:
    """{kind: {"path", "sha256"}} of the given parts; None ones are left out."""
    return {kind: {"path": str(path), "sha256": fingerprint(kind, path)}
            for kind, path in paths.items() if path is not None}


def check(kind: str, path: str | Path, recorded: dict[str, dict[str, str]], by: str) -> None:
    """One-line error naming both parts when `path` is not the part `recorded` (by `by`) holds."""
    want = recorded.get(kind)
    if want is None:
        return
    got = fingerprint(kind, path)
    if got != want["sha256"]:
        name = kind.replace("_", " ")
        raise BadInputError(f"{name} {path} (sha256 {got}) is not the one {by} was made with: "
                            f"{want['path']} (sha256 {want['sha256']})")
