#!/usr/bin/env python
"""The usage guide's `python scripts/niwt_profiler.py`: same flags as `nexus profile`."""

import sys

from nexus.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["profile", *sys.argv[1:]]))
