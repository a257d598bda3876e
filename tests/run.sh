#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds the debug preset and
# runs every test but the `system` label (Patroni, HAProxy, Prometheus, npm:
# those run once, in the next pass), then builds the ASan+UBSan preset and runs
# every test,
# then builds the libFuzzer targets (fuzz preset, clang) and runs each for
# IDV_FUZZ_SECONDS (60 s by default), the three at once.
# Usage: tests/run.sh [--quick]   (--quick: debug build only)
set -euo pipefail
cd "$(dirname "$0")/.."

tests/tools/install-deps.sh

presets=(debug asan fuzz)
[ "${1:-}" = "--quick" ] && presets=(debug)

for p in "${presets[@]}"; do
  start=$SECONDS
  echo "==== preset $p: configure and build"
  cmake --preset "$p" >/dev/null
  cmake --build --preset "$p" -j "$(nproc)"
  echo "==== preset $p: ctest"
  ctest --preset "$p"
  echo "==== preset $p: passed in $((SECONDS - start)) s"
done
echo "==== all presets passed: ${presets[*]}"
