"""Kernels in the cache: fetch what kernels.lock pins, unpack it, describe it.

A ready kernel is a directory `<cache>/kernels/<name>_<version>/` holding
  root/boot/{vmlinuz,config,System.map}-<release>
  root/lib/modules/<release>/        (depmod run; netdevsim.ko added under extra/)
  kitl-kernel.json                   (the manifest; written last, so its presence means ready)
It is built in a staging directory and renamed into place, under a per-kernel file lock,
so two processes fetching the same kernel download it once and a killed fetch leaves
nothing that looks ready.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import FetchError, UsageError, VanishedPackageError
from harness.kernel import debian, netdevsim
from harness.kernel.cache import Cache, remove_stale_partials, staging_dir
from harness.kernel.catalog import CatalogEntry
from harness.kernel.lockfile import LockedKernel

log = logging.getLogger(__name__)

MANIFEST = "kitl-kernel.json"
KEY_CONFIGS = (
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_BPF_JIT_ALWAYS_ON",
    "CONFIG_BPF_LSM",
    "CONFIG_BPF_UNPRIV_DEFAULT_OFF",
    "CONFIG_NET_CLS_BPF",
    "CONFIG_VETH",
    "CONFIG_NETDEVSIM",
    "CONFIG_FUNCTION_ERROR_INJECTION",
    "CONFIG_KPROBE_EVENTS",
)

Progress = Callable[[str, int, int], None]  # (label, done bytes, total bytes)


@dataclass(frozen=True)
class Kernel:
    """A bootable kernel: what the VM layer needs, nothing about where it came from."""

    name: str
    release: str
    vmlinuz: Path
    modules: Path | None
    config: dict[str, str] = field(default_factory=dict)
    version: str = ""
    digest: str = ""  # sha256 of the image package (Debian) or of the bzImage (path:)
    netdevsim: Path | None = None
    cmdline: tuple[str, ...] = ()
    # a kernel built without BTF: its BTF generated outside the image (pahole), for
    # scenarios that hand it to libbpf (`load: {btf: external}`)
    external_btf: Path | None = None

    @property
    def has_btf_config(self) -> bool:
        return self.config.get("CONFIG_DEBUG_INFO_BTF") == "y"

    def key_flags(self) -> dict[str, str]:
        return {k: self.config.get(k, "n") for k in KEY_CONFIGS}


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_X=value lines of a kernel .config; '# CONFIG_X is not set' becomes 'n'."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value.strip().strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[2:].split(" ")[0]] = "n"
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class KernelStore:
    """Fetches locked Debian kernels into the cache and hands out `Kernel`s."""

    def __init__(self, cache: Cache, run: debian.Runner = subprocess.run) -> None:
        self.cache = cache
        self._run = run

    # -- reading -------------------------------------------------------------------------
    def installed(self, locked: LockedKernel) -> Kernel | None:
        """The ready kernel for this lock entry, or None when it must be (re)fetched."""
        kdir = self.cache.kernel_dir(locked.name, locked.version)
        manifest = kdir / MANIFEST
        if not manifest.is_file():
            return None
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        if data.get("digest") != locked.digest or data.get("release") != locked.release:
            return None
        try:
            kernel = self._from_manifest(kdir, data)
        except (OSError, KeyError, UnicodeDecodeError):
            return None  # a manifest with missing fields, or an unreadable config: refetch
        if not _intact(kernel, data):
            return None  # damaged after the fact (files deleted or cut short): refetch
        return kernel

    def _from_manifest(self, kdir: Path, data: dict[str, object]) -> Kernel:
        release = str(data["release"])
        root = kdir / "root"
        nsim = data.get("netdevsim")
        config_path = root / "boot" / f"config-{release}"
        config = (
            parse_config(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        )
        return Kernel(
            name=str(data["name"]),
            release=release,
            vmlinuz=root / "boot" / f"vmlinuz-{release}",
            modules=root / "lib" / "modules" / release,
            config=config,
            version=str(data["version"]),
            digest=str(data["digest"]),
            netdevsim=root / str(nsim) if nsim else None,
        )

    # -- fetching ------------------------------------------------------------------------
    def fetch(self, locked: LockedKernel, progress: Progress | None = None) -> Kernel:
        ready = self.installed(locked)
        if ready is not None:
            where = self.cache.kernel_dir(locked.name, locked.version)
            log.info("%s: in the cache (%s)", locked.name, where)
            return ready
        log.info("%s: not in the cache, fetching %s", locked.name, locked.version)
        with self.cache.lock(f"kernel-{locked.name}-{locked.version}"):
            ready = self.installed(locked)  # another process may have finished meanwhile
            if ready is not None:
                return ready
            final = self.cache.kernel_dir(locked.name, locked.version)
            # only this kernel's leftovers: another kernel's may be a live fetch
            remove_stale_partials(self.cache.kernels, final.name)
            started = time.monotonic()
            debs = {
                role: self._download(locked, role, pkg, progress) for role, pkg in locked.packages
            }
            with staging_dir(final) as stage:
                self._unpack(locked, debs, stage, progress)
                nsim = netdevsim.build_and_install(
                    release=locked.release,
                    series=locked.series,
                    root=stage / "root",
                    headers_debs=[
                        debs[r] for r in ("headers", "headers-common", "kbuild") if r in debs
                    ],
                    source_deb=debs["source"],
                    workdir=stage / "build",
                    run=self._run,
                    progress=progress,
                )
                self._depmod(stage / "root", locked.release)
                shutil.rmtree(stage / "build", ignore_errors=True)
                vmlinuz = stage / "root" / "boot" / f"vmlinuz-{locked.release}"
                manifest = {
                    "name": locked.name,
                    "release": locked.release,
                    "version": locked.version,
                    "digest": locked.digest,
                    "suite": locked.suite,
                    "packages": [
                        {"role": r, "name": p.name, "version": p.version, "sha256": p.sha256}
                        for r, p in locked.packages
                    ],
                    "netdevsim": str(nsim.relative_to(stage / "root")) if nsim else None,
                    "vmlinuz_size": vmlinuz.stat().st_size,  # a later cut is refetched
                    "fetch_seconds": round(time.monotonic() - started, 1),
                }
                (stage / MANIFEST).write_text(
                    json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
                )
            kernel = self.installed(locked)
            if kernel is None:
                raise FetchError(f"{locked.name}: unpacked kernel is incomplete in {final}")
            return kernel

    def _download(
        self, locked: LockedKernel, role: str, pkg: debian.Package, progress: Progress | None
    ) -> Path:
        dest_dir = self.cache.downloads
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / Path(pkg.filename).name
        with self.cache.lock(f"deb-{dest.name}"):
            if dest.exists():
                if dest.stat().st_size == pkg.size and sha256_file(dest) == pkg.sha256:
                    return dest
                dest.unlink()  # truncated or corrupt: fetch again
            partial = dest.with_name(dest.name + ".partial")
            partial.unlink(missing_ok=True)
            if progress:
                progress(f"{locked.name}: {pkg.name}", 0, pkg.size)
            try:
                with _watch_size(partial, pkg.size, f"{locked.name}: {pkg.name}", progress):
                    debian.download(pkg.url, pkg.sha256, partial, run=self._run)
            except VanishedPackageError:
                raise VanishedPackageError(
                    f"{pkg.name} {pkg.version} ({role} of {locked.name}, pinned in kernels.lock) "
                    "is no longer in the Debian archive",
                    hint=f"run `kitl kernels lock --update {locked.name}` to pin the current build",
                ) from None
            partial.rename(dest)
            return dest

    def _unpack(
        self,
        locked: LockedKernel,
        debs: dict[str, Path],
        stage: Path,
        progress: Progress | None,
    ) -> None:
        root = stage / "root"
        root.mkdir()
        for role in ("image", "modules", "base"):
            if role in debs:
                if progress:
                    progress(f"{locked.name}: unpacking {role}", 0, 0)
                self._dpkg_extract(debs[role], root)
        _normalise_layout(root, locked.release)
        boot = root / "boot"
        for item in ("vmlinuz", "config", "System.map"):
            if not (boot / f"{item}-{locked.release}").is_file():
                raise FetchError(
                    f"{locked.name}: {item}-{locked.release} missing from the packages"
                )

    def _dpkg_extract(self, deb: Path, dest: Path) -> None:
        proc = self._run(
            ["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            deb.unlink(missing_ok=True)  # most likely truncated: the next fetch downloads again
            raise FetchError(f"cannot unpack {deb.name}: {proc.stderr.strip()[-300:]}")

    def _depmod(self, root: Path, release: str) -> None:
        proc = self._run(
            ["depmod", "-b", str(root), release], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise FetchError(f"depmod failed for {release}: {proc.stderr.strip()[-300:]}")


def _intact(kernel: Kernel, manifest: dict[str, object]) -> bool:
    """Whether the files a ready kernel needs are all still there (cheap: stats only)."""
    assert kernel.modules is not None  # a cached kernel always has its modules
    boot = kernel.vmlinuz.parent
    needed = [kernel.vmlinuz, boot / f"config-{kernel.release}"]
    if kernel.netdevsim is not None:
        needed.append(kernel.netdevsim)
    if not all(p.is_file() for p in needed) or not kernel.modules.is_dir():
        return False
    size = manifest.get("vmlinuz_size")  # absent in manifests of older kitl versions
    return size is None or kernel.vmlinuz.stat().st_size == size


def _normalise_layout(root: Path, release: str) -> None:
    """Bring merged-/usr packages (usr/lib/modules, usr/lib/linux) to boot/ + lib/modules/,
    the layout virtme-ng looks for next to a kernel image."""
    usr_mods = root / "usr" / "lib" / "modules" / release
    mods = root / "lib" / "modules" / release
    if usr_mods.is_dir() and not mods.exists():
        mods.parent.mkdir(parents=True, exist_ok=True)
        usr_mods.rename(mods)
    boot = root / "boot"
    boot.mkdir(exist_ok=True)
    for item in ("vmlinuz", "config", "System.map"):
        target = boot / f"{item}-{release}"
        if target.exists():
            continue
        for candidate in (
            mods / item,
            mods / f"{item}-{release}",
            root / "usr" / "lib" / "linux" / release / item,
            root / "usr" / "lib" / "linux" / f"{item}-{release}",
            root / "usr" / "boot" / f"{item}-{release}",
        ):
            if candidate.is_file():
                shutil.copy2(candidate, target)
                break


class _watch_size:
    """Report a growing file's size to `progress` from a background thread."""

    def __init__(self, path: Path, total: int, label: str, progress: Progress | None) -> None:
        self.path, self.total, self.label, self.progress = path, total, label, progress
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(0.25):
            try:
                size = self.path.stat().st_size
            except OSError:
                size = 0
            if self.progress:
                self.progress(self.label, size, self.total)

    def __enter__(self) -> None:
        if self.progress:
            self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        if self.progress:
            self.progress(self.label, self.total, self.total)


