#!/usr/bin/env bash
# Set up the project's virtual environment (.venv) from scratch, or bring an existing one up to date.
# Idempotent: a second run takes seconds. Installs torch==2.13.0 (pinned: an unpinned torch pulls
# gigabytes of CUDA packages), the project with its spark and dev extras, and Horovod (built from its
# sdist with a C++17 patch and cached; see scripts/build_horovod.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.ipinsights-setup
want="$(cat setup.py scripts/setup.sh scripts/build_horovod.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
    python -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
    python -m pip install -q --disable-pip-version-check -e ".[spark,dev]" 2>&1 | grep -v "^WARNING: Location" || true
    python -c "import torch, pyspark, ipinsights" # fail here, not in the middle of a test run
    bash scripts/build_horovod.sh
    echo "$want" > "$stamp"
fi
echo "environment ready: $(python -c 'import sys; print(sys.executable)')" >&2
