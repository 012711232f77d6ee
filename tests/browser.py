"""Headless Chromium for the report-rendering tests: found, or a skip or a failure by the environment.

``scripts/setup.sh`` installs Chromium where it can (as root with apt-get: CI). So a missing browser
skips the rendering tests on a developer's machine (``CI`` unset) and fails them in CI (``CI`` set),
where it means the setup broke, instead of letting the check silently stop running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["chromium", "dump_dom", "screenshot"]


def chromium() -> str:
    """The Chromium executable; skips the test without one locally, fails it without one in CI."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is not None:
        return exe
    reason = "chromium not installed (apt-get install chromium): cannot check that the report renders"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI is set, and scripts/setup.sh installs it there: the setup is broken")
    pytest.skip(reason)


def _flags(exe: str, profile_dir: Path) -> list[str]:
    return [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
    ]


def dump_dom(page: Path, profile_dir: Path) -> str:
    """The page's DOM after Chromium loaded it (what a reader's browser would show)."""
    flags = _flags(chromium(), profile_dir)
    return subprocess.run(
        [*flags, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=60
    ).stdout


def screenshot(page: Path, profile_dir: Path, shot: Path, height: int = 2000) -> Path:
    """A 1200 x ``height`` PNG of the rendered page."""
    flags = _flags(chromium(), profile_dir)
    subprocess.run(
        [*flags, f"--screenshot={shot}", f"--window-size=1200,{height}", page.resolve().as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return shot