def path_kernel(entry: CatalogEntry) -> Kernel:
    """A `path:` catalog entry as a bootable kernel (release read from the image)."""
    assert entry.path is not None
    spec = entry.path
    if not spec.vmlinuz.is_file():
        raise UsageError(f"{entry.name}: kernel image {spec.vmlinuz} does not exist")
    release = image_release(spec.vmlinuz)
    modules = spec.modules
    if modules is not None and not modules.is_dir():
        raise UsageError(f"{entry.name}: modules directory {modules} does not exist")
    config: dict[str, str] = {}
    if spec.config is not None:
        config = parse_config(spec.config.read_text(encoding="utf-8"))
    return Kernel(
        name=entry.name,
        release=release,
        vmlinuz=spec.vmlinuz,
        modules=modules,
        config=config,
        digest=sha256_file(spec.vmlinuz),
        cmdline=entry.cmdline,
    )


def image_release(vmlinuz: Path) -> str:
    """The release string a bzImage carries (its header points at the version text)."""
    data = vmlinuz.read_bytes()
    if len(data) > 0x210 and data[0x202:0x206] == b"HdrS":
        offset = int.from_bytes(data[0x20E:0x210], "little") + 0x200
        text = data[offset : offset + 256].split(b"\0")[0].decode("ascii", "replace")
        if text:
            return text.split(" ")[0]
    raise UsageError(f"{vmlinuz}: not an x86 bzImage (no kernel version in its header)")
