#!/usr/bin/env bash
# Builds everything and runs every test suite through ctest (unit, gpu, mpi, install).
# GPU tests skip cleanly on a machine with no GPU.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$DISTMLA_ROOT/scripts/install_deps.sh"
distmla_configure
cmake --build "$DISTMLA_BUILD" -j "$DISTMLA_JOBS"
ctest --test-dir "$DISTMLA_BUILD" --output-on-failure "$@"
