"""From a kernel name to a bootable `Kernel`: catalog → lock → cache (fetching on demand)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from harness.cache import Cache
from harness.catalog import Catalog, CatalogEntry, load_catalog
from harness.kernel import Kernel, KernelStore, Progress, path_kernel
from harness.lockfile import LockedKernel, LockFile


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
        return self.store.installed(self.locked(entry))

    def get(self, name: str, progress: Progress | None = None) -> Kernel:
        """The bootable kernel for `name`, fetching it first if the cache lacks it."""
        entry = self.catalog.get(name)
        if entry.path is not None:
            return path_kernel(entry)
        kernel = self.store.fetch(self.locked(entry), progress)
        return dataclasses.replace(kernel, cmdline=entry.cmdline)
