#!/usr/bin/env bash
# Databricks cluster init script: runs on every node before Spark starts (the job's cluster names it in
# init_scripts). Installs CPU torch and the Horovod wheel that scripts/build_horovod.sh builds (build it for
# the runtime's Python; Horovod's ranks are separate processes that do not see the job's libraries unless
# installed node-wide). The project wheel itself is the tasks' `libraries` entry.
set -euo pipefail
WHEELS="${IPINSIGHTS_WHEELS:-/Workspace/Shared/ipinsights/wheels}"
PIP=/databricks/python/bin/pip

$PIP install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
$PIP install --no-cache-dir "$WHEELS"/horovod-*.whl cloudpickle psutil pyyaml packaging cffi
