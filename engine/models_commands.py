"""`tessera models [--json | --dir]`: the model bundles Tessera finds (engine.installed: the bundled ones
and those in the models folder) and the folder yours go in; --dir prints only that folder:

    tessera import janus Janus-Pro-1B --out "$(tessera models --dir)/janus-pro-1b-int8" --precision int8
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the installed model bundles and the folder they go in")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--json", action="store_true", help="print one JSON object")
    how.add_argument("--dir", action="store_true", help="print only the folder model bundles go in")
    p.set_defaults(func=_models)


def _models(args) -> int:
    from engine.gen_commands import printable
    from engine.installed import installed_bundles
    from engine.paths import models_dir
    from engine.task_table import TASKS

    folder = models_dir()
    if args.dir:
        print(folder)
        return 0
    bundles = installed_bundles()
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
