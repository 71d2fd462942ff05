"""libbpf.so built from the `tools/lib/bpf` of a catalog kernel's Debian linux-source.

The libbpf axis of the matrix loads BPF objects with the libbpf a given kernel shipped in
its tree.  Recipe, per locked `linux-source-X` package:
 1. unpack the deb and, from its linux-source-X.tar.xz, only the subtrees the libbpf
    Makefile reads (SUBTREES: a few MB instead of the whole ~1.5 GB tree);
 2. `make -C tools/lib/bpf OUTPUT=<out>/ <out>/libbpf.so` with the host gcc: that target
    is the shared library alone (no static archive, no pkg-config file, no ABI check);
 3. keep the real file behind the libbpf.so.N symlink as <cache>/libbpf/<deb version>/
    libbpf.so.N next to a manifest, all renamed into place at once.
Keyed by the source package's Debian version, so a re-lock to a new build rebuilds and a
second call for the same build only reads the manifest.  Measured on a 2-core host: 10-25 s
a build, about half of it xz reading the whole tarball.  The trees carry libbpf 0.2.0
(5.10, soname libbpf.so.0: builds, but harness.guest.libbpf refuses anything below 1.1), 1.1.0
(6.1), 1.5.0 (6.12) and 1.8.0 (7.2, 7.3).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import BuildError, UsageError
from harness.kernel.cache import Cache, staging_dir
from harness.kernel.catalog import Catalog
from harness.kernel.debian import Package
from harness.kernel.kbuild import run_logged
from harness.kernel.netdevsim import Runner
from harness.kernel.resolve import Kernels
from harness.kernel.store import Progress

logger = logging.getLogger(__name__)

MANIFEST = "kitl-libbpf.json"
# What `make <out>/libbpf.so` reads, relative to linux-source-X/ (measured on 5.10, 6.1,
# 6.12, 7.2, 7.3): the library, the tools/ copies of kernel headers, the tools/ build
# machinery (Makefile.include, Build.include, fixdep.c), and the script that generates
# bpf_helper_defs.h from bpf.h (renamed bpf_helpers_doc.py -> bpf_doc.py in 5.12).
SUBTREES = (
    "tools/lib/bpf/*",
    "tools/include/*",
    "tools/arch/x86/include/*",
    "tools/build/*",
    "tools/scripts/*",
    "scripts/bpf*_doc.py",
)
_NODE = re.compile(r"^LIBBPF_(\d+)\.(\d+)\.(\d+)\s*\{", re.M)


@dataclass(frozen=True)
class BuiltLibbpf:
    path: Path  # the shared object, named by its soname (libbpf.so.0 / libbpf.so.1)
    version: str  # "1.5.0": the newest node of the tree's libbpf.map
    source: str  # the linux-source deb's file name
    build_seconds: float  # 0.0 when it came from the cache


def map_version(text: str) -> str:
    """The libbpf version of a tree: its libbpf.map's newest LIBBPF_x.y.z node, exactly
    what tools/lib/bpf/Makefile names the .so after (libbpf_version.h only exists since
    5.16, and holds no patch level)."""
    nodes = [tuple(int(n) for n in m.groups()) for m in _NODE.finditer(text)]
    if not nodes:
        raise BuildError("libbpf.map has no LIBBPF_x.y.z version node")
    return ".".join(str(n) for n in max(nodes))


def cache_dir(cache: Cache, deb_version: str) -> Path:
    """Where the libbpf of one linux-source build lives ("~" and ":" made path-safe)."""
    return cache.root / "libbpf" / re.sub(r"[^A-Za-z0-9._+-]", "_", deb_version)


def make_argv(tree: Path, out: Path, jobs: int) -> list[str]:
    """The libbpf.so build.  The empty variables keep the caller's environment out:
    EXTRA_CFLAGS would replace the Makefile's -g -O2, CROSS_COMPILE/ARCH would pick
    another compiler or arch headers."""
    return [
        "make",
        "-C",
        str(tree / "tools" / "lib" / "bpf"),
        f"-j{jobs}",
        f"OUTPUT={out}/",
        "CC=gcc",
        "CROSS_COMPILE=",
        "EXTRA_CFLAGS=",
        "ARCH=",
        f"{out}/libbpf.so",
    ]


def untar_argv(tarball: Path, dest: Path, top: str, jobs: int) -> list[str]:
    # Debian's tarballs are multi-block xz: threads decompress blocks in parallel.
    return [
        "tar",
        "-I",
        f"xz -T{jobs}",
        "-xf",
        str(tarball),
        "-C",
        str(dest),
        "--wildcards",
        *(f"{top}/{sub}" for sub in SUBTREES),
    ]


SYSTEM = "system"  # the host's libbpf.so.1, found by the guest's dynamic loader
# The default loader, as cells record it: the libbpf of the newest Debian kernel in the
# catalog (so bundled scenarios can use current section names).  "default" on the command
# line and in scenarios; "" in cells and ids, so the common case carries no suffix.
DEFAULT = ""
DEFAULT_NAME = "default"


def canonical(name: str) -> str:
    """A loader name as cells record it ("default" -> "")."""
    return DEFAULT if name == DEFAULT_NAME else name


def spelled(name: str) -> str:
    """A loader name as the command line spells it ("" -> "default")."""
    return DEFAULT_NAME if name == DEFAULT else name


def default_loader(catalog: Catalog) -> str:
    """debian-X of the catalog's newest Debian series: the libbpf the default stands for."""
    debian = [e for e in catalog.entries if e.debian is not None]
    if not debian:
        raise UsageError("the catalog has no Debian kernel to take the default libbpf from")
    newest = max(debian, key=lambda e: _series_key(e.debian.series if e.debian else ""))
    return newest.name


