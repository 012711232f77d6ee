#!/usr/bin/env bash
# build_horovod.sh - build Horovod 0.28.1 (PyTorch + Gloo, CPU, no MPI) against the
# torch that is installed in the ACTIVE Python environment, cache the wheel, install it.
#
# Usage:
#   source .venv/bin/activate            # or any env where `python` is the target
#   pip install torch==2.13.0            # prerequisite (CPU wheel; never unpinned torch)
#   bash scripts/build_horovod.sh
#
# Environment knobs:
#   HOROVOD_WHEEL_CACHE   wheel/sdist cache (default: $HOME/.cache/ipinsights/wheels)
#   TORCH_REQUIRED        torch version to insist on (default: 2.13.0; "+cpu" suffix ok)
#   HOROVOD_FORCE_REBUILD=1  ignore a cached wheel and rebuild
#   HOROVOD_CHECK_BUILD=1    always print `horovodrun --check-build` (default: only after install)
#   PYTHON                interpreter to use (default: python)
#
# Why this script exists:
#   * Horovod's last release (0.28.1) is sdist-only and its CMake asks for C++14;
#     torch >= 2.1 headers need C++17. CXXFLAGS=-std=c++17 does not reach the compile
#     line, so we patch CMAKE_CXX_STANDARD in the two CMakeLists.txt files.
#   * `pip install horovod` builds in an isolated env that cannot see torch, so torch
#     support silently drops out; we build with --no-build-isolation instead.
#   * We never install the `horovod[spark]` extra: it pins pyarrow<11 and pulls
#     petastorm. horovod.spark.run works without it (pyspark is enough).
#
# Idempotent: a second run finds the cached wheel for (python tag, torch version),
# skips pip if that exact wheel is already installed (else reinstalls it with
# --no-deps), and re-runs a quick 1-rank check (~7 s in all).
set -euo pipefail

HOROVOD_VERSION=0.28.1
TORCH_REQUIRED="${TORCH_REQUIRED:-2.13.0}"
CACHE_ROOT="${HOROVOD_WHEEL_CACHE:-$HOME/.cache/ipinsights/wheels}"
PY="${PYTHON:-python}"

log() { printf '[build_horovod] %s\n' "$*" >&2; }
die() { printf '[build_horovod] ERROR: %s\n' "$*" >&2; exit 1; }

command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found; activate the target environment first."
log "python: $("$PY" -c 'import sys; print(sys.executable)')"

# --- 1. Preconditions: the pinned torch must already be there (we never install it:
#        an unpinned torch would drag in GBs of CUDA wheels).
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
    || die "torch is not importable in this environment. Install it first: pip install torch==${TORCH_REQUIRED}"
case "$TORCH_VERSION" in
    "$TORCH_REQUIRED" | "$TORCH_REQUIRED"+*) ;;
    *) die "torch ${TORCH_VERSION} found, need ${TORCH_REQUIRED}. Run: pip install torch==${TORCH_REQUIRED}" ;;
esac
PY_TAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
log "torch ${TORCH_VERSION}, python tag ${PY_TAG}"

# The wheel links against this exact torch's C++ ABI, so the cache key is
# (torch version, python tag). '+' is fine in a dir name but keep it tidy.
WHEEL_DIR="${CACHE_ROOT}/horovod-${HOROVOD_VERSION}/torch-${TORCH_VERSION//+/_}/${PY_TAG}"
SDIST_DIR="${CACHE_ROOT}/sdist"
mkdir -p "$WHEEL_DIR" "$SDIST_DIR"

# Serialise concurrent runs (e.g. two CI jobs sharing $HOME) on the cache.
exec 9>"${CACHE_ROOT}/.build_horovod.lock"
flock 9

# Horovod's runtime deps (the wheel's Requires-Dist, minus torch); the wheel itself is
# installed with --no-deps so pip cannot touch torch. setuptools/wheel/packaging are
# needed by setup.py under --no-build-isolation.
RUNTIME_DEPS=(cloudpickle psutil pyyaml packaging "cffi>=1.4.0")
BUILD_DEPS=(setuptools wheel packaging)

find_cached_wheel() {
    compgen -G "${WHEEL_DIR}/horovod-${HOROVOD_VERSION}-${PY_TAG}-*.whl" | head -n1 || true
}

WHEEL="$(find_cached_wheel)"
if [[ -n "$WHEEL" && "${HOROVOD_FORCE_REBUILD:-0}" != 1 ]]; then
    log "cache hit: $WHEEL"
