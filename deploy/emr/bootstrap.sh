#!/usr/bin/env bash
# EMR bootstrap action: runs on every node (primary, core, task) before Spark starts.
#
#   aws emr create-cluster ... \
#     --bootstrap-actions Path=s3://my-bucket/ipinsights/bootstrap.sh,Args=[s3://my-bucket/ipinsights/wheels]
#
# Installs Python 3.11 (the jobs need >= 3.10; Amazon Linux 2023's python3 is 3.9), CPU torch and the
# project wheel with its `spark` extra (matplotlib: the report's charts; the pyspark it names is only
# shadowed by EMR's own, which spark-submit puts first on the Python path), from the wheels folder given as
# the argument. The Horovod wheel (scripts/build_horovod.sh, built on the nodes' OS and Python) is
# installed when that folder has one: only `--backend horovod` needs it; without it the torch backend
# trains. Every node needs the wheel: the executors' Python workers import the library, and the training
# ranks are separate processes.
set -euo pipefail
WHEELS="${1:?usage: bootstrap.sh s3://bucket/prefix/of/wheels}"
PY="${IPINSIGHTS_PYTHON:-python3.11}"

sudo dnf install -y "$PY" "$PY-pip"
tmp="$(mktemp -d)"
aws s3 cp --recursive "$WHEELS" "$tmp" --exclude '*' --include 'ipinsights-*.whl' --include 'horovod-*.whl'
shopt -s nullglob
project=("$tmp"/ipinsights-*.whl)
horovod=("$tmp"/horovod-*.whl)
if [ "${#project[@]}" -ne 1 ]; then
    echo "bootstrap: expected one ipinsights-*.whl under $WHEELS, found ${#project[@]}" >&2
    exit 1
fi
# CPU torch from PyTorch's index first: the wheel's torch requirement from PyPI pulls gigabytes of CUDA.
sudo "$PY" -m pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
sudo "$PY" -m pip install --no-cache-dir "${project[0]}[spark]"
if [ "${#horovod[@]}" -gt 0 ]; then
    sudo "$PY" -m pip install --no-cache-dir "${horovod[@]}" cloudpickle psutil pyyaml packaging cffi
else
    echo "bootstrap: no horovod-*.whl under $WHEELS: the torch backend only (--backend torch)" >&2
fi
rm -rf "$tmp"
