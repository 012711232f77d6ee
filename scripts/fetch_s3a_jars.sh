#!/usr/bin/env bash
# Fetch Hadoop's S3A connector jars for the s3a test route, without Maven.
#
# pyspark's pip package ships the Hadoop client but not hadoop-aws. Maven Central may be unreachable
# (CI sandboxes), while PyPI is not: the sagemaker-pyspark sdist bundles hadoop-aws-3.3.1 and the
# matching aws-java-sdk-bundle. Those are OLDER than Spark 4.3's Hadoop (3.5): good enough to prove the
# s3a:// route against a local S3 API (moto) in tests, NOT for production (use the cluster's connector).
#
# Usage: scripts/fetch_s3a_jars.sh [CACHE_DIR]   (default: $IPINSIGHTS_S3A_JARS or ~/.cache/ipinsights/s3a-jars)
# Prints the comma-separated jar list, ready for --spark-conf spark.jars=...
set -euo pipefail

DEST="${1:-${IPINSIGHTS_S3A_JARS:-$HOME/.cache/ipinsights/s3a-jars}}"
VERSION="${SAGEMAKER_PYSPARK_VERSION:-1.4.5}"
JARS=(hadoop-aws-3.3.1.jar aws-java-sdk-bundle-1.11.901.jar)
PIP="${PIP:-python -m pip}"

mkdir -p "$DEST"
missing=0
for j in "${JARS[@]}"; do [[ -s "$DEST/$j" ]] || missing=1; done

if [[ $missing -eq 1 ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # --no-binary :all: forces the sdist (the only distribution that carries the jars); --no-deps keeps it to one file.
  $PIP download --quiet --no-deps --no-binary :all: --no-build-isolation "sagemaker-pyspark==$VERSION" -d "$tmp" >&2 \
    || $PIP download --quiet --no-deps --no-binary :all: "sagemaker-pyspark==$VERSION" -d "$tmp" >&2
  sdist="$(ls "$tmp"/sagemaker_pyspark-*.tar.gz | head -n1)"
  members=()
  for j in "${JARS[@]}"; do members+=("sagemaker_pyspark-$VERSION/deps/jars/$j"); done
  tar -xzf "$sdist" -C "$tmp" "${members[@]}"
  for j in "${JARS[@]}"; do
    # Write under a temporary name and rename, so a killed download never leaves a truncated jar behind.
    cp "$tmp/sagemaker_pyspark-$VERSION/deps/jars/$j" "$DEST/.$j.tmp"
    mv "$DEST/.$j.tmp" "$DEST/$j"
  done
fi

out=()
for j in "${JARS[@]}"; do out+=("$DEST/$j"); done
(IFS=,; echo "${out[*]}")
