"""`tessera data sheet | export | check`: look at Shapes World, write it as a folder dataset, vet a folder."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.errors import BadInputError
from engine.io import atomic_write_bytes

SHEET_SCALE, SHEET_COLS, SHEET_PAD, TEXT_LINES = 3, 6, 8, 5


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap by rendered pixel width."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def contact_sheet(images: list[np.ndarray], captions: list[str], cols: int = SHEET_COLS,
                  scale: int = SHEET_SCALE) -> Image.Image:
    """Images upscaled (nearest, to show the real pixels) with their captions underneath."""
    h, w = images[0].shape[:2]
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow built without FreeType: fixed bitmap font
        font = ImageFont.load_default()
    line_h = 14
    cell_w, cell_h = w * scale + SHEET_PAD, h * scale + SHEET_PAD + TEXT_LINES * line_h
    rows = -(-len(images) // cols)
    sheet = Image.new("RGB", (cols * cell_w + SHEET_PAD, rows * cell_h + SHEET_PAD), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (img, text) in enumerate(zip(images, captions, strict=True)):
        x = SHEET_PAD + (i % cols) * cell_w
        y = SHEET_PAD + (i // cols) * cell_h
        sheet.paste(Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST), (x, y))
        lines = _wrap(draw, text, font, w * scale)
        if len(lines) > TEXT_LINES:
            lines = lines[:TEXT_LINES - 1] + [lines[TEXT_LINES - 1] + " ..."]
        for k, line in enumerate(lines):
            draw.text((x, y + h * scale + 2 + k * line_h), line, fill=(0, 0, 0), font=font)
    return sheet


def cmd_sheet(args: argparse.Namespace) -> int:
    from training.data.shapes import ShapesWorld

    if args.n < 1:
        raise BadInputError("--n must be at least 1")
    world = ShapesWorld(args.split, seed=args.seed, size=args.size)
    samples = [world.sample(i) for i in range(args.n)]
    sheet = contact_sheet([s.image for s in samples], [s.caption for s in samples])
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out} ({args.n} {args.split} samples, seed {args.seed})", file=sys.stderr)
    return 0


def export_split(split: str, n: int, out: str | Path, seed: int = 0, size: int = 64,
                 overwrite: bool = False, progress: bool = False) -> Path:
    """Write n samples as PNGs + metadata.jsonl (HF imagefolder). The folder is built beside `out`
    and renamed into place, so a crash never leaves a half-written dataset."""
    from tqdm import tqdm

    from training.data.shapes import ShapesWorld

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BadInputError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    world = ShapesWorld(split, seed=seed, size=size)
    if n < 1 or n > len(world):
        raise BadInputError(f"--n must be 1..{len(world)} for split {split!r}, not {n}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset should not be
    try:
        rows = []
        for i in tqdm(range(n), desc=f"export {split}", disable=not progress, file=sys.stderr):
            s = world.sample(i)
            name = f"{i:06d}.png"
            Image.fromarray(s.image).save(tmp / name)
            rows.append({"file_name": name, "text": s.caption, "canonical": s.canonical, "split": split,
                         "seed": seed, "index": i, **s.scene.to_dict(), "boxes": [list(b) for b in s.boxes]})
        (tmp / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cmd_export(args: argparse.Namespace) -> int:
    out = export_split(args.split, args.n, args.out, seed=args.seed, size=args.size,
                       overwrite=args.overwrite, progress=True)
    print(f"wrote {args.n} {args.split} samples to {out}", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from training.data.folder import check_folder

    report = check_folder(args.dir, size=args.size, max_pixels=args.max_pixels)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.dir}: {report['ok']} images load, {len(report['skipped'])} skipped, "
          f"{report['uncaptioned']} without a caption")
    for item in report["skipped"]:
        print(f"  skipped {item['file']}: {item['reason']}")
    return 0


MIN_SIDE, MAX_SIDE = 8, 2048


def image_side(text: str) -> int:
    """--size: an image side in pixels, MIN_SIDE..MAX_SIDE (0 or 100000 would fail late or fill memory)."""
    try:
        side = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of pixels: {text!r}") from None
    if not MIN_SIDE <= side <= MAX_SIDE:
        raise argparse.ArgumentTypeError(f"must be {MIN_SIDE}..{MAX_SIDE} pixels, got {side}")
    return side


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    from training.data.folder import DEFAULT_MAX_PIXELS
    from training.data.shapes import SPLITS

    data = groups["data"]
    p = data.add_parser("sheet", help="write a Shapes World contact sheet (PNG) with captions")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=tuple(SPLITS), default="train")
    p.add_argument("--size", type=image_side, default=64, help="image side in pixels")
    p.set_defaults(func=cmd_sheet)

    p = data.add_parser("export", help="write a Shapes World split as PNGs + metadata.jsonl")
    p.add_argument("--split", choices=tuple(SPLITS), required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=image_side, default=64)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=cmd_export)

    p = data.add_parser("check", help="report which images of a folder dataset load and which are skipped")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--size", type=image_side, default=64)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="images with more pixels are skipped as decompression bombs")
    p.set_defaults(func=cmd_check)
