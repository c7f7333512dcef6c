"""CLI start-up time with and without the train extra (torch, onnx, ...) installed, side by side.

"Without" hides those packages from this interpreter (sys.modules[name] = None, exactly what an import of
a package that is not installed meets), so both columns run the same Python and the same files:

    python bench/cli_startup.py [--repeat 5] [--image PNG] [--json]

Rows: `tessera --help` (argument parsing: every command registers), `tessera caption IMAGE` (the
bundled model loads and captions one image) and `tessera model info shapes` (needs torch: without it,
the one-line error that names the extra). Median wall time of fresh processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_EXTRA = ("torch", "onnx", "onnxscript", "skimage", "transformers")
RUN = "import sys\n{hide}from engine.cli import main\nsys.exit(main(sys.argv[1:]))"


def timed(argv: list[str], hide: bool, repeat: int) -> tuple[float, int, str]:
    hidden = "".join(f"sys.modules[{name!r}] = None\n" for name in TRAIN_EXTRA) if hide else ""
    times, proc = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", RUN.format(hide=hidden), *argv], cwd=ROOT,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
    assert proc is not None
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return statistics.median(times), proc.returncode, last


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--image", type=Path, help="image to caption (default: a 64 px test picture)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = args.image
        if image is None:
            from PIL import Image

            image = Path(tmp) / "in.png"
            Image.new("RGB", (64, 64), (200, 40, 40)).save(image)
        commands = {"--help": ["--help"], "caption": ["caption", str(image), "-q"],
                    "model info": ["model", "info", "shapes"]}
        rows = []
        for name, argv in commands.items():
            with_, rc_with, _ = timed(argv, False, args.repeat)
            without, rc_without, message = timed(argv, True, args.repeat)
            rows.append({"command": name, "with_torch_s": round(with_, 3),
                         "without_torch_s": round(without, 3), "exit_with": rc_with,
                         "exit_without": rc_without,
                         "message_without": message if rc_without else ""})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'command':<12} {'with torch':>11} {'without':>9}  exit  (median of {args.repeat})")
    for r in rows:
        print(f"{r['command']:<12} {r['with_torch_s']:>10.2f}s {r['without_torch_s']:>8.2f}s  "
              f"{r['exit_with']}/{r['exit_without']}  {r['message_without']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
