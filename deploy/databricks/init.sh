#!/usr/bin/env bash
# Databricks cluster init script: runs on every node before Spark starts (the job cluster names it in
# init_scripts). Installs CPU torch before the tasks' library (the project wheel) is installed, so that
# the wheel's torch requirement is met without PyPI's CUDA build; and the Horovod wheel that
# scripts/build_horovod.sh builds (for the runtime's Python) when $IPINSIGHTS_WHEELS has one: only
# `--backend horovod` needs it (its ranks are separate processes that see only what is installed
# node-wide); without it the torch backend trains.
# The runtime brings pyspark and matplotlib (the `spark` extra): never pip-install pyspark on Databricks,
# it would shadow the runtime's own Spark.
set -euo pipefail
WHEELS="${IPINSIGHTS_WHEELS:-/Workspace/Shared/ipinsights/wheels}"
PIP="${IPINSIGHTS_PIP:-/databricks/python/bin/pip}"

"$PIP" install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
shopt -s nullglob
horovod=("$WHEELS"/horovod-*.whl)
if [ "${#horovod[@]}" -gt 0 ]; then
    "$PIP" install --no-cache-dir "${horovod[@]}" cloudpickle psutil pyyaml packaging cffi
else
    echo "init.sh: no horovod-*.whl in $WHEELS: the torch backend only (--backend torch)" >&2
fi
