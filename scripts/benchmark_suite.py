"""Usage guide section 3: ``python scripts/benchmark_suite.py --student PATH --teacher PATH --limit 50``.

A thin wrapper over ``nexus benchmark`` (same flags).
"""

import sys

from nexus.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["benchmark", *sys.argv[1:]]))
