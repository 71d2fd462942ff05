"""The host's facts for `kitl doctor`, read without booting anything: commands on PATH and
their versions, /dev/kvm and the cached KVM verdict (harness.vm.accel: the probe is left
to `kitl accel --reprobe`), the cache and its free space, the cached kernels.
"""

from __future__ import annotations

import getpass
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from harness import __version__
from harness.cli.doctor import NEEDS, HostFacts, Need
from harness.cli.packages import Distro
from harness.errors import KitlError
from harness.kernel.cache import Cache
from harness.kernel.resolve import Kernels
from harness.vm import accel

OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))
# sshd and friends live in sbin, which is not on a user's PATH on Debian
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
VERSION_TIMEOUT = 10.0


def distro() -> Distro:
    for path in OS_RELEASE:
        try:
            return Distro.parse(path.read_text(encoding="utf-8"))
        except OSError:
            continue
    return Distro()


def find(command: str) -> str | None:
    """As kitl finds it: beside its interpreter first (a venv's vng), then PATH, then sbin."""
    here = str(Path(sys.executable).parent)
    path = os.pathsep.join([here, os.environ.get("PATH", ""), *SBIN])
    return shutil.which(command, path=path)


def version_line(need: Need) -> str | None:
    """The first line the command prints about itself ("" when it says nothing useful),
    None when it is not installed."""
    found = find(need.command)
    if found is None:
        return None
    try:
        done = subprocess.run(
            [found, *need.version_args],
            capture_output=True,
            text=True,
            check=False,
            timeout=VERSION_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [ln.strip() for ln in (done.stdout + "\n" + done.stderr).splitlines() if ln.strip()]
    return lines[0][:100] if lines else ""


def kvm_device() -> str:
    if not accel.KVM_DEVICE.exists():
        return "missing"
    return "usable" if accel.kvm_usable() else "no access"


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system `path` is (or would be created) on."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def writable(path: Path) -> bool:
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing is not None and os.access(existing, os.W_OK | os.X_OK)


def kernels(cache: Cache) -> tuple[tuple[str, ...], int]:
    """The catalog's kernels that are in the cache, and how many the catalog has."""
    try:
        ks = Kernels.open(cache)
    except KitlError:
        return (), 0
    cached = []
    for entry in ks.catalog.entries:
        try:
            if ks.installed(entry) is not None:
                cached.append(entry.name)
        except KitlError:  # a build: whose source is not pinned, say: not cached
            continue
    return tuple(cached), len(ks.catalog.entries)


def probe(cache: Cache | None = None) -> HostFacts:
    cache = cache or Cache.default()
    verdict = accel.cached_verdict(cache, accel.host_fingerprint())
    cached, total = kernels(cache)
    return HostFacts(
        distro=distro(),
        root=os.geteuid() == 0,
        user=getpass.getuser(),
        tools={n.command: version_line(n) for n in NEEDS},
        kvm_device=kvm_device(),
        accel_verdict=(verdict.accel, verdict.reason) if verdict else None,
        cache_root=cache.root,
        cache_free=free_bytes(cache.root),
        cache_writable=writable(cache.root),
        cached_kernels=cached,
        catalog_kernels=total,
        kitl_version=__version__,
        python=platform.python_version(),
        executable=sys.executable,
    )
