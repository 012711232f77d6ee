#!/usr/bin/env bash
# CI's second Spark leg (scripts/test.sh runs it after the full suite): the oldest Spark the project
# supports (pyspark 3.5: EMR 7.x, Databricks 15.4/16.4 LTS), in its own virtualenv (.venv-spark3.5, the
# versions of scripts/constraints-spark3.5.txt), running the tests marked oldest_spark: the scoring job's
# golden outputs, the pipeline on local[2], the pipeline on a standalone cluster with S3, the spark ingest
# engine, and two-rank training through Spark with both backends (Horovod included).
set -euo pipefail
cd "$(dirname "$0")/.."
export IPINSIGHTS_SPARK=3.5 IPINSIGHTS_VENV=.venv-spark3.5
bash scripts/setup.sh test horovod
export SPARK_LOCAL_IP=127.0.0.1
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
"$IPINSIGHTS_VENV/bin/python" - <<'PY'
import pyspark
assert pyspark.__version__.startswith("3.5."), f"the second leg runs pyspark 3.5, not {pyspark.__version__}"
print(f"pyspark {pyspark.__version__}")
PY
"$IPINSIGHTS_VENV/bin/python" -m pytest -m oldest_spark --durations=10 "$@"
