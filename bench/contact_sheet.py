"""Contact sheets of what a bundle does with fixed inputs: text->image, inpainting, editing and
segmentation (docs/model-card.md). Every picture comes from the bundle through the engine's public
calls with the studio's default settings; the Shapes World inputs are the test split's first scenes.

    python bench/contact_sheet.py [--bundle DIR] [--out docs/samples]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PROMPTS = (
    "a large red circle at the top left and a small blue square in the center",
    "a green triangle at the bottom right",
    "a small yellow star in the center",
    "a purple square at the top and an orange circle at the bottom",
)
SCALE, PAD, LABEL = 3, 6, 14


def sheet(rows: list[tuple[str, list[np.ndarray]]]) -> Image.Image:
    """One labelled row of equally sized images per entry."""
    size = rows[0][1][0].shape[0] * SCALE
    width = PAD + max(len(images) for _, images in rows) * (size + PAD)
    out = Image.new("RGB", (width, len(rows) * (size + LABEL + PAD) + PAD), (24, 24, 24))
    draw = ImageDraw.Draw(out)
    for r, (label, images) in enumerate(rows):
        y = PAD + r * (size + LABEL + PAD)
        draw.text((PAD, y), label, fill=(230, 230, 230))
        for c, image in enumerate(images):
            tile = Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST)
            out.paste(tile, (PAD + c * (size + PAD), y + LABEL))
    return out


def run(bundle: str | None, out: Path) -> list[Path]:
    from engine.engine import Engine
    from engine.layout import PALETTE
    from training.data.shapes import ShapesWorld
    from training.eval.suite import cell_mask

    engine = Engine.load(bundle)
    world = ShapesWorld("test", seed=0, size=int(engine.image_tokenizer.image_size))
    best = lambda job: job.result().candidates  # noqa: E731
    t2i = [(p[:60], [c.image for c in best(engine.generate(p, n=4, seed=7))]) for p in PROMPTS]

    inpaint, edit, segment = [], [], []
    for i in range(3):
        s = world.sample(i)
        o = s.scene.objects[0]
        mask = cell_mask(s.boxes[0], engine.vocab.image_grid, s.image.shape[0])
        holed = np.where(mask[..., None], 255, s.image).astype(np.uint8)
        hint = f"a {o.size} {o.color} {o.kind}"
        result = best(engine.inpaint(s.image, mask, hint, seed=7))[0].image
        inpaint.append((f"inpaint: {hint}", [s.image, holed, result]))
        pair = world.edit_sample(i)
        edited = best(engine.edit(pair.before.image, pair.instruction, seed=7))[0].image
        edit.append((f"edit: {pair.instruction}"[:60], [pair.before.image, edited, pair.after.image]))
        grid = np.asarray(best(engine.segment(s.image))[0].segmentation, np.int64)
        up = np.kron(grid, np.ones((s.image.shape[0] // grid.shape[0],) * 2, np.int64))
        segment.append(("segment: image | model | truth",
                        [s.image, PALETTE[up].astype(np.uint8), PALETTE[s.mask].astype(np.uint8)]))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("t2i", t2i), ("inpaint", inpaint), ("edit", edit), ("segment", segment)):
        path = out / f"sheet-{name}.png"
        sheet(rows).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=None, help="bundle folder (default: the bundled model)")
    p.add_argument("--out", type=Path, default=Path("docs/samples"))
    args = p.parse_args(argv)
    for path in run(args.bundle, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
