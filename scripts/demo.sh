#!/usr/bin/env bash
# The main job on the embedded default (README): set up .venv if needed, then generate a tutorial-like
# data set and run ingest -> train -> score -> report on local[2] Spark with local files.
# Extra arguments go to jobs/pipeline.py (e.g. --workdir DIR, --users=2000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
exec .venv/bin/python jobs/pipeline.py "$@"
