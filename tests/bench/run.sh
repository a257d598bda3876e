#!/usr/bin/env bash
# The benchmark (issue 7), one command on a fresh Debian 12 machine:
#   tests/bench/run.sh            full run (about 10 minutes)
#   tests/bench/run.sh --quick    smoke run (1-2 minutes)
# Installs what it needs (tests/tools/install-deps.sh, then nginx-light and
# gnuplot-nox; pgbench comes with the postgresql-15 package), builds the
# release preset (build/release) and runs tests/bench/bench.py, which prints
# the table and writes tests/bench/results/<timestamp>.json and .png.
# Durations and sizes: the IDV_BENCH_* variables listed in README.md.
#
# Options used by the ctest entry `bench.quick`: --ctest (skip, exit 77, unless
# IDV_BENCH=1), --no-build with --bin and --loadgen (binaries of that build).
set -euo pipefail
cd "$(dirname "$0")/../.."

quick=()
build=1
ctest=0
bin=build/release/daemon/idv-callbackd
loadgen=build/release/tests/bench/loadgen
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=(--quick) ;;
    --no-build) build=0 ;;
    --ctest) ctest=1 ;;
    --bin) bin="$2"; shift ;;
    --loadgen) loadgen="$2"; shift ;;
    *) echo "usage: tests/bench/run.sh [--quick]" >&2; exit 2 ;;
  esac
  shift
done

if [ $ctest -eq 1 ] && [ "${IDV_BENCH:-}" != 1 ]; then
  echo "bench: skipped (set IDV_BENCH=1 to run the benchmark from ctest)"
  exit 77
fi

SUDO=()
[ "$(id -u)" -ne 0 ] && SUDO=(sudo)

tests/tools/install-deps.sh
extra=()
for p in nginx-light gnuplot-nox util-linux; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || extra+=("$p")
done
if [ ${#extra[@]} -gt 0 ]; then
  echo "bench: installing ${extra[*]}"
  # The nginx service must not start (and take port 80): the benchmark runs
  # its own nginx. policy-rc.d is Debian's switch for that, removed after.
  policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
    policy=1
  fi
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends \
    "${extra[@]}" || { [ $policy -eq 1 ] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ $policy -eq 1 ] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
fi

if [ $build -eq 1 ]; then
  echo "==== bench: building the release preset"
  cmake --preset release >/dev/null
  cmake --build --preset release -j "$(nproc)" --target idv-callbackd loadgen
fi

# Sockets for the idle-connection workload: raise the soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec python3 tests/bench/bench.py --bin "$bin" --loadgen "$loadgen" "${quick[@]}"
