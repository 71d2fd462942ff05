#!/usr/bin/env bash
# The main job on the bundled default: set up the host (idempotent), fetch the default
# kernels pinned in kernels/kernels.lock, boot each under QEMU and check it.
set -euo pipefail
cd "$(dirname "$0")"
./tools/setup.sh
exec .venv/bin/kitl boot "$@"
