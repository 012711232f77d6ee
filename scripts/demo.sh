#!/usr/bin/env bash
# The main job on the embedded default (README): set up .venv if needed, then generate a tutorial-like
# data set and run ingest -> train -> score -> report on local[2] Spark with local files.
# Extra arguments go to jobs/pipeline.py (e.g. --workdir DIR, --users=2000). Setup builds Horovod only
# for --backend horovod (or IPINSIGHTS_BACKEND=horovod): the default backend (auto) trains in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=()
for arg in "$@"; do
    case "$arg" in --backend=horovod) parts=(horovod) ;; esac
    if [ "${prev:-}" = --backend ] && [ "$arg" = horovod ]; then parts=(horovod); fi
    prev="$arg"
done
bash scripts/setup.sh "${parts[@]}"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
exec .venv/bin/python jobs/pipeline.py ${IPINSIGHTS_BACKEND:+--backend "$IPINSIGHTS_BACKEND"} "$@"
