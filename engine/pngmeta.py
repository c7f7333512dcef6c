"""PNG files that remember how they were made.

`save_png` writes two text chunks, as other image generators do:
- "tessera": JSON {prompt, seed, settings, model_id, task, version} (iTXt, UTF-8) — what `read_params`
  and `tessera info` read back, exactly;
- "parameters": the AUTOMATIC1111 text layout (prompt line, then "Key: value, Key: value"), so image
  browsers and tools that know that convention show the prompt and seed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from engine.errors import BadInputError

CHUNK = "tessera"
A1111_CHUNK = "parameters"
FIELDS = ("prompt", "seed", "settings", "model_id", "task", "version")

# A1111 spells some keys its own way; the rest become "Snake case" -> "Snake case".
_A1111_NAMES = {
    "seed": "Seed",
    "cfg": "CFG scale",
    "temperature": "Temperature",
    "top_p": "Top p",
    "cdk_alpha": "CD-K alpha",
    "cdk_k": "CD-K k",
    "n": "Batch size",
    "retrieve": "Retrieved docs",
    "size": "Size",
    "model_id": "Model",
    "task": "Task",
    "version": "Version",
}


def _jsonable(value):
    """numpy scalars/arrays -> plain Python (settings often carry them)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise BadInputError(f"image must be uint8, got {image.dtype}")
    if (image.ndim == 3 and image.shape[2] in (3, 4)) or image.ndim == 2:
        return image
    raise BadInputError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")


def _a1111_value(value) -> str:
    text = json.dumps(value, default=_jsonable) if not isinstance(value, str) else value
    # A1111 quotes values that would break its "k: v, k: v" line.
    return json.dumps(text) if ("," in text or ":" in text or "\n" in text) else text


def a1111_text(params: dict, size: tuple[int, int] | None = None) -> str:
    """The "parameters" text: the prompt, then one line of `Key: value` pairs."""
    fields: dict = {"seed": params.get("seed")}
    fields.update(params.get("settings") or {})
    if size is not None:
        fields["size"] = f"{size[1]}x{size[0]}"  # A1111 writes width x height
    for key in ("model_id", "task", "version"):
        fields[key] = params.get(key)
    pairs = []
    for key, value in fields.items():
        if value is None or key == "prompt":
            continue
        name = _A1111_NAMES.get(key, key.replace("_", " ").capitalize())
        pairs.append(f"{name}: {_a1111_value(value)}")
    prompt = str(params.get("prompt") or "").replace("\n", " ")
    return f"{prompt}\n{', '.join(pairs)}"


def save_png(path: str | Path, image: np.ndarray, params: dict | None = None) -> Path:
    """Write `image` (uint8 (H, W[, 3|4])) to `path` atomically, with its generation parameters."""
    from PIL import Image, PngImagePlugin

    from engine import __version__
    from engine.io import atomic_write

    image = _as_image(image)
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    if params is not None:
        meta = {key: params.get(key) for key in FIELDS}
        meta["version"] = meta["version"] or __version__
        extra = {k: v for k, v in params.items() if k not in FIELDS}
        meta.update(extra)
        info.add_itxt(CHUNK, json.dumps(meta, default=_jsonable, ensure_ascii=False))
        # add_text falls back to iTXt by itself when the prompt is not Latin-1.
        info.add_text(A1111_CHUNK, a1111_text(meta, image.shape[:2]))
    pil = Image.fromarray(image)
    atomic_write(path, lambda tmp: pil.save(tmp, format="PNG", pnginfo=info))
    return path


def _png_text(path: str | Path) -> dict[str, str]:
    from engine.imageio import open_image

    with open_image(path) as im:
        if im.format != "PNG":
            raise BadInputError(f"{path}: is a {im.format} image, not a PNG (only PNGs carry parameters)")
        im.load()  # text chunks after the image data are read only now
        return dict(getattr(im, "text", {}) or {})


_PAIR = re.compile(r'\s*([\w][\w \-/().]*):\s*("(?:\\.|[^"\\])*"|[^,]*)(?:,|$)')


def parse_a1111(text: str) -> dict:
    """Best-effort reading of an A1111 "parameters" text into {prompt, negative_prompt, settings}."""
    lines = text.strip().split("\n")
    settings: dict = {}
    if len(lines) > 1 and _PAIR.match(lines[-1]):
        for key, value in _PAIR.findall(lines[-1]):
            settings[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
        lines = lines[:-1]
    negative = ""
    for i, line in enumerate(lines):
        if line.startswith("Negative prompt:"):
            negative = "\n".join([line[len("Negative prompt:") :].strip(), *lines[i + 1 :]])
            lines = lines[:i]
            break
    return {"prompt": "\n".join(lines), "negative_prompt": negative, "settings": settings}


def read_params(path: str | Path) -> dict:
    """The parameters a PNG was made with: Tessera's own chunk, else an A1111 "parameters" chunk.

    Raises BadInputError when the file is not a PNG or carries neither.
    """
    text = _png_text(path)
    if CHUNK in text:
        try:
            meta = json.loads(text[CHUNK])
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path}: the '{CHUNK}' chunk is not valid JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise BadInputError(f"{path}: the '{CHUNK}' chunk is not a JSON object")
        return meta
    if A1111_CHUNK in text:
        return {**parse_a1111(text[A1111_CHUNK]), "source": A1111_CHUNK}
    raise BadInputError(f"{path}: carries no generation parameters")
