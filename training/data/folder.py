"""Folder datasets: the images users already have, with their captions.

Layout (recursive): any folder may hold a `metadata.jsonl` (Hugging Face imagefolder: one JSON object
per line with `file_name`, relative to that folder, and `text`; `caption` is accepted too) and/or
images with sidecar captions (`cat.png` + `cat.txt`). metadata.jsonl wins over a sidecar.

Every Pillow-readable image, any size or mode, becomes RGB uint8 at `size` x `size`: EXIF orientation
applied, transparency composited on white, 16-bit scaled to 8-bit, CMYK/palette/grey converted,
then centre crop + LANCZOS resize. Bad files (empty, truncated, not an image, more than `max_pixels`
pixels, unreadable) are skipped with one line each in `report["skipped"]`; nothing raises.

Images without any caption are kept with caption "" (they still train the image tokenizer and
unconditional image modelling) and counted in `report["uncaptioned"]`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import BadInputError
from engine.imageio import IMAGE_EXTENSIONS, square_resize, to_rgb
from engine.imageio import MAX_PIXELS as DEFAULT_MAX_PIXELS  # the engine's decoding path, shared

CAPTION_KEYS = ("text", "caption")


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open and fully decode one image, raising ValueError with a readable reason when it is bad."""
    if path.stat().st_size == 0:
        raise ValueError("empty file")
    with warnings.catch_warnings():
        # Pillow only warns between its own limit and twice that; we want a hard stop at ours.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(path)
        w, h = img.size
        if w * h > max_pixels:
            img.close()
            raise ValueError(f"decompression bomb: {w}x{h} = {w * h} pixels > limit {max_pixels}")
        if w == 0 or h == 0:
            raise ValueError(f"image has no pixels ({w}x{h})")
        img.load()
    return img


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"decompression bomb: {exc}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


def load_image(path: str | Path, size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One file as uint8 (size, size, 3); BadInputError with the reason if it cannot be used."""
    try:
        with _open_checked(Path(path), max_pixels) as img:
            return square_resize(to_rgb(img), size)
    except Exception as exc:  # Pillow plugins raise many types (OSError, SyntaxError, struct.error...)
        raise BadInputError(f"{path}: {_reason(exc)}") from exc


class FolderDataset:
    """`items`: (path, caption) of every image that decodes; `report`: {"ok", "skipped", "uncaptioned"}.
    Scanning decodes every image once, so later `load` calls do not meet broken files."""

    def __init__(self, root: str | Path, size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise BadInputError(f"{self.root} is not a folder")
        self.size, self.max_pixels = int(size), int(max_pixels)
        self.items: list[tuple[Path, str]] = []
        skipped: list[dict[str, str]] = []
        files = self._walk(skipped)
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
        captions = self._captions(files, images, skipped)
        extra = sorted(set(captions) - set(images))  # named by metadata.jsonl, e.g. an odd extension
        for path in extra:
            if path.is_file():
                images.append(path)
            else:
                skipped.append({"file": self._rel(path), "reason": "listed in metadata.jsonl but missing"})
        for path in images:
            try:
                _open_checked(path, self.max_pixels).close()
            except Exception as exc:  # see load_image: any failure means "skip this file"
                skipped.append({"file": self._rel(path), "reason": _reason(exc)})
                continue
            self.items.append((path, captions.get(path, "")))
        self.report = {"ok": len(self.items), "skipped": skipped,
                       "uncaptioned": sum(1 for _, c in self.items if not c)}

    def _walk(self, skipped: list[dict[str, str]]) -> list[Path]:
        def unreadable(exc: OSError) -> None:
            skipped.append({"file": self._rel(Path(exc.filename)), "reason": f"folder {_reason(exc)}"})

        out = []
        for folder, dirs, names in os.walk(self.root, onerror=unreadable):
            dirs.sort()
            out += [Path(folder) / n for n in sorted(names)]
        return out

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _captions(self, files: list[Path], images: list[Path],
                  skipped: list[dict[str, str]]) -> dict[Path, str]:
        """Captions from sidecar .txt files, then metadata.jsonl entries (which win)."""
        out: dict[Path, str] = {}
        by_stem = {p.with_suffix(""): p for p in files if p.suffix == ".txt"}
        for path in images:
            txt = by_stem.get(path.with_suffix(""))
            if txt is None:
                continue
            try:
                out[path] = txt.read_text(encoding="utf-8", errors="replace").strip()
            except OSError as exc:
                skipped.append({"file": self._rel(txt), "reason": f"caption unreadable: {_reason(exc)}"})
        for path in files:
            if path.name == "metadata.jsonl":
                self._read_metadata(path, out, skipped)
        return out

    def _read_metadata(self, path: Path, meta: dict[Path, str], skipped: list[dict[str, str]]) -> None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            skipped.append({"file": self._rel(path), "reason": f"metadata unreadable: {_reason(exc)}"})
            return
        root = self.root.resolve()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{self._rel(path)}:{n}"
            try:
                row = json.loads(line)
                name = str(row["file_name"])
                text = next((row[k] for k in CAPTION_KEYS if k in row), "")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                skipped.append({"file": where, "reason": f"bad metadata line: {type(exc).__name__}: {exc}"})
                continue
            target = Path(os.path.normpath(path.parent / name))
            if not target.resolve().is_relative_to(root):
                skipped.append({"file": where, "reason": f"file_name {name!r} points outside the dataset"})
                continue
            meta[target] = str(text)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, str]:
        """(uint8 (size, size, 3), caption). BadInputError if the file broke since the scan."""
        path, text = self.items[i]
        return load_image(path, self.size, self.max_pixels), text

    def batch(self, indices) -> np.ndarray:
        """Images only: (N, size, size, 3) uint8."""
        return np.stack([self.load(int(i))[0] for i in indices]) if len(indices) else \
            np.zeros((0, self.size, self.size, 3), np.uint8)


def check_folder(root: str | Path, size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """{"ok": N, "skipped": [{"file", "reason"}...], "uncaptioned": K} for a folder dataset."""
    return FolderDataset(root, size=size, max_pixels=max_pixels).report
