#!/usr/bin/env bash
# The main job on the bundled default: set up the host (idempotent), then run the bundled
# scenarios on the default kernels pinned in kernels/kernels.lock (fetched on first use),
# one boot per kernel, as many guests at a time as the host holds (-n auto).  Extra arguments
# go to `kitl run` (e.g. -n 1, --kernels debian-6.1).
set -euo pipefail
cd "$(dirname "$0")"
./tools/setup.sh
exec .venv/bin/kitl run "$@"
