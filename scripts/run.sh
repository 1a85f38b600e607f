#!/usr/bin/env bash
# The main job: installs what is missing, builds distmla_decode and runs one decode step,
# checked against the CPU reference. Arguments go to distmla_decode (see --help);
# with no GPU it runs the CPU reference backend on a small default problem.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$DISTMLA_ROOT/scripts/install_deps.sh"
distmla_configure
cmake --build "$DISTMLA_BUILD" -j "$DISTMLA_JOBS" --target distmla_decode >/dev/null
exec "$DISTMLA_BUILD/examples/decode/distmla_decode" "$@"