def _series_key(series: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", series))


def resolved_name(name: str, catalog: Catalog) -> str:
    """The name a loader is built or found by: the default's debian-X, else itself."""
    return default_loader(catalog) if canonical(name) == DEFAULT else name


def loader_path(name: str, kernels: Kernels) -> str | None:
    """The libbpf.so a loader name stands for: None for the system's, the built one for
    debian-X (and for the default), else a path to an existing file."""
    name = resolved_name(name, kernels.catalog)
    if name == SYSTEM:
        return None
    if name.startswith("debian-"):
        return str(libbpf_for(name, kernels).path)
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"--libbpf {name}: no such file (a libbpf.so, system or debian-X)")
    return str(path.resolve())


def libbpf_for(
    name: str, kernels: Kernels, progress: Progress | None = None, run: Runner = subprocess.run
) -> BuiltLibbpf:
    """The libbpf of catalog kernel `name` (debian-X), built once and cached."""
    locked, pkg = kernels.source_package(name)
    cache = kernels.store.cache
    final = cache_dir(cache, pkg.version)
    ready = _installed(final, pkg)
    if ready is not None:
        logger.info("libbpf of %s: built before (%s)", name, ready.path)
        return ready
    logger.info("libbpf of %s: building it from %s's source %s", name, name, pkg.version)
    with cache.lock(f"libbpf-{pkg.version}"):
        ready = _installed(final, pkg)  # another process may have built it meanwhile
        if ready is not None:
            return ready
        # Leftovers of a killed build of this version only: other versions' staging
        # directories may belong to builds running right now under their own locks.
        for stale in final.parent.glob(f".{final.name}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        # The store's download: same lock, checksum and partial-file handling as kernels.
        deb = kernels.store._download(locked, "source", pkg, progress)
        if progress:
            progress(f"{name}: building libbpf", 0, 0)
        started = time.monotonic()
        log = final.with_name(final.name + ".log")  # outside the stage: survives a failure
        log.unlink(missing_ok=True)
        with staging_dir(final) as stage:
            built, version = _build(deb, locked.series, stage / "build", log, run)
            so = stage / f"libbpf.so.{version.split('.')[0]}"
            shutil.copy2(built.resolve(), so)  # the file behind the libbpf.so symlinks
            shutil.rmtree(stage / "build")
            log.rename(stage / "build.log")
            seconds = time.monotonic() - started
            manifest = {
                "source": deb.name,
                "deb_version": pkg.version,
                "sha256": pkg.sha256,
                "version": version,
                "so": so.name,
                "build_seconds": round(seconds, 1),
            }
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return BuiltLibbpf(final / so.name, version, deb.name, seconds)


def _installed(final: Path, pkg: Package) -> BuiltLibbpf | None:
    try:
        data = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    so = final / str(data.get("so", ""))
    if data.get("sha256") != pkg.sha256 or not so.is_file():
        return None  # another build of the same version string, or damaged: rebuild
    return BuiltLibbpf(so, str(data["version"]), str(data["source"]), 0.0)


def _build(deb: Path, series: str, work: Path, log: Path, run: Runner) -> tuple[Path, str]:
    """Unpack the needed part of the source and build; (built libbpf.so, version)."""
    jobs = os.cpu_count() or 2
    work.mkdir(parents=True)
    top = f"linux-source-{series}"
    tarball = work / "usr" / "src" / f"{top}.tar.xz"
    run_logged(["dpkg-deb", "-x", str(deb), str(work)], log, run)
    run_logged(untar_argv(tarball, work, top, jobs), log, run)
    tarball.unlink()  # 150 MB, not needed past this point
    tree = work / top
    version = map_version((tree / "tools" / "lib" / "bpf" / "libbpf.map").read_text())
    out = work / "out"
    out.mkdir()
    run_logged(make_argv(tree, out, jobs), log, run)
    built = out / "libbpf.so"
    if not built.exists():
        raise BuildError(f"libbpf from {deb.name}: make produced no {built.name}")
    return built, version
