"""`tessera import janus HF_DIR --out BUNDLE [--precision fp32|fp16|int8|int4] [--check] [--json]`."""

from __future__ import annotations

import argparse
import json
import sys

from engine.errors import BadInputError


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    p = groups["import"].add_parser(
        "janus", help="a Janus-Pro checkpoint (transformers format, safetensors) -> a text-to-image bundle")
    p.add_argument("hf_dir", help="folder written by JanusForConditionalGeneration.save_pretrained, with "
                                  "tokenizer.json and tokenizer_config.json")
    p.add_argument("--out", required=True, help="bundle folder to write; the studio's File › Model lists "
                                                "those in the models folder (`tessera models --dir`)")
    p.add_argument("--precision", default="fp32",  # checked when the command runs: onnx loads only then
                   help="transformer weights: fp32 (default), fp16, int8 or int4 (int8/int4: blocks of 32)")
    p.add_argument("--name", help="the bundle's display name (default: the folder's name and the precision)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--check", action="store_true",
                   help="then run the transformers reference and the bundle on fixed prompts and compare")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.set_defaults(func=_import_janus)


def _import_janus(args: argparse.Namespace) -> int:
    from training.importers.janus import import_janus
    from training.importers.onnx_llama import PRECISIONS

    if args.precision not in PRECISIONS:
        raise BadInputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {args.precision!r}")

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    config = import_janus(args.hf_dir, args.out, args.precision, name=args.name, force=args.force, log=log)
    log(f"wrote {args.out}")
    result: dict = {"bundle": args.out, "name": config["name"], "precision": args.precision}
    if args.check:
        from training.importers.janus_check import check

        result |= check(args.hf_dir, args.out)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0
