"""CO-RE objects from C: vmlinux.h from a cached kernel's BTF, clang, a content-addressed cache.

The kernel image in the cache is a compressed bzImage; its BTF lives in the .BTF section
of the vmlinux inside.  We decompress the payload (xz or zstd on Debian), cut out .BTF
once per kernel (kept as `vmlinux.btf` next to the kernel: also the file external-BTF
users need), and let bpftool write vmlinux.h from it.  Objects are cached by a hash of
everything that goes into them, so an unchanged scenario never recompiles.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from harness.errors import BuildError, MissingToolError
from harness.kernel.cache import Cache
from harness.kernel.store import Kernel
from harness.results.rundir import safe_name

_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b\x08"  # gzip, deflate
BPF_CFLAGS = ("-target", "bpf", "-g", "-O2", "-D__TARGET_ARCH_x86", "-Wall", "-Wno-unused-function")


def _partial(out: Path) -> Path:
    """Where `out` is written before it is renamed into place: one name per process, as
    several processes (pytest-xdist workers) may build the same file at once."""
    return out.with_name(f".{out.name}.{os.getpid()}.partial")


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed vmlinux ELF inside a bzImage (xz or zstd payload: Debian's; gzip:
    the default of the small config kitl builds kernels with)."""
    for magic in (_XZ_MAGIC, _ZSTD_MAGIC, _GZIP_MAGIC):
        start = bzimage.find(magic)
        while start != -1:
            elf = _try_decompress(bzimage[start:], magic)
            if elf is not None and elf[:4] == b"\x7fELF":
                return elf
            start = bzimage.find(magic, start + 1)
    raise BuildError("no xz, zstd or gzip compressed vmlinux found in the kernel image")


def _try_decompress(data: bytes, magic: bytes) -> bytes | None:
    if magic == _GZIP_MAGIC:
        try:  # a decompressobj stops at the end of the member: trailing bytes are fine
            return zlib.decompressobj(wbits=31).decompress(data)
        except zlib.error:
            return None
    if magic == _XZ_MAGIC:
        try:
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
        except lzma.LZMAError:
            return None
    if not shutil.which("zstd"):
        raise MissingToolError("zstd", "zstd")
    proc = subprocess.run(["zstd", "-d", "-c", "-q"], input=data, capture_output=True, check=False)
    # zstd complains about the trailing bytes after the frame but still writes the vmlinux
    return proc.stdout or None


def kernel_btf(kernel: Kernel) -> Path:
    """vmlinux.btf of a cached kernel, extracted on first use."""
    out = kernel.vmlinuz.parent.parent.parent / "vmlinux.btf"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        elf = Path(tmp) / "vmlinux"
        elf.write_bytes(extract_vmlinux(kernel.vmlinuz.read_bytes()))
        partial = _partial(out)
        proc = subprocess.run(
            ["objcopy", "-O", "binary", "--only-section=.BTF", str(elf), str(partial)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not partial.exists() or partial.stat().st_size == 0:
            partial.unlink(missing_ok=True)
            raise BuildError(f"{kernel.name}: no .BTF section in vmlinux ({proc.stderr.strip()})")
        partial.replace(out)
    return out


def vmlinux_h(btf: Path, cache: Cache) -> Path:
    """vmlinux.h for a BTF file, cached by the BTF's hash."""
    digest = hashlib.sha256(btf.read_bytes()).hexdigest()[:16]
    out = cache.root / "include" / digest / "vmlinux.h"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(btf), "format", "c"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"bpftool could not dump {btf}: {proc.stderr.strip()[-300:]}")
    partial = _partial(out)
    partial.write_text(proc.stdout)
    partial.replace(out)
    return out


def _clang_version() -> str:
    proc = subprocess.run(["clang", "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()[0] if proc.stdout else "unknown"


def compile_object(source: Path, header: Path, cache: Cache, cflags: Sequence[str] = ()) -> Path:
    """Compile `source` (a .bpf.c) with vmlinux.h `header`; returns the cached object."""
    if not shutil.which("clang"):
        raise MissingToolError("clang", "clang")
    hasher = hashlib.sha256()
    for part in (
        source.read_bytes(),
        header.read_bytes(),
        _clang_version().encode(),
        "\0".join([*BPF_CFLAGS, *cflags]).encode(),
    ):
        hasher.update(part)
        hasher.update(b"\0")
    for local in sorted(source.parent.glob("*.h")):  # local headers the source may include
        hasher.update(local.name.encode() + local.read_bytes())
    # safe_name: a long or odd source name must not make an unwritable cache file name
    out = cache.root / "objects" / f"{safe_name(source.stem)}-{hasher.hexdigest()[:16]}.o"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(out)
    argv = [
        "clang",
        *BPF_CFLAGS,
        *cflags,
        "-I",
        str(header.parent),
        "-I",
        str(source.parent),
        "-c",
        str(source),
        "-o",
        str(partial),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip())
        raise BuildError(f"{source}: clang failed: {first}", hint=" ".join(argv))
    partial.replace(out)
    return out
