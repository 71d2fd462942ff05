#!/usr/bin/env bash
# Idempotent host set-up for kitl: Debian packages, then a virtualenv (.venv) with kitl
# installed in editable mode.  Safe to run again and again; a second run with nothing to do
# takes well under a second.  Needs root (or sudo) only when a Debian package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Why each package: qemu-system-x86 boots the guests; clang/llvm compile BPF objects;
# bpftool, libbpf-dev load and inspect them; iproute2, ethtool, kmod, udev run the guest
# topology; openssh-server is started inside the guest (the guest sees the host's root);
# build-essential, libelf-dev, bc, flex, bison build netdevsim out of tree and, with
# libssl-dev, dwarves (pahole: BTF) and ccache (variants share their objects), the kernels
# kitl builds from source; dpkg-dev's dpkg-deb, xz-utils and zstd unpack kernel packages;
# busybox-static lets virtme-ng build an initramfs; file tells virtme-ng a kernel's
# version; python3-venv makes the virtualenv; chromium renders the HTML report in its test;
# xdp-tools (with libxdp1) ships BPF objects nobody here wrote, which the VM tests verify.
packages=(
  qemu-system-x86 clang llvm bpftool libbpf-dev iproute2 ethtool kmod udev
  openssh-server openssh-client build-essential libelf-dev libssl-dev bc flex bison dwarves
  ccache xz-utils zstd busybox-static file binutils ca-certificates debian-archive-keyring
  python3 python3-venv python3-dev iputils-ping chromium xdp-tools
)

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
