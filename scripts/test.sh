#!/usr/bin/env bash
# The project's test command (README, CI): set up .venv if needed (test tools and Horovod included),
# lint, format check, type check, then every test (slow ones too) on the newest supported Spark, then the
# end-to-end tests on the oldest (scripts/test_spark35.sh, in .venv-spark3.5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test horovod  # the dev tools, and Horovod for its backend's tests
export SPARK_LOCAL_IP=127.0.0.1
# Training uses every core in one process (backend auto). OpenMP's threads spin while they wait for each
# other, which collapses when anything else wants the cores (measured on 2 busy cores: 665 pairs/s
# spinning, 7,195 passive); on idle cores passive waiting costs 1.6x per epoch (bench/train_speed.py,
# 2 threads: 37.0 s spinning, 59.6 s passive), a bounded loss against a tenfold one. Read when torch loads.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m mypy  # [tool.mypy] in pyproject.toml: strict on core/ and storage/
# The pipeline test of each Spark leg leaves its results here; the second leg checks that they agree.
IPINSIGHTS_SPARK_RESULTS="${IPINSIGHTS_SPARK_RESULTS:-$(mktemp -d)}"
export IPINSIGHTS_SPARK_RESULTS
# The slowest tests are listed at the end: CI time is a budget (45 minutes for both legs), and this is where it goes.
.venv/bin/python -m pytest --durations=30 "$@"
# The second Spark leg: the end-to-end tests again on the oldest supported Spark (pyspark 3.5).
bash scripts/test_spark35.sh
