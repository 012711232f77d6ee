#!/usr/bin/env bash
# Set up the project's virtual environment (.venv) from scratch, or bring an existing one up to date,
# with the parts a command needs:
#
#   bash scripts/setup.sh [test] [horovod]
#
# Always: torch==2.13.0 (pinned: an unpinned torch pulls gigabytes of CUDA packages) and the project with
# its spark, serving and tune extras: everything the jobs, the demo and the endpoint run on.
#   test     the dev extra (pytest, ruff, mypy, moto), Hadoop's S3A jars and Chromium for the tests.
#   horovod  Horovod, built from its sdist with a C++17 patch and cached (scripts/build_horovod.sh; ~3 min
#            the first time on 2 cores). Also when IPINSIGHTS_BACKEND=horovod.
# scripts/demo.sh asks for neither; scripts/test.sh for both. Idempotent: .venv/.ipinsights-setup records
# each part installed with a hash of the files it came from, so a second run takes seconds and a run
# that asks for more (the tests after the demo) installs only the missing parts.
#
# Spark versions: the project runs on pyspark 3.5 and 4.x (setup.py's range); the versions an environment
# gets are fixed by a constraints file, scripts/constraints-spark$IPINSIGHTS_SPARK.txt (default 4: the
# newest pyspark), in the virtualenv $IPINSIGHTS_VENV (default .venv). CI's second leg is
# IPINSIGHTS_SPARK=3.5 IPINSIGHTS_VENV=.venv-spark3.5 (scripts/test_spark35.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${IPINSIGHTS_VENV:-.venv}"
CONSTRAINTS="scripts/constraints-spark${IPINSIGHTS_SPARK:-4}.txt"
[ -f "$CONSTRAINTS" ] || { echo "no constraints file $CONSTRAINTS (IPINSIGHTS_SPARK=3.5 or 4)" >&2; exit 2; }
want_parts=(base)
for arg in "$@"; do
    case "$arg" in
        test | horovod) want_parts+=("$arg") ;;
        *) echo "usage: $0 [test] [horovod]" >&2; exit 2 ;;
    esac
done
if [ "${IPINSIGHTS_BACKEND:-}" = horovod ]; then want_parts+=(horovod); fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.ipinsights-setup"
# A part's hash covers what it is installed from; every part includes the base's (torch and the project
# under it), so a new torch pin reinstalls Horovod, which is built against it, and the test tools.
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
declare -A want=(
    [base]="$(hash_of setup.py scripts/setup.sh "$CONSTRAINTS")"
)
want[test]="$(hash_of setup.py scripts/setup.sh "$CONSTRAINTS" scripts/fetch_s3a_jars.sh)"
want[horovod]="$(hash_of setup.py scripts/setup.sh "$CONSTRAINTS" scripts/build_horovod.sh)"
declare -A have=()
if [ -f "$stamp" ]; then
    while read -r part hash; do
        [ -n "${hash:-}" ] && have[$part]="$hash"
    done < "$stamp"
fi

# pip's own exit status counts; only the machine's noisy "Location ... is ignored" lines are filtered.
pipq() { python -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" "$@" 2> >(grep -v "^WARNING: Location" >&2); }
install_base() {
    pipq --upgrade pip setuptools wheel
    pipq "torch==2.13.0"
    pipq -e ".[spark,serving,tune]"
    python -c "import torch, pyspark, ipinsights" # fail here, not in the middle of a run
}
install_test() {
    pipq -e ".[spark,serving,tune,dev]"
    # Hadoop S3A jars for the s3a:// test against a local S3 server (it skips without them), and
    # Chromium for the report-rendering tests: installed where we can (root with apt-get, as in CI);
    # without it they skip on a developer's machine and fail where CI is set (tests/browser.py).
    bash scripts/fetch_s3a_jars.sh || echo "warning: S3A jars not fetched; the s3a test will skip" >&2
    if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "warning: chromium not installed; the report-rendering tests will skip (fail with CI set)" >&2
    fi
}
install_horovod() { bash scripts/build_horovod.sh; }

for part in "${want_parts[@]}"; do
    if [ "${have[$part]:-}" != "${want[$part]}" ]; then
        echo "setting up: $part" >&2
        "install_$part"
        have[$part]="${want[$part]}"
        # Record each part as soon as it is in, so an interrupted run redoes only what is missing.
        for p in "${!have[@]}"; do echo "$p ${have[$p]}"; done | sort > "$stamp.tmp"
        mv "$stamp.tmp" "$stamp"
    fi
done
ready=()
for part in base test horovod; do [ "${have[$part]:-}" = "${want[$part]}" ] && ready+=("$part"); done
echo "environment ready (${ready[*]}): $(python -c 'import sys; print(sys.executable)')" >&2
