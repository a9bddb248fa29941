"""`fewstep`: one command for the whole chain (the console script; `python -m fewstep.cli` under torchrun).
The parser and the dispatch live in `fewstep.commands.dispatch`."""

from __future__ import annotations

import sys

from fewstep.commands.dispatch import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
