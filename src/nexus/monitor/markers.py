"""The results directory's phase bookkeeping on disk: completion markers and archives.

Each phase's output directory ``results/<phase>/`` ends with ``COMPLETE.json`` (written last by
the pipeline: phase number and name, config hash, seconds, the phase's summary and its one-line
summary); the release reads them for its manifest. Outputs are never deleted: an output that
must go is moved aside with :func:`archive`.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

MARKER = "COMPLETE.json"


def archive(path: Path, *, like: Path | None = None) -> Path | None:
    """Move ``path`` aside as ``<path>.archive-<time>`` (never delete a user's results);
    ``like`` names the archive after another path (``<like>.archive-<time>``)."""
    if not path.exists():
        return None
    name = (like or path).name
    target = path.with_name(f"{name}.archive-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target = target.with_name(f"{target.name}-{n}")
        n += 1
    shutil.move(str(path), str(target))
    return target


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The completion marker of a phase's output directory, or None (absent or unreadable)."""
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
