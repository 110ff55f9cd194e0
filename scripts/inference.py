#!/usr/bin/env python
"""Interactive chat with a Nexus model (the usage guide's entry point): a thin wrapper over `nexus chat`.

    python scripts/inference.py --model_path nexus-release-v1 [--prompt TEXT] [--knowledge DIR] [--verbose]
    python scripts/inference.py            # the newest nexus-release-v* in the current directory

Every `nexus chat` flag is accepted (`nexus chat --help`).
"""

import sys
from pathlib import Path

try:
    from nexus.cli import main
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from nexus.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["chat", *sys.argv[1:]]))
