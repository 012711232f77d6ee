"""Fault injection for the kill-and-rerun suite (``tests/test_faults.py``).

``python tests/faults.py KILL_AT STEPS_FILE MODULE [ARG ...]`` runs ``MODULE.main([ARG ...])`` (a job's entry
point) in this process after wrapping its commit steps: every rename of a store, every atomic file
replace, every delete of replaced data. Each step is appended to STEPS_FILE before it runs; the
KILL_AT-th step (1-based; 0 = never) is replaced by SIGKILL, so no ``finally`` and no cleanup runs, as
when an executor host dies or the scheduler kills the driver. Only this test harness patches anything:
the library has no fault hooks.

With ``FAULTS_SNAPSHOT=ROOT:DEST`` set, the run also copies the folder ROOT (everything the job reads
and writes) to ``DEST/<k>`` right before its k-th step. A SIGKILL at step k leaves on disk exactly
that copy: the step and everything after it never run, no cleanup runs, and the driver writes nothing
in between (its Spark tasks have finished by the time it commits). So one run records the state a kill
at every step leaves; the suite restores each into ROOT (absolute paths in journals and checkpoints stay
valid) and reruns the job on it, and kills one run for real to hold the two to the same outcome.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any


def install(kill_at: int, steps_file: str, snapshot: tuple[str, str] | None = None) -> None:
    """Wrap the commit steps of this process (the driver; executors commit nothing on their own)."""
    from ipinsights.storage import filesystems

    count = 0

    def step(name: str, detail: object) -> None:
        nonlocal count
        count += 1
        with open(steps_file, "a") as fh:
            fh.write(f"{count}\t{name}\t{detail}\n")
        if snapshot is not None:
            # symlinks=True: a link is state too; copied as such, never followed out of ROOT.
            shutil.copytree(snapshot[0], os.path.join(snapshot[1], str(count)), symlinks=True)
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner: Any, attr: str, name: str, when: Callable[..., bool] = lambda *a: True) -> None:
        real = getattr(owner, attr)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if when(*args):
                step(name, args[-1] if args else "")
            return real(*args, **kwargs)

        setattr(owner, attr, wrapped)

    for store in (filesystems.ArrowStore, filesystems.HadoopStore):
        wrap(store, "rename", f"{store.__name__}.rename")
        # Deleting what a publish replaced is its last step: it must never happen before the new data is in.
        wrap(store, "delete", f"{store.__name__}.delete", lambda self, uri: "_replaced" in str(uri))
    wrap(os, "replace", "os.replace")  # atomic_write, model and checkpoint files
    wrap(os, "rename", "os.rename")


def main() -> None:
    kill_at, steps_file, module, *argv = sys.argv[1:]
    snapshot = os.environ.get("FAULTS_SNAPSHOT")
    install(int(kill_at), steps_file, tuple(snapshot.split(":", 1)) if snapshot else None)  # type: ignore[arg-type]
    sys.exit(importlib.import_module(module).main(argv))


if __name__ == "__main__":
    main()
