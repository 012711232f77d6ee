#!/usr/bin/env bash
# EMR bootstrap action: runs on every node (primary, core, task) before Spark starts.
#
#   aws emr create-cluster ... \
#     --bootstrap-actions Path=s3://my-bucket/ipinsights/deploy/emr/bootstrap.sh,Args=[s3://my-bucket/ipinsights/wheels] \
#     --steps file://deploy/emr/steps.json
#
# Installs Python 3.11 (the jobs need >= 3.10; Amazon Linux 2023's python3 is 3.9), CPU torch, the project
# wheel (`pip wheel --no-deps -w dist .`) and the Horovod wheel that scripts/build_horovod.sh builds (build it
# on the same OS and Python as the nodes). Every node needs them: the executors' Python workers import the
# library, and Horovod's ranks are separate processes that do not see --py-files.
set -euo pipefail
WHEELS="${1:?usage: bootstrap.sh s3://bucket/prefix/of/wheels}"
PY=python3.11

sudo dnf install -y "$PY" "$PY-pip" "$PY-devel"
tmp="$(mktemp -d)"
aws s3 cp --recursive "$WHEELS" "$tmp" --exclude '*' --include 'ipinsights-*.whl' --include 'horovod-*.whl'
# CPU torch from PyTorch's index: PyPI's default build pulls gigabytes of CUDA libraries.
sudo "$PY" -m pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
sudo "$PY" -m pip install --no-cache-dir "$tmp"/ipinsights-*.whl
sudo "$PY" -m pip install --no-cache-dir "$tmp"/horovod-*.whl cloudpickle psutil pyyaml packaging cffi
rm -rf "$tmp"
