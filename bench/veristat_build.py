"""veristat, built from a catalog kernel's Debian linux-source and cached, for the benches.

From the linux-source-X deb the libbpf build already reads (harness.kernel.libbpf_build),
only the subtrees libbpf needs plus tools/testing/selftests/bpf/veristat.c are unpacked;
libbpf.a is built with the tree's own Makefile and veristat.c compiled against it, as one
file, the way distributions package it.  <cache>/veristat/<deb version>/veristat, next to
its build log; about 20 s the first time (measured: xz reading the tarball, then make).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.kernel.kbuild import run_logged
from harness.kernel.libbpf_build import SUBTREES, default_loader
from harness.kernel.resolve import Kernels

VERISTAT_C = "tools/testing/selftests/bpf/veristat.c"


def veristat_for(kernels: Kernels, name: str | None = None) -> Path:
    """The veristat of catalog kernel `name`'s source (default: the default loader's)."""
    name = name or default_loader(kernels.catalog)
    locked, pkg = kernels.source_package(name)
    cache = kernels.store.cache
    final = cache.root / "veristat" / re.sub(r"[^A-Za-z0-9._+-]", "_", pkg.version)
    binary = final / "veristat"
    if binary.is_file():
        return binary
    deb = kernels.store._download(locked, "source", pkg, None)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
        work, log = Path(tmp), Path(tmp) / "build.log"
        top = f"linux-source-{locked.series}"
        jobs = os.cpu_count() or 2
        run_logged(["dpkg-deb", "-x", str(deb), str(work)], log, subprocess.run)
        tarball = work / "usr" / "src" / f"{top}.tar.xz"
        wanted = [f"{top}/{sub}" for sub in (*SUBTREES, VERISTAT_C)]
        untar = ["tar", "-I", f"xz -T{jobs}", "-xf", str(tarball), "-C", str(work)]
        run_logged([*untar, "--wildcards", *wanted], log, subprocess.run)
        tree, out = work / top, work / "out"
        out.mkdir()
        make = ["make", "-C", str(tree / "tools" / "lib" / "bpf"), f"-j{jobs}"]
        make += [f"OUTPUT={out}/", "CC=gcc", "CROSS_COMPILE=", "EXTRA_CFLAGS=", "ARCH="]
        run_logged([*make, f"{out}/libbpf.a"], log, subprocess.run)
        includes = [f"-I{tree / d}" for d in ("tools/lib", "tools/include/uapi", "tools/include")]
        gcc = ["gcc", "-O2", *includes, "-o", str(out / "veristat"), str(tree / VERISTAT_C)]
        run_logged([*gcc, str(out / "libbpf.a"), "-lelf", "-lz", "-lm"], log, subprocess.run)
        stage = Path(tmp) / "stage"
        stage.mkdir()
        shutil.copy2(out / "veristat", stage / "veristat")
        shutil.copy2(log, stage / "build.log")
        (stage / "source").write_text(f"{deb.name}\n")
        stage.rename(final)
    return binary
