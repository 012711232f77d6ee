"""Reruns, late files and interrupted publishes: what a second run finds, it finishes or merges, never loses.

* A publish killed between its renames (a real process, SIGKILLed at each step) is undone or completed
  by the next run, from the journal it left.
* Ingest runs over different files of one day keep each other's rows; a rerun of a file replaces its
  rows (idempotent); a late file adds its own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ipinsights.storage.filesystems import ArrowStore
from ipinsights.storage.publish import recover_publishes

DAYS_OLD = ("2024-01-01", "2024-01-02")
DAYS_NEW = ("2024-01-02", "2024-01-03")  # renames: #0 old 01-02 to trash, #1 new 01-02 in, #2 new 01-03 in

# A publish in its own process, killed (SIGKILL: no cleanup runs) when it reaches operation KILL_AT:
# the renames 0..2, then 3 = the first delete of a replaced folder (every rename done).
_KILLED_PUBLISH = """
import os, signal, sys
from ipinsights.storage.filesystems import ArrowStore
from ipinsights.storage.publish import publish_partitions

kill_at, staged, table, trash, journal = int(sys.argv[1]), *sys.argv[2:]

class DyingStore(ArrowStore):
    ops = 0

    def _step(self):
        if DyingStore.ops == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        DyingStore.ops += 1

    def rename(self, src, dst):
        self._step()
        super().rename(src, dst)

    def delete(self, uri):
        if "/_replaced/" in uri:
            self._step()
        return super().delete(uri)

publish_partitions(DyingStore(), staged, table, ["2024-01-02", "2024-01-03"], trash, journal)
"""


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _setup(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    table, staging = tmp_path / "events", tmp_path / "events_staging"
    staged, trash = staging / "run_id=r1" / "events", staging / "run_id=r1" / "_replaced"
    for folder, days, tag in ((table, DAYS_OLD, "old"), (staged, DAYS_NEW, "new")):
        for d in days:
            (folder / f"dt={d}").mkdir(parents=True)
            for part in "ab":
                (folder / f"dt={d}" / f"{tag}-{part}.parquet").write_bytes(f"{tag} {d} {part}".encode())
    return table, staged, trash, staging


@pytest.mark.parametrize("kill_at", [0, 1, 2, 3])
def test_a_publish_killed_at_any_step_is_finished_or_undone_by_the_next_run(tmp_path, kill_at):
    table, staged, trash, staging = _setup(tmp_path)
    before, new = _tree(table), _tree(staged)
    journal = staging / "_publish-r1.json"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_PUBLISH), str(kill_at), str(staged), str(table), str(trash),
         str(journal)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr  # it died in the middle, as a kill leaves it
    assert journal.exists()
    outcome = recover_publishes(ArrowStore(), str(staging))
    assert not journal.exists()
    if kill_at < 3:  # some folder was still to move: undone, the old days back, the staged ones intact
        assert outcome == {str(journal): "rolled back"}
        assert _tree(table) == before
        assert _tree(staged) == new
    else:  # every folder had moved: completed, the replaced day deleted
        assert outcome == {str(journal): "completed"}
        assert _tree(table) == {**{k: v for k, v in before.items() if k.startswith("dt=2024-01-01")}, **new}
        assert not any(trash.rglob("*.parquet"))
    assert recover_publishes(ArrowStore(), str(staging)) == {}  # nothing left to recover


def test_an_interrupted_half_copied_rename_is_merged_back(tmp_path):
    """An object store's rename stopped half way (some files moved, the rest not): the undo puts each
    file back, and a file both sides hold (copied, not yet deleted) is kept once."""
    from ipinsights.storage.publish import recover_publish
    from ipinsights.storage.files import write_json

    table, staged, trash, staging = _setup(tmp_path)
    before = _tree(table)
    old = trash / "0"
    # rename #0 (old 2024-01-02 -> trash) was copying: old-a moved, old-b copied but not yet deleted
    old.mkdir(parents=True)
    day = table / "dt=2024-01-02"
    (day / "old-a.parquet").rename(old / "old-a.parquet")
    (old / "old-b.parquet").write_bytes((day / "old-b.parquet").read_bytes())
    renames = [[str(day), str(old)], [str(staged / "dt=2024-01-02"), str(day)]]
    journal = staging / "_publish-r1.json"
    write_json(str(journal), {"renames": renames, "replaced": [str(old)], "next": 0})
    assert recover_publish(ArrowStore(), str(journal)) == "rolled back"
    assert _tree(table) == before and not old.exists()
