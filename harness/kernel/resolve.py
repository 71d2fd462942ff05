"""From a kernel name to a bootable `Kernel`: catalog → lock → cache (fetching on demand)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError
from harness.kernel import kbuild
from harness.kernel.cache import Cache
from harness.kernel.catalog import Catalog, CatalogEntry, load_catalog
from harness.kernel.debian import Package
from harness.kernel.lockfile import LockedKernel, LockFile
from harness.kernel.store import Kernel, KernelStore, Progress, path_kernel

log = logging.getLogger(__name__)


@dataclass
class Kernels:
    catalog: Catalog
    lock: LockFile
    store: KernelStore

    @classmethod
    def open(cls, cache: Cache | None = None, catalog_path: Path | None = None) -> Kernels:
        catalog = load_catalog(catalog_path)
        lock = LockFile.read(catalog.source.with_name("kernels.lock"))
        return cls(catalog, lock, KernelStore(cache or Cache.default()))

    def locked(self, entry: CatalogEntry) -> LockedKernel:
        return self.lock.get(entry)

    def installed(self, entry: CatalogEntry) -> Kernel | None:
        if entry.path is not None:
            return path_kernel(entry)
        if entry.build is not None:
            _, pkg = self.source_package(entry.build.source)
            built = kbuild.installed(kbuild.cache_dir(self.store.cache, entry, pkg.sha256))
            return kbuild.kernel_of(entry, built) if built else None
        return self.store.installed(self.locked(entry))

    def get(self, name: str, progress: Progress | None = None) -> Kernel:
        """The bootable kernel for `name`, fetching it first if the cache lacks it."""
        entry = self.catalog.get(name)
        if entry.path is not None:
            log.info("%s: the local image %s", name, entry.path)
            return path_kernel(entry)
        if entry.build is not None:
            log.info("%s: built from %s's source", name, entry.build.source)
            return self._built(entry, progress)
        kernel = self.store.fetch(self.locked(entry), progress)
        return dataclasses.replace(kernel, cmdline=entry.cmdline)

    def source_package(self, name: str) -> tuple[LockedKernel, Package]:
        """The lock entry and the locked linux-source package of Debian catalog kernel
        `name` (what libbpf and kernel builds are made from)."""
        source = self.catalog.get(name)
        if source.debian is None:
            raise UsageError(
                f"{name} is not a Debian kernel: only those come with a linux-source package"
            )
        locked = self.locked(source)
        pkg = locked.package("source")
        if pkg is None:
            raise UsageError(
                f"kernels.lock pins no linux-source package for {name}",
                hint=f"run `kitl kernels lock --update {name}`",
            )
        return locked, pkg

    def _built(self, entry: CatalogEntry, progress: Progress | None) -> Kernel:
        assert entry.build is not None
        spec = entry.build
        locked, pkg = self.source_package(spec.source)

        def source() -> tuple[Path, Path | None]:
            deb = self.store._download(locked, "source", pkg, progress)
            config = None
            if spec.base == "debian":  # Debian's own config, from the fetched image package
                kernel = self.get(spec.source, progress)
                config = kernel.vmlinuz.with_name(f"config-{kernel.release}")
            return deb, config

        built = kbuild.build(entry, self.store.cache, source, pkg.sha256, progress)
        return kbuild.kernel_of(entry, built)
