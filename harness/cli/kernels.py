"""`kitl kernels list|fetch|info|lock`: the catalog, its lock and the cache."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import TypedDict

from harness.cli.progress import DownloadProgress, stderr
from harness.cli.requests import KernelsRequest
from harness.errors import UsageError
from harness.kernel import debian, kbuild
from harness.kernel.catalog import CatalogEntry
from harness.kernel.lockfile import LockedKernel
from harness.kernel.resolve import Kernels
from harness.outcome import EXIT_OK, EXIT_USAGE


class KernelRow(TypedDict, total=False):
    """A kernel as `kitl kernels list --json` and `info --json` print it."""

    name: str
    default: bool
    description: str
    release: str | None
    fetched: bool
    lock_error: str
    version: str
    suite: str
    digest: str
    btf: bool
    netdevsim: str | None
    config: dict[str, str]
    vmlinuz: str
    packages: list[PackageRow]


class PackageRow(TypedDict):
    role: str
    name: str
    version: str
    url: str
    sha256: str
    size: int


def _kernel_row(ks: Kernels, entry: CatalogEntry) -> KernelRow:
    row: KernelRow = {
        "name": entry.name,
        "default": entry.default,
        "description": entry.description,
    }
    try:
        locked = ks.locked(entry) if entry.debian else None
    except UsageError as exc:
        row.update({"release": None, "fetched": False, "lock_error": str(exc)})
        return row
    if locked is not None:
        row.update(
            {
                "release": locked.release,
                "version": locked.version,
                "suite": locked.suite,
                "digest": locked.digest,
            }
        )
    kernel = ks.installed(entry)
    row["fetched"] = kernel is not None
    if kernel is not None:
        row.update(
            {
                "release": kernel.release,
                "btf": kernel.has_btf_config,
                "netdevsim": str(kernel.netdevsim) if kernel.netdevsim else None,
                "config": kernel.key_flags(),
                "vmlinuz": str(kernel.vmlinuz),
            }
        )
    return row


def list_kernels(request: KernelsRequest) -> int:
    ks = Kernels.open()
    rows = [_kernel_row(ks, e) for e in ks.catalog.entries]
    if request.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'NAME':<13} {'RELEASE':<24} {'FETCHED':<8} {'BTF':<4} {'NSIM':<5} KEY CONFIG")
    for r in rows:
        flags = ""
        if r.get("config"):
            flags = " ".join(
                f"{k.removeprefix('CONFIG_')}={v}"
                for k, v in r["config"].items()
                if k
                in ("CONFIG_BPF_JIT_ALWAYS_ON", "CONFIG_BPF_LSM", "CONFIG_BPF_UNPRIV_DEFAULT_OFF")
            )
        btf = "-" if not r["fetched"] else ("yes" if r.get("btf") else "no")
        nsim = "-" if not r["fetched"] else ("yes" if r.get("netdevsim") else "no")
        name = r["name"] + ("*" if r["default"] else "")
        print(
            f"{name:<13} {r.get('release') or '?':<24} {'yes' if r['fetched'] else 'no':<8} "
            f"{btf:<4} {nsim:<5} {flags}"
        )
    print("(* = default kernel)")
    return EXIT_OK


def fetch(request: KernelsRequest) -> int:
    ks = Kernels.open()
    entries = ks.catalog.select(list(request.names))
    if request.dry_run:
        for entry in entries:
            if entry.build is not None:
                _, pkg = ks.source_package(entry.build.source)
                print(f"{entry.name} source {pkg.url} sha256:{pkg.sha256}")
                for argv in kbuild.commands(entry.build, Path("linux-source")):
                    print(f"{entry.name} build {shlex.join(argv)}")
            if entry.debian is None:
                continue
            for role, pkg in ks.locked(entry).packages:
                print(f"{entry.name} {role} {pkg.url} sha256:{pkg.sha256}")
        return EXIT_OK
    results = []
    with DownloadProgress() as progress:
        for entry in entries:
            started = time.monotonic()
            kernel = ks.get(entry.name, progress)
            results.append(
                {
                    "name": entry.name,
                    "release": kernel.release,
                    "seconds": round(time.monotonic() - started, 2),
                    "netdevsim": kernel.netdevsim is not None,
                }
            )
    if request.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['name']}: {r['release']} ready ({r['seconds']}s)")
    return EXIT_OK


def info(request: KernelsRequest) -> int:
    ks = Kernels.open()
    entry = ks.catalog.get(request.names[0])
    row = _kernel_row(ks, entry)
    if entry.debian is not None and "lock_error" not in row:
        locked = ks.locked(entry)
        row["packages"] = [
            {
                "role": r,
                "name": p.name,
                "version": p.version,
                "url": p.url,
                "sha256": p.sha256,
                "size": p.size,
            }
            for r, p in locked.packages
        ]
    if request.json:
        print(json.dumps(row, indent=2))
    else:
        for key, value in row.items():
            if key == "packages":
                print("packages:")
                for p in row.get("packages", []):
                    print(f"  {p['role']:<15} {p['name']} {p['version']}")
            elif key == "config":
                print("config:")
                for k, v in row.get("config", {}).items():
                    print(f"  {k}={v}")
            else:
                print(f"{key}: {value}")
    return EXIT_OK


def lock(request: KernelsRequest) -> int:
    ks = Kernels.open()
    entries = [e for e in ks.catalog.select(list(request.names) or ks.catalog.names()) if e.debian]
    if not request.update:
        problems = []
        for entry in entries:
            try:
                ks.locked(entry)
            except UsageError as exc:
                problems.append(str(exc))
        for p in problems:
            print(f"kitl: {p}", file=sys.stderr)
        if not problems:
            print(f"{ks.lock.path}: {len(entries)} kernels pinned, consistent with the catalog")
        return EXIT_USAGE if problems else EXIT_OK
    suites = {s for e in entries if e.debian for s in e.debian.suites}
    archive = debian.Archive(ks.store.cache, suites)
    stderr.print(f"kitl: updating the private package index ({', '.join(sorted(suites))})")
    archive.update()
    index = archive.index()
    changes = []
    for entry in entries:
        assert entry.debian is not None
        resolved = debian.resolve_series(entry.debian, index)
        new = LockedKernel.from_resolved(entry, resolved)
        old = ks.lock.kernels.get(entry.name)
        if old is None or old.version != new.version or old.packages != new.packages:
            changes.append((entry.name, old.version if old else None, new.version))
        ks.lock.kernels[entry.name] = new
    ks.lock.write()
    for name, old_v, new_v in changes:
        print(f"{name}: {old_v or '(new)'} -> {new_v}")
    if not changes:
        print("kernels.lock is up to date")
    return EXIT_OK
