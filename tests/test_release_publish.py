"""Publishing a release (phase 5's last step) when the process is SIGKILLed at any point: the
release path always holds a complete release (where the file system can swap directories), the
previous release is archived and never lost, and the next phase 5 finishes what was left.

Uses the kill-at-every-operation harness of ``test_shared_files``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_shared_files import NEW_TREE, OLD_TREE, _kill_at_every_point, _plant, _tree

from nexus.release.run import publish, settle

PUBLISHER = """
from pathlib import Path
import nexus.release.run as run
if {fallback}:
    run._exchange = lambda a, b: False  # a file system without renameat2(RENAME_EXCHANGE)
arm(run)
run.publish(Path({partial!r}), Path({release!r}))
print("DONE")
"""


def _trees(parent: Path) -> dict[str, dict[str, str]]:
    return {p.name: _tree(p) for p in sorted(parent.iterdir()) if p.is_dir()}


@pytest.mark.parametrize("fallback", [False, True], ids=["rename-exchange", "rename-aside"])
def test_publish_survives_sigkill_at_every_point(tmp_path, fallback):
    parent = tmp_path / "project"
    release = parent / "nexus-release-v1"
    partial = parent / "nexus-release-v1.partial"
    script = PUBLISHER.format(fallback=fallback, partial=str(partial), release=str(release))
    gaps = []

    def reset() -> None:
        shutil.rmtree(parent, ignore_errors=True)
        release.mkdir(parents=True)
        _plant(release, OLD_TREE)
        partial.mkdir()
        _plant(partial, NEW_TREE)

    def check(point: int) -> tuple[str, list[str]]:
        problems = []
        if _tree(release) not in (OLD_TREE, NEW_TREE):
            gaps.append(point)
            if not fallback:  # with the atomic swap the release path is never without a release
                problems.append(f"killed at operation {point}: no complete release: {_trees(parent)}")
        found = list(_trees(parent).values())  # nothing is lost: both releases are somewhere, whole
        if OLD_TREE not in found or NEW_TREE not in found:
            problems.append(f"killed at operation {point}: a release was lost: {_trees(parent)}")
        settle(release)  # what the next phase 5 does first: a complete release, the rest archived
        names = sorted(p.name for p in parent.iterdir())
        state = _tree(release)
        if state not in (OLD_TREE, NEW_TREE) or any(n.startswith(".") for n in names):
            problems.append(f"killed at operation {point}: settle leaves {names}")
        if OLD_TREE not in _trees(parent).values():
            problems.append(f"killed at operation {point}: settle lost the old release: {names}")
        return ("old" if state == OLD_TREE else "new"), problems

    _kill_at_every_point(script, check, reset, min_points=4)
    assert bool(gaps) == fallback, gaps  # only without the atomic swap is there a moment without one
    trees = _trees(parent)
    assert trees.pop("nexus-release-v1") == NEW_TREE
    ((archived, tree),) = trees.items()
    assert archived.startswith("nexus-release-v1.archive-") and tree == OLD_TREE


def test_publish_without_a_previous_release_renames_the_build(tmp_path):
    partial, release = tmp_path / "r.partial", tmp_path / "r"
    partial.mkdir()
    _plant(partial, NEW_TREE)
    assert publish(partial, release) is None
    assert _tree(release) == NEW_TREE and sorted(p.name for p in tmp_path.iterdir()) == ["r"]
