"""`tessera generate | caption | answer | inpaint | edit | segment | info`.

`generate --layout FILE` follows a segmentation layout, `generate --box LABEL:x0,y0,x1,y1` (repeatable)
places things in boxes (engine/layout.py reads and checks both).

Results go to stdout (or one JSON object with --json), progress to stderr. Output PNGs carry their
generation parameters (engine/pngmeta.py); `tessera info` reads them back.

With -n N and `-o out.png`, the candidates are written best first (re-ranked by the retriever):
out.png is the best, then out-1.png ... out-{N-1}.png. Without -o: tessera-<seed>.png.
`segment -o OUT.png` writes the coloured overlay to OUT.png, the class grid to OUT.classes.npy and
the per-pixel class map (pixel value = class id) to OUT.classes.png.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from engine.errors import BadInputError
from engine.events import Candidate, Finished, PartialImage, Progress, Retrieved
from engine.jobs import JobCancelledError
from engine.layout import PALETTE
from engine.settings import DEFAULTS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="text -> image",
        epilog="With -n N the candidates are written best first (re-ranked by the retriever): "
        "OUT is the best, then OUT-1.png ... OUT-{N-1}.png. Without -o: tessera-SEED.png.",
    )
    p.add_argument("prompt", help='what to draw ("" with --layout: follow the layout alone)')
    p.add_argument("--layout", type=Path, metavar="FILE",
                   help="follow a segmentation layout: a PNG painted in the class colours, a class-id PNG "
                   "(pixel = class, e.g. segment's OUT.classes.png) or a class grid .npy")
    p.add_argument("--box", action="append", default=[], metavar="LABEL:x0,y0,x1,y1",
                   help="place LABEL in a box on the 0-255 grid (repeatable), e.g. 'a red star:10,20,90,120'")
    p.add_argument("-n", type=int, default=1, help="candidates, generated as one batch (default 1)")
    p.add_argument("--seed", type=int, help="random seed (default: a random one, reported)")
    p.add_argument("-o", "--out", type=Path, help="output PNG; with -n N also OUT-1.png ... (best first)")
    p.add_argument("--cfg", type=float, default=DEFAULTS.cfg,
                   help=f"classifier-free guidance scale (default {DEFAULTS.cfg})")
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p)
    p.add_argument("--cdk-alpha", type=float, help="contrastive top-k alpha (with --cdk-k)")
    p.add_argument("--cdk-k", type=int, help="contrastive top-k k (with --cdk-alpha)")
    p.add_argument("--retrieve", type=int, metavar="K",
                   help=f"retrieved documents prepended to the prompt (default {DEFAULTS.retrieve}: "
                   "off; not with --layout or --box)")
    _common(p, _generate)

    p = sub.add_parser("caption", help="image -> caption")
    p.add_argument("image", type=Path)
    _common(p, _caption)

    p = sub.add_parser("answer", help="answer a question about an image")
    p.add_argument("image", type=Path)
    p.add_argument("question")
    _common(p, _answer)

    p = sub.add_parser("inpaint", help="regenerate the masked region of an image")
    p.add_argument("image", type=Path)
    p.add_argument("prompt", help='what to paint in the masked region ("" to let the model choose)')
    p.add_argument("--mask", type=Path, required=True,
                   help="mask image: light pixels (grey level > 127, e.g. white) are regenerated")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--seed", type=int)
    _common(p, _inpaint)

    p = sub.add_parser("edit", help="edit an image following an instruction")
    p.add_argument("image", type=Path)
    p.add_argument("instruction")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--seed", type=int)
    _common(p, _edit)

    p = sub.add_parser(
        "segment",
        help="image -> class map and coloured overlay",
        epilog="Writes OUT (the overlay) and beside it NAME.classes.npy (the class grid) and "
        "NAME.classes.png (per-pixel class ids as grey levels), NAME being OUT without .png: "
        "-o seg.png writes seg.png, seg.classes.npy and seg.classes.png.",
    )
    p.add_argument("image", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="overlay PNG (+ NAME.classes.npy and NAME.classes.png beside it)")
    _common(p, _segment)

    p = sub.add_parser("info", help="print the generation parameters stored in a PNG")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_info)


def _common(p: argparse.ArgumentParser, func) -> None:
    p.add_argument("--bundle", type=Path, help="model bundle folder (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=func)


# -- running a job -------------------------------------------------------------------------------
class _StderrProgress:
    """One rewritten status line on a terminal; a single summary line otherwise."""

    def __init__(self, task: str, quiet: bool) -> None:
        self.task = task
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last: Progress | None = None

    def __call__(self, event) -> None:
        if self.quiet:
            return
        if isinstance(event, Retrieved) and event.documents:
            for doc in event.documents:
                print(f"retrieved ({doc.source}, {doc.score:.2f}): {doc.text[:70]}", file=sys.stderr)
        elif isinstance(event, Progress):
            self.last = event
            if self.tty:
                pct = 100 * event.done / max(event.total, 1)
                line = f"{self.task}: {event.done}/{event.total} tokens ({pct:3.0f}%)"
                print(f"\r{line}, {event.tokens_per_s:.0f} tok/s", end="", file=sys.stderr, flush=True)
        elif isinstance(event, Finished):
            if self.tty and self.last is not None:
                print(file=sys.stderr)
            speed = f", {self.last.tokens_per_s:.0f} tok/s" if self.last is not None else ""
            print(f"{self.task}: done in {event.seconds:.2f} s{speed}", file=sys.stderr)


def _run(job, args) -> Finished:
    progress = _StderrProgress(job.task, args.quiet)
    try:
        return job.result(on_event=lambda e: None if isinstance(e, PartialImage) else progress(e))
    except KeyboardInterrupt:  # Ctrl-C ends the job (jobs.py) and the command, without a traceback
        raise JobCancelledError(f"{job.task} cancelled") from None


def _engine(args):
    from engine.engine import Engine

    return Engine.load(args.bundle)


def _load(path: Path) -> np.ndarray:
    from engine.imageio import load_image

    return load_image(path, size=None)  # as stored: the engine resizes, inpainting keeps the size


def _params(engine, finished: Finished, prompt: str, **extra) -> dict:
    return {
        "prompt": prompt,
        "seed": finished.settings.get("seed"),
        "settings": finished.settings,
        "model_id": engine.model_id,
        "task": finished.task,
        **extra,
    }


def candidate_paths(out: Path, n: int) -> list[Path]:
    """out.png, out-1.png, ... out-{n-1}.png."""
    return [out if i == 0 else out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(n)]


def check_outputs(*paths: Path) -> None:
    """Refuse, before any work, an output that cannot be written as asked: Tessera writes PNG (with its
    settings inside) to a file in an existing folder."""
    for path in paths:
        if path.is_dir():
            raise BadInputError(f"{path}: is a folder; give a file name ending in .png")
        if path.suffix.lower() != ".png":
            raise BadInputError(f"{path}: Tessera writes PNG files; give a name ending in .png")
        if not path.parent.is_dir():
            raise BadInputError(f"{path}: the folder {path.parent} does not exist")


def _pixels(candidate: Candidate) -> np.ndarray:
    assert candidate.image is not None, "an image task's candidate holds an image"
    return candidate.image


def _emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload) if args.json else text)


# -- commands -----------------------------------------------------------------------------------------
def _generate(args) -> int:
    from engine.pngmeta import save_png

    if args.n < 1:
        raise BadInputError(f"-n must be at least 1, got {args.n}")
    if (args.cdk_alpha is None) != (args.cdk_k is None):
        raise BadInputError("--cdk-alpha and --cdk-k go together")
    guided = args.layout is not None or args.box
    if args.layout is not None and args.box:
        raise BadInputError("--layout and --box are two ways to place things: use one")
    if guided and (args.cdk_alpha is not None or args.retrieve is not None):
        raise BadInputError("--cdk-alpha/--cdk-k and --retrieve work with plain generation, "
                            "not with --layout or --box")
    from engine.layout import parse_box, read_layout

    boxes = [parse_box(b) for b in args.box]  # bad boxes are refused before the model loads
    if args.out is not None:  # the default, tessera-SEED.png, goes to the current folder
        check_outputs(*candidate_paths(args.out, args.n))
    engine = _engine(args)
    sampling = dict(n=args.n, seed=args.seed, cfg=args.cfg, temperature=args.temperature, top_p=args.top_p)
    if args.layout is not None:
        layout = read_layout(args.layout, engine.vocab.seg_size)
        job = engine.from_layout(layout, args.prompt, **sampling)
    elif boxes:
        job = engine.ground(args.prompt, boxes, **sampling)
    else:
        retrieve = DEFAULTS.retrieve if args.retrieve is None else args.retrieve
        job = engine.generate(args.prompt, cdk_alpha=args.cdk_alpha, cdk_k=args.cdk_k, retrieve=retrieve,
                              **sampling)
    finished = _run(job, args)
    seed = finished.settings.get("seed")
    out = args.out or Path(f"tessera-{seed}.png")
    paths = candidate_paths(out, len(finished.candidates))
    for rank, (path, cand) in enumerate(zip(paths, finished.candidates, strict=True)):
        save_png(path, _pixels(cand), _params(engine, finished, args.prompt, rank=rank, score=cand.score))
    payload = {
        "files": [str(p) for p in paths],
        "scores": [c.score for c in finished.candidates],
        "seed": seed,
        "settings": finished.settings,
        "model_id": engine.model_id,
        "seconds": round(finished.seconds, 3),
    }
    _emit(args, payload, "\n".join(str(p) for p in paths))
    return 0


def _caption(args) -> int:
    engine = _engine(args)
    finished = _run(engine.caption(_load(args.image)), args)
    text = finished.candidates[0].text or ""
    _emit(args, {"caption": text, "settings": finished.settings, "model_id": engine.model_id}, text)
    return 0


def _answer(args) -> int:
    engine = _engine(args)
    finished = _run(engine.answer(_load(args.image), args.question), args)
    text = finished.candidates[0].text or ""
    _emit(args, {"answer": text, "settings": finished.settings, "model_id": engine.model_id}, text)
    return 0


def _load_mask(path: Path) -> np.ndarray:
    """Light pixels, grey level (ITU-R 601 luma, as Pillow's "L") over 127: white is regenerated, pure blue
    (luma 29) is not."""
    rgb = _load(path).astype(np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32) > 127.5


def _inpaint(args) -> int:
    from engine.pngmeta import save_png

    check_outputs(args.out)
    engine = _engine(args)
    job = engine.inpaint(_load(args.image), _load_mask(args.mask), args.prompt, seed=args.seed)
    finished = _run(job, args)
    save_png(args.out, _pixels(finished.candidates[0]), _params(engine, finished, args.prompt))
    _emit(args, {"files": [str(args.out)], "settings": finished.settings}, str(args.out))
    return 0


def _edit(args) -> int:
    from engine.pngmeta import save_png

    check_outputs(args.out)
    engine = _engine(args)
    finished = _run(engine.edit(_load(args.image), args.instruction, seed=args.seed), args)
    save_png(args.out, _pixels(finished.candidates[0]), _params(engine, finished, args.instruction))
    _emit(args, {"files": [str(args.out)], "settings": finished.settings}, str(args.out))
    return 0


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour: each grid cell covers its block of pixels (the last blocks absorb remainders)."""
    h, w = grid.shape
    rows = np.minimum(np.arange(size[0]) * h // size[0], h - 1)
    cols = np.minimum(np.arange(size[1]) * w // size[1], w - 1)
    return grid[rows][:, cols]


def overlay(image: np.ndarray, class_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend each non-background class's colour over the image."""
    colours = PALETTE[class_map % len(PALETTE)].astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.where((class_map > 0)[..., None], np.rint(blended), image)
    return out.astype(np.uint8)


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a str path
        np.save(f, array)


def _segment(args) -> int:
    from engine.io import atomic_write
    from engine.pngmeta import save_png

    out = Path(args.out)
    npy = out.with_name(f"{out.stem}.classes.npy")
    classes_png = out.with_name(f"{out.stem}.classes.png")
    check_outputs(out, classes_png)
    if npy.is_dir():
        raise BadInputError(f"{npy}: is a folder; segment writes the class grid there")
    engine = _engine(args)
    image = _load(args.image)
    finished = _run(engine.segment(image), args)
    grid = np.asarray(finished.candidates[0].segmentation)
    class_map = upsample(grid, image.shape[:2]).astype(np.uint8)
    params = _params(engine, finished, "", class_names=list(engine.seg_class_names))
    save_png(out, overlay(image, class_map), params)
    save_png(classes_png, class_map, params)
    atomic_write(npy, lambda tmp: _save_npy(tmp, grid.astype(np.int64)))
    names = engine.seg_class_names
    found = sorted({int(c) for c in np.unique(grid)})
    summary = ", ".join(f"{names[c] if c < len(names) else c}: {int((grid == c).sum())}" for c in found)
    payload = {
        "files": [str(out), str(npy), str(classes_png)],
        "grid": grid.tolist(),
        "class_names": list(names),
        "settings": finished.settings,
    }
    _emit(args, payload, f"{out}\n{npy}\n{classes_png}\ncells per class: {summary}")
    return 0


def _info(args) -> int:
    from engine.pngmeta import read_params

    meta = read_params(args.image)
    if args.json:
        print(json.dumps(meta))  # escapes control characters
        return 0
    lines = [f"prompt:   {meta.get('prompt', '')}"]
    for key in ("seed", "task", "model_id", "version", "source"):
        if meta.get(key) is not None:
            lines.append(f"{key + ':':9} {meta[key]}")
    settings = meta.get("settings") or {}
    if settings:
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print("\n".join(printable(line) for line in lines))
    return 0


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """A file's text for the terminal: control characters (ESC, BEL, CR...) shown escaped, never replayed."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
