#!/usr/bin/env bash
# Submit an ipinsights job to Spark with the library shipped to the executors.
#
#   ./spark-submit.sh [--master MASTER] [--deploy-mode client|cluster] [--spark-opt OPT]... JOB [job args]
#
# JOB is one of: generate, ingest, train, score, tune (the file jobs/JOB.py). The library (ipinsights and
# the job entry points) is zipped into dist/ipinsights-jobs.zip and shipped with --py-files; the
# job's conf/ file (its --config argument, default conf/JOB.yml) is shipped with --files.
# MASTER defaults to $SPARK_MASTER or local[2]. Examples:
#   ./spark-submit.sh ingest --input 'data/logs/*.gz' --output data/events
#   ./spark-submit.sh --master yarn --deploy-mode cluster train --events s3://bucket/events ... --output s3://...
# Note: the horovod backend's ranks are separate Python processes that do not see --py-files: on a
# cluster, install the wheel (pip install dist/ipinsights-*.whl) on every node, e.g. with a bootstrap
# action or a cluster library.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
master="${SPARK_MASTER:-local[2]}"
deploy="client"
spark_opts=()
while [ $# -gt 0 ]; do
    case "$1" in
        --master) master="$2"; shift 2 ;;
        --deploy-mode) deploy="$2"; shift 2 ;;
        --spark-opt) spark_opts+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { echo "usage: $0 [--master M] JOB [args]; JOB: generate|ingest|train|score|tune" >&2; exit 2; }
job="$1"; shift
job_file="$here/jobs/$job.py"
[ -f "$job_file" ] || { echo "unknown job '$job' (no $job_file)" >&2; exit 2; }

py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
submit="$(dirname "$py")/spark-submit"
[ -x "$submit" ] || submit="$(command -v spark-submit)" || { echo "spark-submit not found" >&2; exit 2; }

# Zip the library as importable packages (ipinsights/, ipinsights_jobs/) for --py-files.
mkdir -p "$here/dist"
zip_path="$here/dist/ipinsights-jobs.zip"
"$py" - "$here" "$zip_path" <<'PY'
import sys, zipfile, pathlib
root, out = pathlib.Path(sys.argv[1]), sys.argv[2]
with zipfile.ZipFile(out + ".tmp", "w", zipfile.ZIP_DEFLATED) as z:
    for pkg, arc in (("ipinsights", "ipinsights"), ("jobs", "ipinsights_jobs")):
        for f in sorted((root / pkg).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".typed", ".yml", ".json"):
                z.write(f, f"{arc}/{f.relative_to(root / pkg)}")
pathlib.Path(out + ".tmp").replace(out)
PY

# The job's config file travels with the job; in cluster mode the driver finds it in its work dir.
args=("$@")
config=""
for i in "${!args[@]}"; do
    if [ "${args[$i]}" = "--config" ]; then config="${args[$((i + 1))]}"; fi
done
if [ -z "$config" ] && [ -f "$here/conf/$job.yml" ]; then
    config="$here/conf/$job.yml"
    args+=(--config "$config")
fi
files=()
if [ -n "$config" ]; then
    shipped="$config"
    # tune.yml names its base training config relative to itself (base_config: train.yml): ship it too.
    if [ "$job" = "tune" ] && [ -f "$(dirname "$config")/train.yml" ]; then
        shipped="$shipped,$(dirname "$config")/train.yml"
    fi
    files=(--files "$shipped")
    if [ "$deploy" = "cluster" ]; then
        for i in "${!args[@]}"; do
            if [ "${args[$i]}" = "--config" ]; then args[$((i + 1))]="$(basename "$config")"; fi
        done
    fi
fi

export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$py}"
exec "$submit" --master "$master" --deploy-mode "$deploy" --py-files "$zip_path" "${files[@]}" \
    "${spark_opts[@]}" "$job_file" "${args[@]}"
