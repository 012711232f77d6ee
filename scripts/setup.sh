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
want="$(cat setup.py scripts/setup.sh scripts/build_horovod.sh scripts/fetch_s3a_jars.sh | sha256sum | cut -d' ' -f1)"
# pip's own exit status counts; only the machine's noisy "Location ... is ignored" lines are filtered.
pipq() { python -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2); }
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    pipq --upgrade pip setuptools wheel
    pipq "torch==2.13.0"
    pipq -e ".[spark,serving,dev,tune]"
    python -c "import torch, pyspark, ipinsights" # fail here, not in the middle of a test run
    bash scripts/build_horovod.sh
    # Test-only extras: Hadoop S3A jars for the s3a:// test against a local S3 server (it skips without
    # them), and Chromium for the report-rendering tests: installed where we can (root with apt-get, as
    # in CI); without it they skip on a developer's machine and fail where CI is set (tests/browser.py).
    bash scripts/fetch_s3a_jars.sh || echo "warning: S3A jars not fetched; the s3a test will skip" >&2
    if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "warning: chromium not installed; the report-rendering tests will skip (fail with CI set)" >&2
    fi
    echo "$want" > "$stamp"
fi
echo "environment ready: $(python -c 'import sys; print(sys.executable)')" >&2
