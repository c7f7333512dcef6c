"""Remake the user guide's screenshots with the bundled model (or another bundle): one offscreen studio per
state, driven through the real job pipeline by app/screenshot.py.

    python docs/screenshots/make.py [--bundle DIR] [STATE ...]

Rerun it whenever the bundled model changes: the pictures show what the model draws."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATES = ("generating", "mask", "segmentation", "caption", "layout", "regions")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("states", nargs="*", metavar="STATE", help=f"any of {', '.join(STATES)}; default all")
    parser.add_argument("--bundle", help="model bundle (default: the bundled model)")
    args = parser.parse_args()
    unknown = sorted(set(args.states) - set(STATES))
    if unknown:
        parser.error(f"unknown state(s) {', '.join(unknown)}; choose from {', '.join(STATES)}")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    failed = 0
    for state in args.states or STATES:
        cmd = [sys.executable, "-m", "engine.cli", "studio", "--screenshot", str(HERE / f"{state}.png")]
        cmd += ["--bundle", args.bundle] if args.bundle else []
        failed += subprocess.run(cmd, env=env).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
