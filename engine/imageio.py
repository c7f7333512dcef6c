"""Reading the user's image files for the engine, the CLI and the studio (inputs, reference images,
the user library, the canvas).

`load_image` accepts anything Pillow decodes, in any mode: EXIF orientation applied, transparency
composited on white (or kept, for the studio's RGBA canvas), 16-bit scaled to 8-bit, palette/grey/CMYK
converted to RGB, then optionally a centre crop to a square and a LANCZOS resize. Every failure -
missing, empty, truncated, not an image, too many pixels (a decompression bomb) - is one
`BadInputError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from engine.errors import BadInputError

MAX_PIXELS = 64_000_000  # ~8000 x 8000; larger files are refused before decoding
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _upright_8bit(img: Image.Image) -> Image.Image:
    """EXIF orientation applied, 16-bit and float grey scaled to 8-bit; any other mode as it is."""
    with contextlib.suppress(Exception):  # a malformed EXIF block keeps the image, unrotated
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        elif img.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    return img


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def to_rgb(img: Image.Image) -> Image.Image:
    """Upright 8-bit RGB, transparency composited on white (what the model sees)."""
    img = _upright_8bit(img)
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")


def to_rgba(img: Image.Image) -> Image.Image:
    """Upright 8-bit RGBA, transparency kept (what the studio's canvas holds)."""
    return _upright_8bit(img).convert("RGBA")


def square_resize(img: Image.Image, size: int) -> np.ndarray:
    """Centre crop to a square, LANCZOS resize to size x size -> uint8 (size, size, channels)."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    box = (left, top, left + s, top + s)
    out = img.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8)


@contextlib.contextmanager
def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Iterator[Image.Image]:
    """Image.open for the user's files: inside the block every failure - missing, a folder, empty, not an
    image, too many pixels (a decompression bomb), undecodable data - is one BadInputError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ValueError(f"too many pixels: {w}x{h} > {max_pixels} (decompression bomb?)")
                yield img
    except BadInputError:
        raise
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInputError(f"{path}: is a folder, not an image") from None
    except PermissionError:
        raise BadInputError(f"{path}: permission denied") from None
    except Image.UnidentifiedImageError:
        raise BadInputError(f"{path}: not an image file Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInputError(f"{path}: refused, too many pixels ({exc})") from None
    except Exception as exc:  # Pillow plugins raise OSError, SyntaxError, struct.error... on bad data
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(f"{path}: cannot decode image: {reason}") from None


def load_image(path: str | Path, size: int | None = 64, max_pixels: int = MAX_PIXELS, *,
               alpha: bool = False) -> np.ndarray:
    """One image file as uint8 (H, W, 3) RGB, or (H, W, 4) RGBA with `alpha`: (size, size, C)
    centre-cropped, or as stored (upright) if size is None. The CLI, the engine and the studio open
    the user's files here, so a file has one size and orientation everywhere."""
    with open_image(path, max_pixels) as img:
        img.load()
        pixels = to_rgba(img) if alpha else to_rgb(img)
    return np.asarray(pixels, dtype=np.uint8) if size is None else square_resize(pixels, size)
