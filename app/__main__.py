"""Entry point of the frozen build (build.spec) and of `python -m app`: the `tessera` CLI,
`studio` when no command is given."""

import multiprocessing
import sys

from engine import cli

if __name__ == "__main__":
    # A frozen executable re-runs itself for worker processes; freeze_support makes those children
    # run their task instead of opening a second studio. A no-op from source.
    multiprocessing.freeze_support()
    sys.exit(cli.main(sys.argv[1:] or ["studio"]))
