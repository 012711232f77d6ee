"""Process CPU and memory accounting shared by the bench scripts (Linux ``/proc``)."""

from __future__ import annotations

import os
from pathlib import Path


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, reaped children included) of process ``pid`` and its descendants (Linux)."""
    stats: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                s = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            f = s[s.rindex(")") + 2 :].split()
            stats[int(d)] = (int(f[1]), sum(int(x) for x in f[11:15]))
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    ticks, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            ticks += stats[p][1]
            todo += children.get(p, [])
    return ticks / os.sysconf("SC_CLK_TCK")


def status_mb(key: str = "VmHWM") -> float:
    """A memory figure of this process from ``/proc/self/status`` in MiB: ``VmHWM`` (peak RSS), ``VmRSS``..."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status (not Linux?)")


def child_env() -> dict[str, str]:
    """The environment of a bench's child process: this folder on ``PYTHONPATH``, so it imports this module too."""
    path = [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
