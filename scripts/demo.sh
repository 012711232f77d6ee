#!/usr/bin/env bash
# The main job on the embedded default (README): set up .venv if needed, then generate a tutorial-like
# data set and run ingest -> train -> score -> report on local[2] Spark with local files, training with the
# demo's settings (conf/demo.yml: SageMaker's tutorial's, not the shipped defaults of conf/train.yml).
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
# Training uses every core in one process (backend auto). OpenMP's threads spin while they wait for each
# other, which collapses when anything else wants the cores (measured on 2 busy cores: 665 pairs/s
# spinning, 7,195 passive); on idle cores passive waiting costs 1.6x per epoch (bench/train_speed.py,
# 2 threads: 37.0 s spinning, 59.6 s passive), a bounded loss against a tenfold one. Read when torch loads.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python jobs/pipeline.py ${IPINSIGHTS_BACKEND:+--backend "$IPINSIGHTS_BACKEND"} "$@"
