#!/usr/bin/env python3
"""Build the kernel's annotated BPF selftest programs, for `kitl verify --annotations`.

    tools/selftests_corpus.py OUT_DIR [--kernel debian-7.3] [--only GLOB] [-j N]

From the linux-source package of a catalog kernel (default: the newest Debian one), the
programs of tools/testing/selftests/bpf/progs that carry test_loader annotations
(`__success`, `__failure`, `__msg`...) are compiled the way the selftests' Makefile does
(clang -O2 --target=bpf -mcpu=v3, the selftests' and libbpf's headers, a vmlinux.h of
that kernel's BTF written by the source's own bpftool, with its kfunc prototypes) into
OUT_DIR/<name>.bpf.o, with the newest clang on PATH (`clang-19`, which bookworm has, or
`--clang`: bookworm's default clang 14 cannot assemble the newer instructions many tests
use in inline asm, and writes BTF type tags in a form the verifier does not read, so
kptr tests fail for the compiler's sake).  Programs the clang cannot compile are listed
in OUT_DIR/build.json with clang's first error, and counted on the way out.  Then:

    kitl verify --annotations OUT_DIR --kernels debian-7.3,debian-7.2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import os
import re
import shlex
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
# prog_tests/verifier.c fills one map of two objects between load and test_run (its
# pre_execution_cb, init_test_val_map): key 0 holds a struct test_val whose index is 7 ints
# and whose foo[6] is 0xabcdef12; the annotations' return values assume it
TEST_VAL = b"".join(
    ((7 * 4).to_bytes(4, "little"), bytes(24), (0xABCDEF12).to_bytes(4, "little"), bytes(16))
)
PRE_EXECUTION = {"verifier_array_access.bpf.o": "map_array_ro",
                 "verifier_value_ptr_arith.bpf.o": "map_array_48b"}  # fmt: skip
ANNOTATED = re.compile(r"\b__(?:success|failure|msg|retval)(?:_unpriv)?\b")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--kernel", default=None, help="a Debian catalog kernel (default: newest)")
    p.add_argument("--only", default="*", metavar="GLOB", help="program files, e.g. verifier_*")
    p.add_argument("-j", type=int, default=os.cpu_count() or 2)
    p.add_argument("--clang", default=newest_clang(), help="the compiler (default: %(default)s)")
    args = p.parse_args()
    if args.clang == "clang":
        print("selftests_corpus: no clang-N on PATH, using clang: bookworm's (14) cannot build "
              "17 of the files and writes type tags the verifier does not read; "
              "`apt-get install clang-19` for the whole corpus", file=sys.stderr)  # fmt: skip
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
            errors = dict(
                pool.map(lambda s: compile_one(args.clang, s, tree, include, args.out), sources)
            )
    failed = {k: v for k, v in errors.items() if v}
    (args.out / "build.json").write_text(
        json.dumps(
            {
                "kernel": name,
                "source": deb.name,
                "clang": clang_version(args.clang),
                "failed": failed,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"{len(sources) - len(failed)} of {len(sources)} annotated program files compiled "
          f"from {deb.name} into {args.out}")  # fmt: skip
    for reason, count in Counter(_kind(v) for v in failed.values()).most_common(8):
        print(f"  {count:4} not compiled: {reason}")
    print("then:", shlex.join(verify_argv(args.out, name)))
    return 0


def verify_argv(out: Path, kernel: str) -> list[str]:
    """The `kitl verify` of the corpus, with the map contents the selftests' own runner
    writes before test_run."""
    fills = [f"--map-set={o}/{m}:0=hex:{TEST_VAL.hex()}" for o, m in PRE_EXECUTION.items()]
    return ["kitl", "verify", "--annotations", str(out), *fills, "--kernels", kernel]


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


def newest_clang() -> str:
    """The clang-N with the highest N on PATH, else plain clang."""
    for major in range(30, 13, -1):
        if shutil.which(f"clang-{major}"):
            return f"clang-{major}"
    return "clang"


def clang_version(clang: str) -> str:
    done = subprocess.run([clang, "--version"], check=True, capture_output=True, text=True)
    return done.stdout.splitlines()[0]


def compile_argv(clang: str, source: Path, tree: Path, include: Path, out: Path) -> list[str]:
    selftests = tree / "tools/testing/selftests/bpf"
    clang_include = subprocess.run(
        [clang, "-print-resource-dir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return [
        clang, "-g", "-O2", "--target=bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86",
        "-std=gnu11", "-fno-strict-aliasing", "-Wno-compare-distinct-pointer-types",
        "-Wno-microsoft-anon-tag", "-fms-extensions", "-Wno-initializer-overrides",
        f"-I{include}", f"-I{selftests}", f"-I{selftests / 'progs'}",
        f"-I{selftests / 'libarena/include'}", f"-I{tree / 'tools/include/uapi'}",
        f"-I{tree / 'tools/include'}",
        "-idirafter", f"{clang_include}/include", "-idirafter", "/usr/include/x86_64-linux-gnu",
        "-idirafter", "/usr/include",
        "-c", str(source), "-o", str(out),
    ]  # fmt: skip


def compile_one(
    clang: str, source: Path, tree: Path, include: Path, out_dir: Path
) -> tuple[str, str]:
    """(file name, clang's first error or "")."""
    out = out_dir / f"{source.stem}.bpf.o"
    done = subprocess.run(
        compile_argv(clang, source, tree, include, out), capture_output=True, text=True, check=False
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
