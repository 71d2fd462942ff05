"""netdevsim, built out of tree for each Debian kernel (Debian does not build it).

Recipe (measured on bookworm for 5.10, 6.1, 6.12, 7.2 and 7.3):
 1. unpack linux-headers-REL, its -common and linux-kbuild; point the headers Makefile's
    absolute /usr/src paths at the unpacked tree;
 2. take drivers/net/netdevsim from the matching linux-source tarball;
 3. when the kernel was built by another gcc than the host's, or the kbuild host tools
    need a newer glibc than the host has (trixie and later link against glibc 2.38):
    unpack the whole source, run `olddefconfig` + `modules_prepare` with the host gcc to
    rebuild the host tools (fixdep, modpost, objtool, resolve_btfids), and transplant only
    the toolchain-capability symbols (CONFIG_CC_*, GCC_*, AS_*, LD_*...) of that config into
    the headers' .config, auto.conf and autoconf.h.  Symbols that change code generation
    (asm goto output, function alignment) must agree with the compiler actually used;
 4. `make -C headers M=netdevsim CONFIG_NETDEVSIM=m` with the host gcc and no module BTF
    (bookworm's pahole is older than the one the kernel was built with).
The module lands in lib/modules/REL/extra/ of the cached kernel; depmod runs afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import BuildError

Runner = Callable[..., "subprocess.CompletedProcess[Any]"]

TOOLCHAIN_SYMBOL = re.compile(r"^CONFIG_(CC|GCC|AS|LD|TOOLS|CLANG|LLD)_")
_HOST_TOOLS = (  # (path in kbuild, path in a modules_prepare'd build dir)
    ("scripts/basic/fixdep", "scripts/basic/fixdep"),
    ("scripts/mod/modpost.real-lsb-64", "scripts/mod/modpost"),
    ("scripts/mod/modpost", "scripts/mod/modpost"),
    ("tools/objtool/objtool.real-x86", "tools/objtool/objtool"),
    ("tools/objtool/objtool", "tools/objtool/objtool"),
    ("tools/bpf/resolve_btfids/resolve_btfids", "tools/bpf/resolve_btfids/resolve_btfids"),
)


def _config_values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def toolchain_changes(kernel_config: str, host_config: str) -> dict[str, str | None]:
    """Toolchain symbols whose value differs when Kconfig runs with the host compiler
    (None = unset on the host).  Everything else is the kernel's ABI and stays."""
    deb, host = _config_values(kernel_config), _config_values(host_config)
    return {
        key: host.get(key)
        for key in sorted(set(deb) | set(host))
        if TOOLCHAIN_SYMBOL.match(key) and deb.get(key) != host.get(key)
    }


def patch_config_text(text: str, changes: dict[str, str | None], kind: str) -> str:
    """Apply `changes` to a .config ("config"), include/config/auto.conf ("conf") or
    include/generated/autoconf.h ("h")."""
    unquoted = kind == "conf" and any(
        line.startswith("CONFIG_CC_VERSION_TEXT=")
        and not line.startswith('CONFIG_CC_VERSION_TEXT="')
        for line in text.splitlines()
    )
    out = []
    for line in text.splitlines():
        if kind == "h":
            m = re.match(r"^#define (CONFIG_[A-Za-z0-9_]+?)(_MODULE)? ", line)
        else:
            m = re.match(r"^(?:# )?(CONFIG_[A-Za-z0-9_]+)[= ]", line)
        if m and m.group(1) in changes:
            continue
        out.append(line)
    for key, value in changes.items():
        if value is None:
            if kind == "config":
                out.append(f"# {key} is not set")
        elif kind == "h":
            out.append(
                f"#define {key}_MODULE 1"
                if value == "m"
                else f"#define {key} {1 if value == 'y' else value}"
            )
        elif kind == "conf" and unquoted and value.startswith('"'):
            out.append(f"{key}={value[1:-1]}")  # auto.conf in 6.x+ stores strings unquoted
        else:
            out.append(f"{key}={value}")
    return "\n".join(out) + "\n"


