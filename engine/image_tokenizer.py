"""Image tokenizer runtime: uint8 RGB images <-> grids of VQ codes, on ONNX Runtime (no torch).

A tokenizer folder holds config.json, encoder.onnx (images float32 (N, 3, H, W) in [-1, 1] -> codes
int64 (N, h, w)) and decoder.onnx (codes -> images), as written by training/tokenizer_train.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import BadInputError, BundleError
from engine.paths import default_image_tokenizer_dir

GREY = 128  # neutral fill for rows a partial decode has not reached yet
CHUNK = 256  # images per ONNX call: bounds memory for big batches


def _session(path: Path):
    """An ONNX Runtime session, on CUDA when it works there (falls back to CPU). It runs once per
    finished row, between decode steps: with ORT's default spinning its idle pool threads kept a second
    core busy through the whole decode (measured), so spinning is off."""
    from engine.providers import create_session

    return create_session(path, spinning=False)[0]


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to size x size (Lanczos). uint8 (H, W, 3) in and out."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    box = (left, top, left + side, top + side)
    # Same recipe as training/data/folder.py, so folder training data and runtime inputs match.
    pil = Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return np.asarray(pil, dtype=np.uint8)


class ImageTokenizer:
    def __init__(self, encoder, decoder, config: dict):
        self._enc, self._dec, self.config = encoder, decoder, config
        vq = config["vq"]
        self.image_size: int = int(vq["image_size"])
        self.codebook_size: int = int(vq["codebook_size"])
        rows, cols = (int(g) for g in config["grid"])
        self.grid: tuple[int, int] = (rows, cols)
        self.patch: int = self.image_size // self.grid[1]
        self._enc_io = (config["encoder"]["input"], config["encoder"]["output"])
        self._dec_io = (config["decoder"]["input"], config["decoder"]["output"])

    @classmethod
    def load(cls, path: str | Path | None = None) -> ImageTokenizer:
        """Load a tokenizer folder (default: the shipped Shapes World tokenizer)."""
        root = Path(path) if path is not None else default_image_tokenizer_dir()
        cfg_path = root / "config.json"
        if not cfg_path.is_file():
            raise BundleError(f"{root} is not an image tokenizer folder: config.json is missing")
        try:
            config = json.loads(cfg_path.read_text())
            files = (root / config["encoder"]["file"], root / config["decoder"]["file"])
            missing = [k for k in ("image_size", "codebook_size") if k not in config["vq"]]
            missing += [k for k in ("grid",) if k not in config]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BundleError(f"{cfg_path} is not a valid image tokenizer config ({exc!r})") from exc
        if missing:
            raise BundleError(f"{cfg_path} lacks {', '.join(missing)}")
        for f in files:
            if not f.is_file():
                raise BundleError(f"image tokenizer in {root} lacks {f.name}")
        tok = cls(_session(files[0]), _session(files[1]), config)
        names = ([i.name for i in tok._enc.get_inputs()], [i.name for i in tok._dec.get_inputs()])
        if names != ([tok._enc_io[0]], [tok._dec_io[0]]):
            raise BundleError(f"ONNX inputs {names} in {root} do not match config.json")
        return tok

    # ---- images -> codes -----------------------------------------------------------------------
    def prepare(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Validate and fit images to the model size: uint8 (N, S, S, 3) (or (S, S, 3) for one image)."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        out = np.empty((len(batch), self.image_size, self.image_size, 3), np.uint8)
        for i, im in enumerate(batch):
            im = np.asarray(im)
            if im.dtype != np.uint8:
                raise BadInputError(f"images must be uint8 RGB, got dtype {im.dtype}")
            if im.ndim != 3 or im.shape[2] != 3 or min(im.shape[:2]) < 1:
                raise BadInputError(f"each image must be (H, W, 3) RGB, got shape {im.shape}")
            out[i] = fit_image(im, self.image_size)
        return out[0] if single else out

    def encode(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (N, H, W, 3) or (H, W, 3), any size -> int64 codes (N, h, w) or (h, w)."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        x = self.prepare(images)
        x = x[None] if single else x
        codes = np.empty((len(x), *self.grid), np.int64)
        for i in range(0, len(x), CHUNK):
            pixels = x[i:i + CHUNK].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
            codes[i:i + CHUNK] = self._enc.run([self._enc_io[1]], {self._enc_io[0]: pixels})[0]
        return codes[0] if single else codes

    # ---- codes -> images -----------------------------------------------------------------------
    def _check_codes(self, codes, shape_desc: str) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.dtype == bool or not np.issubdtype(codes.dtype, np.integer):
            raise BadInputError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            bad = codes[(codes < 0) | (codes >= self.codebook_size)].flat[0]
            raise BadInputError(f"code {int(bad)} out of range [0, {self.codebook_size}) in {shape_desc}")
        return codes.astype(np.int64, copy=False)

    def _run_decoder(self, codes: np.ndarray) -> np.ndarray:
        out = np.empty((len(codes), self.image_size, self.image_size, 3), np.uint8)
        for i in range(0, len(codes), CHUNK):
            pixels = self._dec.run([self._dec_io[1]], {self._dec_io[0]: codes[i:i + CHUNK]})[0]
            out[i:i + CHUNK] = np.clip(np.rint((pixels + 1.0) * 127.5), 0, 255).transpose(0, 2, 3, 1)
        return out

    def decode(self, codes) -> np.ndarray:
        """int codes (N, h, w) or (h, w) -> uint8 images (N, H, W, 3) or (H, W, 3)."""
        codes = self._check_codes(codes, "decode()")
        single = codes.ndim == 2
        batch = codes[None] if single else codes
        if batch.ndim != 3 or batch.shape[1:] != self.grid:
            raise BadInputError(f"decode() expects codes of shape (N, {self.grid[0]}, {self.grid[1]}), "
                                f"got {codes.shape}")
        images = self._run_decoder(batch)
        return images[0] if single else images

    def decode_partial(self, codes_flat) -> np.ndarray:
        """Preview of an image being generated in raster order: codes (N, t) or (t,), 0 <= t <= h*w.

        Only complete rows are drawn; the rest (a partial last row included) is neutral grey.
        """
        codes = self._check_codes(codes_flat, "decode_partial()")
        single = codes.ndim == 1
        batch = codes[None] if single else codes
        h, w = self.grid
        if batch.ndim != 2 or batch.shape[1] > h * w:
            raise BadInputError(f"decode_partial() expects codes of shape (N, t) with t <= {h * w}, "
                                f"got {codes.shape}")
        rows = batch.shape[1] // w
        out = np.full((len(batch), self.image_size, self.image_size, 3), GREY, np.uint8)
        if rows and len(batch):
            grid = np.empty((len(batch), h, w), np.int64)
            grid[:, :rows] = batch[:, :rows * w].reshape(len(batch), rows, w)
            # Fill the rest by repeating the last finished row, so the decoder's view below the
            # finished rows looks like a plausible image rather than arbitrary codes.
            grid[:, rows:] = grid[:, rows - 1:rows]
            done = rows * self.patch
            out[:, :done] = self._run_decoder(grid)[:, :done]
        return out[0] if single else out
