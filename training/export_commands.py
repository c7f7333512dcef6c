"""`tessera export CHECKPOINT_DIR --out BUNDLE ...` and `tessera bench decode --json`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import BadInputError


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["top"].add_parser("export", help="export a checkpoint to a model bundle (ONNX + manifest)")
    p.add_argument("checkpoint", help="checkpoint folder: config.json + model.safetensors")
    p.add_argument("--out", required=True, help="bundle folder to write; the studio's File › Model lists "
                                                "those in the models folder (`tessera models --dir`)")
    p.add_argument("--tokenizer", help="image tokenizer folder (default: CHECKPOINT/image_tokenizer, else "
                                       "the one the run trained with, else the shipped shapes-vq); one "
                                       "other than the run's (by hash) is refused")
    p.add_argument("--text-tokenizer", help="tokenizer.json (default: CHECKPOINT/tokenizer.json, else the "
                                            "one the run trained with, else the shipped shapes-text); one "
                                            "other than the run's (by hash) is refused")
    p.add_argument("--retriever", help="retriever folder (default: CHECKPOINT/retriever, else the one the "
                                       "run trained with, if present); it must be the one the run and "
                                       "the memory bank were made with (by hash)")
    p.add_argument("--memory", help="memory bank folder (default: CHECKPOINT/memory if present)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--name", help="the bundle's display name (config.json name)")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="leave out the int8 twin graphs")
    p.add_argument("--runtime-only", action="store_true",
                   help="leave out what only torch uses (safetensors weights, checkpoints, logs): to ship")
    p.add_argument("--json", action="store_true", help="print the bundle's config.json on stdout")
    p.set_defaults(func=_export)

    b = groups["bench"].add_parser("decode", help="decode speed: HF generate vs our torch and ONNX paths")
    b.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    b.add_argument("--repeats", type=int, default=3, help="timings per path; the best is kept (default 3)")
    b.add_argument("--bundle", help="model bundle for the request-to-image timing (default: the shipped one)")
    b.add_argument("--preset", default="shapes", help="transformer dims of the side-by-side (default shapes)")
    b.add_argument("--threads", type=int, help="threads for torch and ONNX Runtime (default: physical cores)")
    b.add_argument("--out", help="also write the JSON result to this file")
    b.set_defaults(func=_bench)


def _default(value: str | None, checkpoint: Path, name: str, *fallbacks: str | Path | None) -> Path | None:
    """The given path, else CHECKPOINT/name, else the first fallback that exists."""
    if value:
        return Path(value)
    if checkpoint.is_dir() and (checkpoint / name).exists():
        return checkpoint / name
    return next((Path(f) for f in fallbacks if f is not None and Path(f).exists()), None)


def check_recorded(checkpoint: Path, recorded: dict, image_tokenizer: Path, text_tokenizer: Path,
                   retriever: Path | None, memory: Path | None) -> None:
    """The parts must be those the run recorded (training/components.py), and the memory bank's
    retriever and image tokenizer those of the bundle: a one-line error naming both otherwise."""
    from engine.memory import PARAMS_FILE
    from training.components import check

    run = f"the model {checkpoint}"
    check("image_tokenizer", image_tokenizer, recorded, run)
    check("text_tokenizer", text_tokenizer, recorded, run)
    if retriever is not None:
        check("retriever", retriever, recorded, run)
    params = memory / PARAMS_FILE if memory is not None else None
    if params is not None and params.is_file():
        built_from = json.loads(params.read_text()).get("built_from", {})
        if built_from.get("retriever") and retriever is None:
            need = built_from["retriever"]["path"]
            raise BadInputError(f"memory bank {memory} needs its retriever ({need}): pass --retriever")
        for kind, path in (("retriever", retriever), ("image_tokenizer", image_tokenizer)):
            if path is not None:
                check(kind, path, built_from, f"memory bank {memory}")


def check_components(vocab, image_tokenizer: Path, text_tokenizer: Path) -> None:
    """The tokenizers must be the ones the model was trained with (sizes and grid agree)."""
    from engine.text_tokenizer import TextTokenizer

    size = TextTokenizer.load(text_tokenizer).size
    if size != vocab.text_size:
        raise BadInputError(f"{text_tokenizer} has {size} text ids, the model's vocabulary {vocab.text_size}")
    cfg_path = image_tokenizer / "config.json"
    if not cfg_path.is_file():
        raise BadInputError(f"{image_tokenizer} is not an image tokenizer folder (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    codebook, grid = cfg.get("vq", {}).get("codebook_size"), tuple(cfg.get("grid", ()))
    if codebook != vocab.image_size or grid != tuple(vocab.image_grid):
        raise BadInputError(f"{image_tokenizer} has {codebook} codes on a {grid} grid; the model expects "
                            f"{vocab.image_size} codes on a {tuple(vocab.image_grid)} grid")


def _export(args: argparse.Namespace) -> int:
    from engine.paths import default_image_tokenizer_dir, default_text_tokenizer_path
    from training.export import load_checkpoint, write_bundle

    ckpt = Path(args.checkpoint)
    model, vocab, extra = load_checkpoint(ckpt)
    recorded = extra.get("trained_with", {})  # the parts the run trained with, by hash

    def trained_with(kind: str) -> str | None:
        return recorded.get(kind, {}).get("path")

    image_tok = _default(args.tokenizer, ckpt, "image_tokenizer", trained_with("image_tokenizer"),
                         default_image_tokenizer_dir())
    text_tok = _default(args.text_tokenizer, ckpt, "tokenizer.json", trained_with("text_tokenizer"),
                        default_text_tokenizer_path())
    retriever = _default(args.retriever, ckpt, "retriever", trained_with("retriever"),
                         extra.get("train", {}).get("data", {}).get("retriever"))
    memory = _default(args.memory, ckpt, "memory")
    if image_tok is None or text_tok is None:
        raise BadInputError("no tokenizers found: pass --tokenizer and --text-tokenizer")
    check_components(vocab, image_tok, text_tok)
    check_recorded(ckpt, recorded, image_tok, text_tok, retriever, memory)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    config = write_bundle(model, vocab, args.out, image_tokenizer=image_tok, text_tokenizer=text_tok,
                          retriever=retriever, memory=memory, extra=extra, force=args.force,
                          int8=args.int8, runtime_only=args.runtime_only, name=args.name, log=log)
    log(f"wrote {args.out}")
    if args.json:
        print(json.dumps(config))
    return 0


def bench_module(name: str):
    """bench/NAME.py: bench/ sits beside the packages in a source checkout (it is not installed), so
    it is loaded by path."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    if not path.is_file():
        raise BadInputError(f"the benchmarks are not part of this installation ({path} is missing)")
    spec = importlib.util.spec_from_file_location(f"tessera_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(args: argparse.Namespace) -> int:
    result = bench_module("decode").run(repeats=args.repeats, threads=args.threads, bundle=args.bundle,
                                 preset=args.preset, log=lambda msg: print(msg, file=sys.stderr))
    text = json.dumps(result, indent=None if args.json else 2)
    if args.out:
        from engine.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2))
    print(text)
    return 0
