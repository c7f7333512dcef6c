"""Do identical pixels get identical codes? Image tokenizers side by side on Shapes World.

    python bench/code_noise.py [TOKENIZER ...] [--json]     (default: the shipped tokenizer)

For each tokenizer, on the same images:
    empty_codes          distinct codes in an empty picture, per background (a plain one needs 1;
                         stripes and checker one per phase of the pattern in a cell)
    background_noise     cells of test scenes with no object pixel in their 3x3 neighbourhood whose
                         code is not the usual one for that background and cell
    unchanged_flips      a one-step (0.256 px) shift of every object: share of cells whose code
                         changed although none of their pixels did
    psnr_db, usage       round trip of 1000 test images; share of the codebook they use
    twins                share of codes with a near-twin (cosine > 0.95) in the codebook
    ceiling              the judge's compositional accuracy on round trips of 200 test scenes: what a
                         transformer writing exactly the right codes would score
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np


def _cell_any(mask: np.ndarray, grid: int) -> np.ndarray:
    """(N, H, W) bool -> (N, grid*grid): any pixel set inside each cell."""
    n, h, w = mask.shape
    return mask.reshape(n, grid, h // grid, grid, w // grid).any(axis=(2, 4)).reshape(n, -1)


def measure(path: str | None, n_test: int = 1000, n_shift: int = 400) -> dict:
    from safetensors.numpy import load_file

    from engine.image_tokenizer import ImageTokenizer
    from engine.paths import default_image_tokenizer_dir
    from training.data import shapes as S
    from training.eval.judge import Judge
    from training.eval.suite import compositional_scenes, tokenizer_ceiling
    from training.tokenizer_commands import _psnr

    tok = ImageTokenizer.load(path)
    grid = tok.grid[0]
    world = S.ShapesWorld("test", size=tok.image_size)
    empty = tok.encode(np.stack([S.render(S.Scene((), bg)) for bg in S.BACKGROUNDS]))
    empty = empty.reshape(len(S.BACKGROUNDS), -1)

    scenes = [world.scene(i) for i in range(n_shift)]
    base = np.stack([S.render(sc) for sc in scenes])
    moved = []
    for sc in scenes:  # every object one jitter step along x, towards the centre of its range
        step = S.JITTER_STEP
        objs = tuple(dataclasses.replace(o, dx=round(o.dx + (step if o.dx <= 0 else -step), 4))
                     for o in sc.objects)
        moved.append(S.render(S.Scene(objs, sc.background)))
    codes, codes_moved = (tok.encode(x).reshape(n_shift, -1) for x in (base, np.stack(moved)))
    pixels_changed = _cell_any((base != np.stack(moved)).any(-1), grid)

    occupied = _cell_any(np.stack([S.class_mask(sc) > 0 for sc in scenes]), grid).reshape(n_shift, grid, grid)
    near = np.zeros_like(occupied)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            shifted = np.roll(np.roll(occupied, dr, 1), dc, 2)
            near |= shifted  # wrap-around only makes the set of "far" cells smaller
    by_key: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for i, sc in enumerate(scenes):
        for k in np.flatnonzero(~near[i].reshape(-1)):
            by_key[(sc.background, int(k))][int(codes[i, k])] += 1
    far = sum(sum(c.values()) for c in by_key.values())
    off_mode = sum(sum(c.values()) - max(c.values()) for c in by_key.values())

    images = world.batch(range(n_test))
    all_codes = tok.encode(images)
    folder = Path(path) if path else default_image_tokenizer_dir()
    book = load_file(str(folder / "image_tokenizer.safetensors"))["quantizer.codebook"].astype(np.float32)
    result = {
        "tokenizer": path or "shipped",
        "empty_codes": {bg: len(set(row.tolist())) for bg, row in zip(S.BACKGROUNDS, empty, strict=True)},
        "background_noise": round(off_mode / max(1, far), 4),
        "unchanged_flips": round(float(((codes != codes_moved) & ~pixels_changed).mean()), 4),
        "changed_cells_flipped": round(float((codes != codes_moved)[pixels_changed].mean()), 4),
        "psnr_db": round(float(_psnr(tok.decode(all_codes), images).mean()), 2),
        "usage": round(len(np.unique(all_codes)) / tok.codebook_size, 4),
    }
    unit = book / np.linalg.norm(book, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -1)
    result["twins"] = round(float((sim.max(1) > 0.95).mean()), 4)
    samples = compositional_scenes("test", 200, tok.image_size)
    real_other = np.stack([s.image for s in compositional_scenes("val", 200, tok.image_size)])
    result["ceiling"] = round(tokenizer_ceiling(Judge.load(), tok, samples, real_other)["acc"], 3)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tokenizers", nargs="*", default=[None], help="folders (default: shipped)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for path in args.tokenizers:
        r = measure(path)
        print(json.dumps(r) if args.json else "\n".join(f"{k}: {v}" for k, v in r.items()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
