"""The ``vantix-pack`` console script: the same command line as the Rust binary."""

from __future__ import annotations

import os
import signal
import sys
from typing import Sequence

from . import _native


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vantix-pack`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    # The packer runs in Rust with the GIL released; let Ctrl-C end the process at once, as it
    # does for the native binary. An interrupted pack leaves nothing at the output path.
    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.stdout.flush()
    return _native.cli_main(["vantix-pack", *(os.fsdecode(a) for a in args)])


if __name__ == "__main__":
    sys.exit(main())
