#!/usr/bin/env bash
# Submit an ipinsights job to Spark with the library shipped to the executors.
#
#   ./spark-submit.sh [--master MASTER] [--deploy-mode client|cluster] [--spark-opt OPT]... [--dry-run] JOB [args]
#
# JOB is one of: generate, ingest, train, score, tune (the file jobs/JOB.py). The library (ipinsights and
# the job entry points) is zipped into dist/ipinsights-jobs.zip and shipped with --py-files; the
# job's config (its --config argument, default conf/JOB.yml; tune's base training config too) is
# shipped with --files. A relative --config is looked up in the working directory, then in the project.
# MASTER defaults to $SPARK_MASTER or local[2]; only a local master gets SPARK_LOCAL_IP=127.0.0.1 by
# default. --dry-run prints the environment and the spark-submit command instead of running them.
# Examples (tests/test_deploy.py runs each through --dry-run and the job's own parser):
#   ./spark-submit.sh ingest --inputs='data/logs/*.gz' --output=data/events
#   ./spark-submit.sh train --events data/events --date 2026-01-09 --output runs/2026-01-09
#   ./spark-submit.sh --master yarn --deploy-mode cluster score --date 2026-01-09 --model s3://b/runs/2026-01-09/model
# Note: the horovod backend's ranks are separate Python processes that do not see --py-files: on a
# cluster, install the wheel (pip install dist/ipinsights-*.whl) on every node, e.g. with a bootstrap
# action or a cluster library.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
master="${SPARK_MASTER:-local[2]}"
deploy="client"
dry_run=0
spark_opts=()
while [ $# -gt 0 ]; do
    case "$1" in
        --master) master="$2"; shift 2 ;;
        --deploy-mode) deploy="$2"; shift 2 ;;
        --spark-opt) spark_opts+=("$2"); shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
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
zip_path="$here/dist/ipinsights-jobs.zip"
[ "$dry_run" = 1 ] || mkdir -p "$here/dist"
[ "$dry_run" = 1 ] || "$py" - "$here" "$zip_path" <<'PY'
import sys, zipfile, pathlib
root, out = pathlib.Path(sys.argv[1]), sys.argv[2]
with zipfile.ZipFile(out + ".tmp", "w", zipfile.ZIP_DEFLATED) as z:
    for pkg, arc in (("ipinsights", "ipinsights"), ("jobs", "ipinsights_jobs")):
        for f in sorted((root / pkg).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix in (".py", ".typed", ".yml", ".json", ".txt"):  # .txt: package data (score/hosting_asns.txt)
                z.write(f, f"{arc}/{f.relative_to(root / pkg)}")
pathlib.Path(out + ".tmp").replace(out)
PY

# Config files travel with the job (--files). A relative path is the working directory's, else the
# project's (so `--config conf/train.yml` works from anywhere); in cluster mode the driver runs in a
# work dir on the cluster where --files land under their base names, so the job is given those.
abs_config() {
    case "$1" in
        /* | *://*) printf '%s\n' "$1" ;;  # absolute, or a URI that spark-submit fetches itself
        *) if [ -f "$1" ]; then printf '%s/%s\n' "$(cd "$(dirname "$1")" && pwd)" "$(basename "$1")"
           elif [ -f "$here/$1" ]; then printf '%s\n' "$here/$1"
           else echo "config file '$1' not found (looked in $PWD and $here)" >&2; return 2; fi ;;
    esac
}
files=()
ship() {  # ship $1 (absolute); $name: what the job should open
    files+=("$1")
    if [ "$deploy" = "cluster" ]; then name="$(basename "$1")"; else name="$1"; fi
}
args=()
config=""
train_config=""
while [ $# -gt 0 ]; do
    case "$1" in
        --config | --train-config)
            [ $# -ge 2 ] || { echo "$1 needs a file" >&2; exit 2; }
            f="$(abs_config "$2")"
            [ "$1" = --config ] && config="$f" || train_config="$f"
            ship "$f"; args+=("$1" "$name"); shift 2 ;;
        --config=* | --train-config=*)
            f="$(abs_config "${1#*=}")"
            [ "${1%%=*}" = --config ] && config="$f" || train_config="$f"
            ship "$f"; args+=("${1%%=*}=$name"); shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ -z "$config" ] && [ -f "$here/conf/$job.yml" ]; then
    config="$here/conf/$job.yml"
    ship "$config"; args+=(--config "$name")
fi
# tune.yml names its base training config (base_config:) relative to itself: ship that file too, and
# name it explicitly in cluster mode, where it lands beside tune.yml under its base name.
if [ "$job" = tune ] && [ -z "$train_config" ] && [ -f "$config" ]; then
    base="$(sed -n -E "s/^base_config:[[:space:]]*[\"']?([^\"'#[:space:]]+).*/\1/p" "$config" | head -n1)"
    case "$base" in "" | /* | *://*) ;; *) base="$(dirname "$config")/$base" ;; esac
    if [ -n "$base" ]; then
        ship "$(abs_config "$base")"
        if [ "$deploy" = "cluster" ]; then args+=(--train-config "$name"); fi
    fi
fi
file_opts=()
if [ ${#files[@]} -gt 0 ]; then
    file_opts=(--files "$(IFS=,; echo "${files[*]}")")
fi

# 127.0.0.1 keeps a laptop's local Spark off its network address; a cluster's driver must be reachable.
case "$master" in
    local | local\[*) export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}" ;;
esac
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$py}"
cmd=("$submit" --master "$master" --deploy-mode "$deploy" --py-files "$zip_path" "${file_opts[@]}"
     "${spark_opts[@]}" "$job_file" "${args[@]}")
if [ "$dry_run" = 1 ]; then
    for var in SPARK_LOCAL_IP PYSPARK_PYTHON; do
        if [ -n "${!var+x}" ]; then printf '%s=%q\n' "$var" "${!var}"; else echo "$var unset"; fi
    done
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
exec "${cmd[@]}"
