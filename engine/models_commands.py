"""`tessera models [--json]`: the model bundles Tessera finds (engine.installed: the bundled ones and
those in the models folder) and the folder yours go in."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the installed model bundles and the folder they go in")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_models)


def _models(args) -> int:
    from engine.gen_commands import printable
    from engine.installed import installed_bundles
    from engine.paths import models_dir
    from engine.task_table import TASKS

    bundles, folder = installed_bundles(), models_dir()
    if args.json:
        print(json.dumps({"models_dir": str(folder), "bundles": [
            {"name": b.name, "path": str(b.path), "source": b.source, "image_size": b.image_size,
             "tasks": [str(t) for t in TASKS if t in b.tasks], "error": b.error} for b in bundles]}))
        return 0
    for b in bundles:
        what = (f"{b.image_size}×{b.image_size}, {', '.join(str(t) for t in TASKS if t in b.tasks)}"
                if b.available else f"unavailable: {b.error}")
        print(printable(f"{b.name}  ({b.source}) {what}"))
        print(printable(f"    {b.path}"))
    print(f"Install model bundles in {folder} (tessera import ... --out {folder}/NAME).")
    return 0
