#!/usr/bin/env bash
# Set up the project's virtual environment (.venv) from scratch, or bring an existing one up to date.
# Idempotent: a second run takes seconds. Installs torch==2.13.0 (pinned: an unpinned torch pulls
# gigabytes of CUDA packages), the project with its spark, serving and dev extras, and Horovod (built from its
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
# pip's own exit status counts; only the machine's noisy "Location ... is ignored" lines are filtered.
pipq() { python -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2); }
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    pipq --upgrade pip setuptools wheel
    pipq "torch==2.13.0"
    pipq -e ".[spark,serving,dev]"
    python -c "import torch, pyspark, ipinsights" # fail here, not in the middle of a test run
    bash scripts/build_horovod.sh
    echo "$want" > "$stamp"
fi
echo "environment ready: $(python -c 'import sys; print(sys.executable)')" >&2
