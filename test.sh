#!/usr/bin/env bash
# The test suite: set up the host (idempotent), lint and type-check, then run every test,
# including the ones that boot real Debian kernels under QEMU.
set -euo pipefail
cd "$(dirname "$0")"
./tools/setup.sh
.venv/bin/ruff check harness tests bench examples tools conftest.py
.venv/bin/ruff format --check harness tests bench examples tools conftest.py
.venv/bin/mypy
# -p no:cacheprovider: CI clones are throwaway; exit status 5 (no tests ran) is a failure.
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit $status
