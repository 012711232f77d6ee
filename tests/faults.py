"""Fault injection for the kill-and-rerun suite (``tests/test_faults.py``).

``python tests/faults.py KILL_AT STEPS_FILE MODULE [ARG ...]`` runs ``MODULE.main([ARG ...])`` (a job's entry
point) in this process after wrapping its commit steps: every rename of a store, every atomic file
replace, every delete of replaced data. Each step is appended to STEPS_FILE before it runs; the
KILL_AT-th step (1-based; 0 = never) is replaced by SIGKILL, so no ``finally`` and no cleanup runs, as
when an executor host dies or the scheduler kills the driver. Only this test harness patches anything:
the library has no fault hooks.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def install(kill_at: int, steps_file: str) -> None:
    """Wrap the commit steps of this process (the driver; executors commit nothing on their own)."""
    from ipinsights.storage import filesystems

    count = 0

    def step(name: str, detail: object) -> None:
        nonlocal count
        count += 1
        with open(steps_file, "a") as fh:
            fh.write(f"{count}\t{name}\t{detail}\n")
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
    install(int(kill_at), steps_file)
    sys.exit(importlib.import_module(module).main(argv))


if __name__ == "__main__":
    main()
