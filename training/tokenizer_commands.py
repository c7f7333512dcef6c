"""`tessera train tokenizer` and `tessera eval tokenizer`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from engine.errors import BadInputError

SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field",
    "retina", "colorwheel", "camera", "moon", "coins", "brick", "grass", "gravel", "clock", "cell",
)


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["train"].add_parser("tokenizer", help="train the VQ image tokenizer and export it to ONNX")
    p.add_argument("--data", default="shapes", help="'shapes' (Shapes World) or a folder of images")
    p.add_argument("--out", required=True, help="output folder (checkpoints, then the finished tokenizer)")
    p.add_argument("--steps", type=int, default=3500)
    p.add_argument("--codebook-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--refine-decoder", metavar="TOKENIZER", default=None,
                   help="train only a deepened decoder of this tokenizer: codes stay the same")
    p.add_argument("--up-blocks", type=int, default=None,
                   help="decoder blocks beyond the encoder's (default 1; with --refine-decoder: "
                        "3, or the source's if it has more)")
    p.add_argument("--pixel-channels", type=int, default=None,
                   help="width of a full-resolution decoder head (default: none, or the source's)")
    p.add_argument("--pixel-blocks", type=int, default=None, help="residual blocks in that head (default 1)")
    p.add_argument("--encoder-kernel", type=int, default=1, choices=(1, 3),
                   help="1 (default): each code depends on its own 8x8 patch only; 3: on its neighbours too")
    p.set_defaults(func=cmd_train)

    p = groups["eval"].add_parser("tokenizer", help="reconstruction PSNR and codebook usage of a tokenizer")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shipped one)")
    p.add_argument("--data", default="shapes", help="'shapes', 'skimage' (bundled photos) or a folder")
    p.add_argument("--split", default="test", help="Shapes World split")
    p.add_argument("--n", type=int, default=1000, help="number of images (Shapes World or folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace) -> int:
    from training.data.shapes import ShapesWorld
    from training.tokenizer_train import TrainConfig, VQConfig, evaluate_torch, export, train

    if args.steps < 1 or args.batch_size < 1:
        raise BadInputError("--steps and --batch-size must be >= 1")
    if args.codebook_size < 2:
        raise BadInputError("--codebook-size must be >= 2")
    cfg = TrainConfig(data=args.data, out=args.out, steps=args.steps, batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed, threads=args.threads, refine_from=args.refine_decoder)
    head = {k: v for k, v in (("pixel_channels", args.pixel_channels), ("pixel_blocks", args.pixel_blocks))
            if v is not None}
    try:
        if args.refine_decoder:  # the source's architecture, with the deeper decoder
            source = json.loads((Path(args.refine_decoder) / "config.json").read_text())
            # a decoder only grows: refining an already deeper one keeps its depth by default
            deepest = max(3, source["vq"].get("up_blocks", 1))
            up_blocks = args.up_blocks if args.up_blocks is not None else deepest
            vq = VQConfig.from_dict({**source["vq"], "up_blocks": up_blocks, **head})
        else:
            up_blocks = args.up_blocks if args.up_blocks is not None else 1
            vq = VQConfig(codebook_size=args.codebook_size, up_blocks=up_blocks,
                          encoder_kernel=args.encoder_kernel, **head)
    except ValueError as e:  # VQConfig's own checks
        raise BadInputError(str(e)) from None
    model = train(cfg, vq, resume=args.resume)
    meta = json.loads((Path(args.out) / "checkpoint.json").read_text())
    training = {"data": args.data, "steps": meta["step"], "batch_size": cfg.batch_size,
                "train_seconds": round(meta["train_seconds"], 1), "threads": cfg.threads}
    if args.data == "shapes":
        val = evaluate_torch(model, ShapesWorld("val", seed=args.seed).batch(range(500)))
        training["val_psnr_db"] = round(val["psnr_db"], 3)
        training["val_codebook_usage"] = round(val["codebook_usage"], 4)
    if args.refine_decoder:  # the encoder and codebook, hence the codes, come from the source
        training["decoder_refined_from"] = {"path": args.refine_decoder, **source.get("training", {})}
    check = export(model, args.out, {"training": training})
    print(json.dumps({"out": args.out, **training, "onnx_parity": check}))
    return 0


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 batches."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def _skimage_photos() -> tuple[list[str], list[np.ndarray]]:
    import skimage.data

    names, images = [], []
    for name in SKIMAGE_PHOTOS:
        im = np.asarray(getattr(skimage.data, name)())
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        names.append(name)
        images.append(im[..., :3].astype(np.uint8))
    return names, images


def cmd_eval(args: argparse.Namespace) -> int:
    from engine.image_tokenizer import ImageTokenizer

    tok = ImageTokenizer.load(args.tokenizer)
    names: list[str] | None = None
    if args.data == "shapes":
        from training.data.shapes import ShapesWorld

        world = ShapesWorld(args.split, seed=args.seed, size=tok.image_size)
        images = world.batch(range(min(args.n, len(world))))
    elif args.data == "skimage":
        names, photos = _skimage_photos()
        images = tok.prepare(photos)
    elif Path(args.data).is_dir():
        from training.data.folder import FolderDataset

        ds = FolderDataset(args.data, tok.image_size)
        images = np.stack([ds.load(i)[0] for i in range(min(args.n, len(ds)))])
    else:
        raise BadInputError(f"--data must be 'shapes', 'skimage' or a folder; {args.data!r} is none of them")
    if len(images) == 0:
        raise BadInputError("no images to evaluate")
    t0 = time.perf_counter()
    codes = tok.encode(images)
    scores = _psnr(tok.decode(codes), images)
    result = {
        "psnr_db": round(float(scores.mean()), 3),
        "codebook_usage": round(len(np.unique(codes)) / tok.codebook_size, 4),
        "images": len(images),
        "psnr_db_min": round(float(scores.min()), 3),
        "codebook_size": tok.codebook_size,
        "data": args.data if args.data in ("shapes", "skimage") else str(args.data),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if args.data == "shapes":
        result["split"] = args.split
    if names:
        result["per_image_psnr_db"] = {n: round(float(s), 2) for n, s in zip(names, scores, strict=True)}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}", file=sys.stdout)
    return 0
