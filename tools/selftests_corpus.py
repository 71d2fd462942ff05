#!/usr/bin/env python3
"""Build the kernel's annotated BPF selftest programs, for `kitl verify --annotations`.

    tools/selftests_corpus.py OUT_DIR [--kernel debian-7.3] [--only GLOB] [-j N]

From the linux-source package of a catalog kernel (default: the newest Debian one), the
programs of tools/testing/selftests/bpf/progs that carry test_loader annotations
(`__success`, `__failure`, `__msg`...) are compiled the way the selftests' Makefile does
(clang -O2 --target=bpf -mcpu=v3, the selftests' and libbpf's headers, a vmlinux.h of
that kernel's BTF written by the source's own bpftool, with its kfunc prototypes) into
OUT_DIR/<name>.bpf.o.  Programs Debian's clang cannot compile
(newer instructions in inline asm, newer builtins) are listed in OUT_DIR/build.json with
clang's first error, and counted on the way out.  Then:

    kitl verify --annotations OUT_DIR --kernels debian-7.3,debian-7.2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from harness.cli.progress import DownloadProgress
from harness.kernel.cache import Cache
from harness.kernel.libbpf_build import default_loader
from harness.kernel.resolve import Kernels
from harness.run.compile import kernel_btf

# tools/ builds bpftool too: its vmlinux.h carries the kernel's kfunc prototypes, which the
# selftests call without declaring them (Debian's bpftool is too old to write them)
SUBTREES = ("tools", "include/uapi", "include/linux/kconfig.h", "scripts/bpf_doc.py")
LIBBPF_HEADERS = ("bpf_helpers.h", "bpf_tracing.h", "bpf_core_read.h", "bpf_endian.h",
                  "usdt.bpf.h")  # fmt: skip
ANNOTATED = re.compile(r"\b__(?:success|failure|msg|retval)(?:_unpriv)?\b")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--kernel", default=None, help="a Debian catalog kernel (default: newest)")
    p.add_argument("--only", default="*", metavar="GLOB", help="program files, e.g. verifier_*")
    p.add_argument("-j", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    ks = Kernels.open(Cache.default())
    name = args.kernel or default_loader(ks.catalog)
    with DownloadProgress() as progress, tempfile.TemporaryDirectory(prefix="kitl-st-") as tmp:
        locked, pkg = ks.source_package(name)
        deb = ks.store._download(locked, "source", pkg, progress)
        btf = kernel_btf(ks.get(name, progress))
        tree = unpack(deb, locked.series, Path(tmp))
        include = headers(tree, vmlinux_with_kfuncs(tree, btf), Path(tmp) / "include")
        sources = [
            f
            for f in sorted((tree / "tools/testing/selftests/bpf/progs").glob("*.c"))
            if fnmatch.fnmatch(f.stem, args.only)
            and ANNOTATED.search(f.read_text(errors="replace"))
        ]
        args.out.mkdir(parents=True, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(args.j) as pool:
            errors = dict(pool.map(lambda s: compile_one(s, tree, include, args.out), sources))
    failed = {k: v for k, v in errors.items() if v}
    (args.out / "build.json").write_text(
        json.dumps({"kernel": name, "source": deb.name, "failed": failed}, indent=2) + "\n"
    )
    print(f"{len(sources) - len(failed)} of {len(sources)} annotated program files compiled "
          f"from {deb.name} into {args.out}")  # fmt: skip
    for reason, count in Counter(_kind(v) for v in failed.values()).most_common(8):
        print(f"  {count:4} not compiled: {reason}")
    return 0


def unpack(deb: Path, series: str, work: Path) -> Path:
    top = f"linux-source-{series}"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "deb")], check=True)
    tarball = work / "deb" / "usr" / "src" / f"{top}.tar.xz"
    cores = os.cpu_count() or 2
    argv = ["tar", "-I", f"xz -T{cores}", "-xf", str(tarball), "-C", str(work)]
    subprocess.run([*argv, *(f"{top}/{s}" for s in SUBTREES)], check=True)
    shutil.rmtree(work / "deb")
    return work / top


def vmlinux_with_kfuncs(tree: Path, btf: Path) -> Path:
    """vmlinux.h of `btf` by the source's own bpftool (its bootstrap build: ~10 s)."""
    bpftool = tree / "tools/bpf/bpftool"
    cores = str(os.cpu_count() or 2)
    subprocess.run(["make", "-s", "-j", cores, "-C", str(bpftool), "bootstrap"], check=True,
                   capture_output=True)  # fmt: skip
    header = tree / "vmlinux.h"
    with header.open("w") as out:
        argv = [str(bpftool / "bootstrap/bpftool"), "btf", "dump", "file", str(btf), "format", "c"]
        subprocess.run(argv, check=True, stdout=out)
    return header


def headers(tree: Path, vmlinux: Path, include: Path) -> Path:
    """vmlinux.h and libbpf's BPF-side headers, bpf_helper_defs.h generated as libbpf's
    Makefile does."""
    (include / "bpf").mkdir(parents=True)
    shutil.copy(vmlinux, include / "vmlinux.h")
    for name in LIBBPF_HEADERS:
        shutil.copy(tree / "tools/lib/bpf" / name, include / "bpf" / name)
    defs = subprocess.run(
        [sys.executable, str(tree / "scripts/bpf_doc.py"), "--header", "--file",
         str(tree / "include/uapi/linux/bpf.h")],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    (include / "bpf" / "bpf_helper_defs.h").write_text(defs)
    return include


def compile_argv(source: Path, tree: Path, include: Path, out: Path) -> list[str]:
    selftests = tree / "tools/testing/selftests/bpf"
    clang_include = subprocess.run(
        ["clang", "-print-resource-dir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return [
        "clang", "-g", "-O2", "--target=bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86",
        "-std=gnu11", "-fno-strict-aliasing", "-Wno-compare-distinct-pointer-types",
        "-Wno-microsoft-anon-tag", "-fms-extensions", "-Wno-initializer-overrides",
        f"-I{include}", f"-I{selftests}", f"-I{selftests / 'progs'}",
        f"-I{selftests / 'libarena/include'}", f"-I{tree / 'tools/include/uapi'}",
        f"-I{tree / 'tools/include'}",
        "-idirafter", f"{clang_include}/include", "-idirafter", "/usr/include/x86_64-linux-gnu",
        "-idirafter", "/usr/include",
        "-c", str(source), "-o", str(out),
    ]  # fmt: skip


def compile_one(source: Path, tree: Path, include: Path, out_dir: Path) -> tuple[str, str]:
    """(file name, clang's first error or "")."""
    out = out_dir / f"{source.stem}.bpf.o"
    done = subprocess.run(
        compile_argv(source, tree, include, out), capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return source.name, ""
    out.unlink(missing_ok=True)
    first = next((ln for ln in done.stderr.splitlines() if "error:" in ln), done.stderr[:200])
    return source.name, first.strip()


def _kind(error: str) -> str:
    return re.sub(r"^.*?error: ", "", error)[:70]


if __name__ == "__main__":
    sys.exit(main())