else
    # --- 2. Build toolchain checks (fail early, before a 2-minute build).
    command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 \
        || die "no C++ compiler (apt-get install g++)"
    # setup.py pip-installs cmake~=3.13 itself if the system one is < 3.13; 3.13+ is fine.
    command -v cmake >/dev/null 2>&1 || { log "no cmake on PATH; installing the PyPI cmake"; "$PY" -m pip install -q "cmake>=3.13,<4"; }
    command -v make >/dev/null 2>&1 || die "make not found (apt-get install make)"

    "$PY" -m pip install -q "${BUILD_DEPS[@]}" "${RUNTIME_DEPS[@]}"

    WORK="$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT

    # --- 3. Fetch the sdist (cached too, so rebuilds work offline).
    SDIST="${SDIST_DIR}/horovod-${HOROVOD_VERSION}.tar.gz"
    if [[ ! -s "$SDIST" ]]; then
        log "downloading horovod==${HOROVOD_VERSION} sdist"
        "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==${HOROVOD_VERSION}" -d "$WORK/dl"
        mv "$WORK/dl/horovod-${HOROVOD_VERSION}.tar.gz" "$SDIST.tmp" && mv "$SDIST.tmp" "$SDIST"
    fi
    tar -xzf "$SDIST" -C "$WORK"
    SRC="$WORK/horovod-${HOROVOD_VERSION}"

    # --- 4. Patch C++14 -> C++17. Fail loudly if the target line moved/changed,
    #        so an altered sdist is noticed instead of silently building wrong.
    patch_std() { # file, exact line (leading whitespace allowed)
        local f="$SRC/$1"
        grep -qE "^[[:space:]]*set\(CMAKE_CXX_STANDARD 14\)[[:space:]]*$" "$f" \
            || die "patch target 'set(CMAKE_CXX_STANDARD 14)' not found in $1 - sdist changed?"
        sed -i -E 's/^([[:space:]]*)set\(CMAKE_CXX_STANDARD 14\)[[:space:]]*$/\1set(CMAKE_CXX_STANDARD 17)/' "$f"
        grep -qE "set\(CMAKE_CXX_STANDARD 14\)" "$f" && die "patch incomplete in $1"
        log "patched $1 to C++17"
    }
    patch_std CMakeLists.txt
    patch_std horovod/torch/CMakeLists.txt

    # --- 5. Build. Explicit WITH/WITHOUT flags make the build fail (instead of
    #        silently skipping) if torch or gloo cannot be built.
    JOBS="$(nproc 2>/dev/null || echo 2)"
    log "building wheel with -j${JOBS} (about 2 min on 2 cores, ~2.5 GB RAM)"
    start=$SECONDS
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 \
    HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_CPU_OPERATIONS=GLOO \
    MAKEFLAGS="-j${JOBS}" CMAKE_BUILD_PARALLEL_LEVEL="${JOBS}" \
        "$PY" -m pip wheel --no-build-isolation --no-deps -w "$WORK/wheel" "$SRC" \
        > "$WORK/build.log" 2>&1 \
        || { tail -n 60 "$WORK/build.log" >&2; die "horovod build failed (log tail above)"; }
    log "build finished in $((SECONDS - start))s"

    built="$(compgen -G "$WORK/wheel/horovod-${HOROVOD_VERSION}-*.whl" | head -n1 || true)"
    [[ -n "$built" ]] || die "pip wheel produced no horovod wheel"
    # Atomic publish into the cache (a killed run never leaves a half-written wheel).
    rm -f "${WHEEL_DIR}"/horovod-"${HOROVOD_VERSION}"-*.whl
    cp "$built" "${WHEEL_DIR}/.tmp.whl"
    WHEEL="${WHEEL_DIR}/$(basename "$built")"
    mv "${WHEEL_DIR}/.tmp.whl" "$WHEEL"
    log "cached $WHEEL"
fi

# --- 6. Install. Skip pip when nothing changed (keeps re-runs fast): runtime deps
#        importable, and the installed horovod came from this exact wheel (pip
#        records the wheel's sha256 in direct_url.json).
"$PY" -c 'import cloudpickle, psutil, yaml, packaging, cffi' 2>/dev/null \
    || "$PY" -m pip install -q "${RUNTIME_DEPS[@]}"
WHEEL_SHA="$(sha256sum "$WHEEL" | cut -d' ' -f1)"
INSTALLED_SHA="$("$PY" -c '
import json, importlib.metadata as m
d = json.loads(m.distribution("horovod").read_text("direct_url.json"))
print(d["archive_info"]["hashes"]["sha256"])' 2>/dev/null || true)"
if [[ "$INSTALLED_SHA" == "$WHEEL_SHA" ]]; then
    log "horovod already installed from this wheel; skipping pip install"
else
    # --no-deps: never let pip re-resolve torch; --force-reinstall so a horovod built
    # against another torch (same version number) gets replaced.
    "$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL"
fi

# --- 7. Verify the torch extension loads, Gloo is compiled in, and a 1-rank
#        allreduce runs (hvd.init() without a launcher gives size 1).
"$PY" - <<'EOF'
import horovod, horovod.torch as hvd, torch
assert hvd.gloo_built(), "horovod built without Gloo"
hvd.init()
t = hvd.allreduce(torch.ones(3), op=hvd.Sum)
assert hvd.size() == 1 and torch.equal(t, torch.ones(3)), (hvd.size(), t)
hvd.shutdown()
print(f"[build_horovod] OK: horovod {horovod.__version__} torch {torch.__version__} "
      f"(gloo={hvd.gloo_built()} mpi={hvd.mpi_built()} nccl={bool(hvd.nccl_built())} ccl={hvd.ccl_built()})")
EOF
# Full build summary. `horovodrun --check-build` probes every framework in
# subprocesses (~10-15 s), so only run it after an install or when asked.
if [[ "$INSTALLED_SHA" != "$WHEEL_SHA" || "${HOROVOD_CHECK_BUILD:-0}" == 1 ]]; then
    HVDRUN="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/horovodrun"
    [[ -x "$HVDRUN" ]] || HVDRUN=horovodrun
    "$HVDRUN" --check-build
fi
