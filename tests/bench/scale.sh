#!/usr/bin/env bash
# A year of history at scale (issue 17), one command on a Debian 12 machine:
#   tests/bench/scale.sh              empty vs 20 M callback_events / 10 M
#                                     transactions (COPY), every path timed,
#                                     with the EXPLAIN plans (30-60 minutes)
#   tests/bench/scale.sh --quick      the same at 200,000 / 100,000 (minutes)
#   tests/bench/scale.sh --migration  migrate an unpartitioned installation of
#                                     10 M callback_events under callbacks
#                                     through the daemon of the version before
#                                     (built from git ref $IDV_SCALE_OLD_REF,
#                                     default main)
# Installs what it needs (tests/tools/install-deps.sh), builds the release
# preset and runs tests/bench/scale.py, which prints the table and writes
# tests/bench/results/scale-<timestamp>.json and .txt (with every plan).
# Needs about 25 GB of disk for the full run (IDV_SCALE_DIR: where; default a
# temporary directory).
set -euo pipefail
cd "$(dirname "$0")/../.."

args=()
mode=full
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --migration) mode=migration ;;
    *) args+=("$1") ;;
  esac
  shift
done

tests/tools/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target idv-callbackd loadgen
bin=build/release/daemon/idv-callbackd
[ -n "${IDV_SCALE_DIR:-}" ] && args+=(--dir "$IDV_SCALE_DIR")

case $mode in
  quick)
    exec python3 tests/bench/scale.py --bin "$bin" --transactions 100000 \
      --callback-events 200000 --samples 300 --audit-samples 10 "${args[@]}" ;;
  full)
    exec python3 tests/bench/scale.py --bin "$bin" "${args[@]}" ;;
  migration)
    ref=${IDV_SCALE_OLD_REF:-main}
    old=build/scale-old
    echo "==== scale: building the daemon of $ref (the version before) in $old"
    rm -rf "$old" && mkdir -p "$old/src"
    git archive "$ref" | tar -x -C "$old/src"
    cmake -S "$old/src" -B "$old/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$old/build" -j "$(nproc)" --target idv-callbackd
    exec python3 tests/bench/scale.py --migration --bin "$bin" --old-bin "$old/build/daemon/idv-callbackd" \
      --loadgen build/release/tests/bench/loadgen --callback-events 10000000 "${args[@]}" ;;
esac
