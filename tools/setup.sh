#!/usr/bin/env bash
# Idempotent host set-up for kitl: Debian packages, then a virtualenv (.venv) with kitl
# installed in editable mode.  Safe to run again and again; a second run with nothing to do
# takes well under a second.  Needs root (or sudo) only when a Debian package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The packages, and why each, are listed once in harness/data/debian-packages.txt (kitl
# setup and kitl doctor read the same file): every section of it, comments dropped.
mapfile -t packages < <(sed -e 's/#.*//' -e '/^\[/d' harness/data/debian-packages.txt | awk 'NF { print $1 }')
((${#packages[@]})) || { echo "kitl setup: no packages in harness/data/debian-packages.txt" >&2; exit 2; }

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "kitl setup: installing Debian packages: ${missing[*]}" >&2
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "kitl setup: need root to install ${missing[*]}" >&2; exit 2; }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
stamp=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f .venv/.kitl-setup ]] || [[ $(cat .venv/.kitl-setup) != "$stamp" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$stamp" > .venv/.kitl-setup
fi
