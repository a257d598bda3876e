#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds the debug preset and
# runs every test, then builds the ASan+UBSan preset and runs every test again.
# Usage: tests/run.sh [--quick]   (--quick: debug build only)
set -euo pipefail
cd "$(dirname "$0")/.."

tests/tools/install-deps.sh

presets=(debug asan)
[ "${1:-}" = "--quick" ] && presets=(debug)

for p in "${presets[@]}"; do
  echo "==== preset $p: configure and build"
  cmake --preset "$p" >/dev/null
  cmake --build --preset "$p" -j "$(nproc)"
  echo "==== preset $p: ctest"
  ctest --preset "$p"
done
echo "==== all presets passed: ${presets[*]}"