def build_and_install(
    *,
    release: str,
    series: str,
    root: Path,
    headers_debs: list[Path],
    source_deb: Path,
    workdir: Path,
    run: Runner = subprocess.run,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Build netdevsim.ko for `release` and put it under root/lib/modules/REL/extra/."""
    if progress:
        progress(f"{release}: building netdevsim", 0, 0)
    build = _Build(release, series, workdir, run)
    started = time.monotonic()
    headers, kbuild = build.unpack_headers(headers_debs)
    tree = build.unpack_source(source_deb, whole=_needs_host_build(headers, kbuild, run))
    if build.whole_source:
        build.host_tools(tree, headers, kbuild)
    built = build.module(tree, headers)
    dest = root / "lib" / "modules" / release / "extra" / "netdevsim.ko"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, dest)
    (dest.parent / "netdevsim.build-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
    return dest


class _Build:
    def __init__(self, release: str, series: str, workdir: Path, run: Runner) -> None:
        self.release, self.series, self.workdir, self.run = release, series, workdir, run
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "netdevsim-build.log"
        self.whole_source = False

    def sh(self, argv: list[str], what: str) -> None:
        with self.log.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            proc = self.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-12:]
            raise BuildError(
                f"netdevsim for {self.release}: {what} failed:\n  " + "\n  ".join(tail),
                hint=f"full log: {self.log}",
            )

    def unpack_headers(self, debs: list[Path]) -> tuple[Path, Path]:
        hroot = self.workdir / "headers"
        for deb in debs:
            self.sh(["dpkg-deb", "-x", str(deb), str(hroot)], f"unpacking {deb.name}")
        headers = hroot / "usr" / "src" / f"linux-headers-{self.release}"
        kbuild = next((hroot / "usr" / "lib").glob("linux-kbuild-*"), None)
        if not headers.is_dir() or kbuild is None:
            raise BuildError(f"netdevsim for {self.release}: headers or kbuild missing")
        _relocate_headers(headers, hroot)
        return headers, kbuild

    def unpack_source(self, deb: Path, *, whole: bool) -> Path:
        src = self.workdir / "src"
        self.sh(["dpkg-deb", "-x", str(deb), str(src)], "unpacking linux-source")
        tarball = src / "usr" / "src" / f"linux-source-{self.series}.tar.xz"
        top = f"linux-source-{self.series}"
        xz = ["-I", "xz -T2"]  # Debian's tarballs are multi-block: two threads halve the time
        untar = ["tar", *xz, "-xf", str(tarball), "-C", str(src)]
        if whole:  # modules_prepare needs the whole tree (top-level Kbuild, security/...)
            self.sh(untar, "unpacking the source")
        else:
            self.sh(
                [*untar, "--wildcards", f"{top}/drivers/net/netdevsim/*"], "unpacking netdevsim"
            )
        tarball.unlink()
        self.whole_source = whole
        return src / top

    def host_tools(self, tree: Path, headers: Path, kbuild: Path) -> None:
        hostbuild = self.workdir / "hosttools"
        hostbuild.mkdir()
        shutil.copy(headers / ".config", hostbuild / ".config")
        make = ["make", "-C", str(tree), f"O={hostbuild}", "CC=gcc", "HOSTCC=gcc"]
        self.sh([*make, "olddefconfig"], "olddefconfig with the host gcc")
        self.sh([*make, f"-j{os.cpu_count() or 2}", "modules_prepare"], "modules_prepare")
        for dst, built in _HOST_TOOLS:
            target, fresh = kbuild / dst, hostbuild / built
            if target.exists() and fresh.exists() and not target.is_symlink():
                shutil.copy2(fresh, target)
        changes = toolchain_changes(
            (headers / ".config").read_text(), (hostbuild / ".config").read_text()
        )
        for rel, kind in (
            (".config", "config"),
            ("include/config/auto.conf", "conf"),
            ("include/generated/autoconf.h", "h"),
        ):
            path = headers / rel
            path.write_text(patch_config_text(path.read_text(), changes, kind))

    def module(self, tree: Path, headers: Path) -> Path:
        moddir = self.workdir / "netdevsim"
        shutil.copytree(tree / "drivers" / "net" / "netdevsim", moddir)
        self.sh(
            [
                "make",
                "-C",
                str(headers),
                f"M={moddir}",
                "CONFIG_NETDEVSIM=m",
                "CONFIG_DEBUG_INFO_BTF_MODULES=",
                "CROSS_COMPILE=",
                "CC=gcc",
                "HOSTCC=gcc",
                f"-j{os.cpu_count() or 2}",
                "modules",
            ],
            "make modules",
        )
        built = moddir / "netdevsim.ko"
        if not built.is_file():
            raise BuildError(f"netdevsim for {self.release}: make produced no netdevsim.ko")
        return built


def _relocate_headers(headers: Path, hroot: Path) -> None:
    """Debian's headers refer to /usr/src/... by absolute path; point them into `hroot`."""
    makefile = headers / "Makefile"
    text = makefile.read_text()
    text = re.sub(r"^include /usr/src/", f"include {hroot}/usr/src/", text, flags=re.M)
    text = re.sub(r"^KBUILD_OUTPUT=/usr/src/", f"KBUILD_OUTPUT={hroot}/usr/src/", text, flags=re.M)
    makefile.write_text(text)
    for link in (headers / "build", headers / "source"):
        if link.is_symlink() and os.readlink(link).startswith("/"):
            target = hroot / os.readlink(link).lstrip("/")
            link.unlink()
            link.symlink_to(target)


def _host_gcc_major(run: Runner) -> int:
    proc = run(["gcc", "-dumpversion"], capture_output=True, text=True, check=False)
    try:
        return int(proc.stdout.strip().split(".")[0])
    except ValueError:
        raise BuildError(
            "cannot tell the host gcc version (is build-essential installed?)"
        ) from None


def _needs_host_build(headers: Path, kbuild: Path, run: Runner) -> bool:
    config = _config_values((headers / ".config").read_text())
    kernel_gcc = int(config.get("CONFIG_GCC_VERSION", "0")) // 10000
    if kernel_gcc and kernel_gcc != _host_gcc_major(run):
        return True
    for tool in ("scripts/basic/fixdep", "scripts/mod/modpost.real-lsb-64", "scripts/mod/modpost"):
        path = kbuild / tool
        if path.is_file() and os.access(path, os.X_OK):
            proc = run([str(path)], capture_output=True, text=True, check=False)
            if "GLIBC_" in proc.stderr and "not found" in proc.stderr:
                return True
    return False
