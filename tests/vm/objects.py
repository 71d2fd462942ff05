"""BPF test objects for the VM tests: C sources of tests/data compiled the way kitl compiles
scenario sources (harness.run.compile, cached), against a catalog kernel's vmlinux.h."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from harness.kernel.cache import Cache
from harness.kernel.resolve import Kernels
from harness.run.compile import compile_object, kernel_btf, vmlinux_h


def compiled(sources: Iterable[Path], out: Path, kernel: str = "debian-7.2") -> Path:
    """Each NAME.bpf.c as out/NAME.bpf.o; returns `out`."""
    ks = Kernels.open(Cache.default())
    header = vmlinux_h(kernel_btf(ks.get(kernel)), ks.store.cache)
    out.mkdir(parents=True, exist_ok=True)
    for source in sources:
        built = compile_object(source, header, ks.store.cache)
        shutil.copy(built, out / source.name.replace(".bpf.c", ".bpf.o"))
    return out
