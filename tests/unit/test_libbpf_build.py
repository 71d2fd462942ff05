"""libbpf.so from a kernel's linux-source: the pure parts, the cache flow with a fake
dpkg/tar/make, and one real build of debian-7.2's libbpf loaded with the ctypes binding."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import BuildError, UsageError
from harness.kernel.cache import Cache
from harness.kernel.catalog import Catalog, CatalogEntry, DebianSource, PathSource
from harness.kernel.debian import Package
from harness.kernel.kbuild import first_error
from harness.kernel.libbpf_build import (
    BuiltLibbpf,
    cache_dir,
    libbpf_for,
    make_argv,
    map_version,
    untar_argv,
)
from harness.kernel.lockfile import LockedKernel, LockFile
from harness.kernel.resolve import Kernels
from harness.kernel.store import KernelStore

SYSTEM_LIBBPF = "/usr/lib/x86_64-linux-gnu/libbpf.so.1"

MAP_5_10 = """\
LIBBPF_0.0.1 {
\tglobal:
\t\tbpf_btf_get_fd_by_id;
\tlocal:
\t\t*;
};
LIBBPF_0.0.10 {
\tglobal:
\t\tbpf_link__disconnect;
} LIBBPF_0.0.9;
LIBBPF_0.1.0 {
\tglobal:
\t\tbpf_link__detach;
} LIBBPF_0.0.10;
LIBBPF_0.2.0 {
\tglobal:
\t\tbpf_prog_bind_map;
} LIBBPF_0.1.0;
"""

MAP_NEW = """\
LIBBPF_1.0.0 {
\tglobal:
\t\tbpf_prog_query_opts;
} LIBBPF_0.8.0;

LIBBPF_1.10.0 {
\tglobal:
\t\tbpf_future;
} LIBBPF_1.9.0;

LIBBPF_1.9.0 {
} LIBBPF_1.0.0;
"""


# -- pure parts ----------------------------------------------------------------------------
def test_map_version_is_the_newest_node_compared_numerically() -> None:
    assert map_version(MAP_5_10) == "0.2.0"  # 0.0.10 > 0.0.9 but < 0.1.0
    assert map_version(MAP_NEW) == "1.10.0"  # not "1.9.0", the lexical maximum


def test_map_version_rejects_a_map_without_nodes() -> None:
    with pytest.raises(BuildError, match="no LIBBPF"):
        map_version("{ global: foo; };\n")


def test_cache_dir_is_keyed_by_a_path_safe_deb_version(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    assert cache_dir(cache, "7.2.13-1") == tmp_path / "libbpf" / "7.2.13-1"
    assert cache_dir(cache, "7.3.4-1~bpo13+1") == tmp_path / "libbpf" / "7.3.4-1_bpo13+1"
    assert cache_dir(cache, "1:2.0-1") == tmp_path / "libbpf" / "1_2.0-1"


def test_make_argv_builds_only_the_shared_library_out_of_tree() -> None:
    argv = make_argv(Path("/w/linux-source-7.2"), Path("/w/out"), 2)
    assert argv[:4] == ["make", "-C", "/w/linux-source-7.2/tools/lib/bpf", "-j2"]
    assert "OUTPUT=/w/out/" in argv  # the Makefile glues OUTPUT and file names together
    assert argv[-1] == "/w/out/libbpf.so"
    assert {"CC=gcc", "CROSS_COMPILE=", "EXTRA_CFLAGS="} <= set(argv)


def test_untar_argv_names_only_subtrees_of_the_top_directory() -> None:
    argv = untar_argv(Path("/w/t.tar.xz"), Path("/w"), "linux-source-6.1", 2)
    assert argv[:4] == ["tar", "-I", "xz -T2", "-xf"]
    members = argv[argv.index("--wildcards") + 1 :]
    assert "linux-source-6.1/tools/lib/bpf/*" in members
    assert all(m.startswith("linux-source-6.1/") for m in members)


def test_first_error_prefers_the_compilers_line_over_makes() -> None:
    log = (
        "  CC       /w/out/staticobjs/libbpf.o\n"
        "In file included from libbpf.c:12:\n"
        "libbpf.c:40:10: fatal error: linux/filter.h: No such file or directory\n"
        "make[3]: *** [/w/tools/build/Makefile.build:96: libbpf.o] Error 1\n"
    )
    assert first_error(log).startswith("libbpf.c:40:10: fatal error: linux/filter.h")
    no_tool = "  GEN      bpf_helper_defs.h\n/bin/sh: 1: scripts/bpf_doc.py: not found\n"
    no_tool += "make: *** [Makefile:156: bpf_helper_defs.h] Error 127\n"
    assert first_error(no_tool) == "/bin/sh: 1: scripts/bpf_doc.py: not found"
    make_only = "  CC  bpf.o\nmake: *** No rule to make target 'x.mk'.  Stop.\n"
    assert first_error(make_only).startswith("make: *** No rule")
    assert first_error("just this\n\n") == "just this"
    assert first_error("") == "(no output)"


# -- the cache flow, with fake tools -------------------------------------------------------
DEB_BYTES = b"fake linux-source deb\n"


def fake_kernels(tmp_path: Path, run: Any, version: str = "9.9.1-1~exp1") -> Kernels:
    pkg = Package(
        "linux-source-9.9",
        version,
        "sid",
        f"pool/main/l/linux/linux-source-9.9_{version}_all.deb",
        hashlib.sha256(DEB_BYTES).hexdigest(),
        len(DEB_BYTES),
    )
    locked = LockedKernel(
        "debian-9.9", "9.9", ("sid",), "amd64", "9.9.0-1-amd64", version, "sid", (("source", pkg),)
    )
    catalog = Catalog(
        (
            CatalogEntry("debian-9.9", debian=DebianSource("9.9", ("sid",))),
            CatalogEntry("mine", path=PathSource(Path("/boot/vmlinuz-mine"))),
        ),
        tmp_path / "catalog.yaml",
    )
    lock = LockFile(tmp_path / "kernels.lock", {"debian-9.9": locked})
    return Kernels(catalog, lock, KernelStore(Cache(tmp_path / "cache"), run=run))


class FakeTools:
    """apt-helper, dpkg-deb, tar and make, each doing the least the flow looks at."""

    def __init__(self, make_error: str | None = None) -> None:
        self.calls: list[str] = []
        self.make_error = make_error

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        tool = Path(argv[0]).name
        self.calls.append(tool)
        if tool == "apt-helper":
            Path(argv[4]).write_bytes(DEB_BYTES)
        elif tool == "dpkg-deb":
            src = Path(argv[3]) / "usr" / "src"
            src.mkdir(parents=True)
            (src / "linux-source-9.9.tar.xz").write_bytes(b"xz")
        elif tool == "tar":
            bpf = Path(argv[argv.index("-C") + 1]) / "linux-source-9.9" / "tools" / "lib" / "bpf"
            bpf.mkdir(parents=True)
            (bpf / "libbpf.map").write_text(MAP_NEW)
        elif tool == "make":
            if self.make_error:
                kwargs["stdout"].write(f"  CC libbpf.o\n{self.make_error}\nmake: *** Error 1\n")
                return subprocess.CompletedProcess(argv, 2)
            out = Path(argv[-1]).parent
            (out / "libbpf.so.1.10.0").write_bytes(b"\x7fELF shared object")
            (out / "libbpf.so.1").symlink_to("libbpf.so.1.10.0")
            (out / "libbpf.so").symlink_to("libbpf.so.1")
        else:
            raise AssertionError(f"unexpected command {argv}")
        return subprocess.CompletedProcess(argv, 0)


def test_build_is_cached_by_deb_version_and_second_call_runs_nothing(tmp_path: Path) -> None:
    tools = FakeTools()
    kernels = fake_kernels(tmp_path, tools)
    (tmp_path / "cache" / "libbpf" / ".9.9.1-1_exp1.killed.partial").mkdir(parents=True)
    (tmp_path / "cache" / "libbpf" / ".8.0-1.running.partial").mkdir()
    built = libbpf_for("debian-9.9", kernels, run=tools)
    final = tmp_path / "cache" / "libbpf" / "9.9.1-1_exp1"
    assert built.path == final / "libbpf.so.1"
    assert built.path.read_bytes() == b"\x7fELF shared object"
    assert not built.path.is_symlink()
    assert built.version == "1.10.0"
    assert built.source == "linux-source-9.9_9.9.1-1~exp1_all.deb"
    assert built.build_seconds > 0.0
    assert tools.calls == ["apt-helper", "dpkg-deb", "tar", "make"]
    assert sorted(p.name for p in final.iterdir()) == [
        "build.log",
        "kitl-libbpf.json",
        "libbpf.so.1",
    ]
    partials = sorted(p.name for p in final.parent.glob(".*.partial"))
    assert partials == [".8.0-1.running.partial"], "only this version's leftovers are removed"

    again = libbpf_for("debian-9.9", kernels, run=tools)
    assert again == BuiltLibbpf(built.path, "1.10.0", built.source, 0.0)
    assert len(tools.calls) == 4


def test_two_concurrent_callers_build_once(tmp_path: Path) -> None:
    tools = FakeTools()
    results: list[BuiltLibbpf] = []

    def build() -> None:
        # separate Kernels/Cache objects: separate lock handles, as in two processes
        results.append(libbpf_for("debian-9.9", fake_kernels(tmp_path, tools), run=tools))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    assert results[0].path == results[1].path
    assert sorted(r.build_seconds == 0.0 for r in results) == [False, True]
    assert tools.calls.count("make") == 1


def test_a_failed_make_names_command_and_first_error_and_leaves_no_cache(tmp_path: Path) -> None:
    tools = FakeTools(make_error="bpf.c:7:1: error: unknown type name 'u128'")
    kernels = fake_kernels(tmp_path, tools, version="9.9.1-1")
    with pytest.raises(BuildError) as caught:
        libbpf_for("debian-9.9", kernels, run=tools)
    message = str(caught.value)
    assert "`make -C " in message
    assert "bpf.c:7:1: error: unknown type name 'u128'" in message
    libdir = tmp_path / "cache" / "libbpf"
    assert sorted(p.name for p in libdir.iterdir()) == ["9.9.1-1.log"], "log kept, nothing else"
    assert "$ make -C" in (libdir / "9.9.1-1.log").read_text()


def test_only_debian_catalog_kernels_have_a_libbpf(tmp_path: Path) -> None:
    kernels = fake_kernels(tmp_path, FakeTools())
    with pytest.raises(UsageError, match="not a Debian kernel"):
        libbpf_for("mine", kernels)
    with pytest.raises(UsageError, match="unknown kernel"):
        libbpf_for("debian-0.1", kernels)


# -- the real thing ------------------------------------------------------------------------
def test_debian_7_2_libbpf_builds_loads_and_has_tcx() -> None:
    """Builds from the kernel cache's linux-source-7.2 (downloading it when missing); fails,
    never skips, when that is impossible.  About a minute cold, instant warm."""
    kernels = Kernels.open()
    built = libbpf_for("debian-7.2", kernels)
    assert built.path.is_file()
    assert built.source.startswith("linux-source-7.2_")
    # in a child: a library loaded here would shadow the system's libbpf.so.1 (same soname)
    # for every later test in this process
    probe = (
        "import json, sys\n"
        "from harness.guest.libbpf import Libbpf\n"
        "new, old = Libbpf(sys.argv[1]), Libbpf(sys.argv[2])\n"
        "print(json.dumps([new.version, new.has('bpf_program__attach_tcx'),"
        " old.has('bpf_program__attach_tcx')]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(built.path), SYSTEM_LIBBPF],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    version, new_has_tcx, old_has_tcx = json.loads(out)
    assert tuple(version) >= (1, 3)
    assert built.version.startswith(f"{version[0]}.{version[1]}.")
    assert new_has_tcx
    assert not old_has_tcx

    started = time.monotonic()
    again = libbpf_for("debian-7.2", kernels)
    assert again.build_seconds == 0.0
    assert again.path == built.path
    assert time.monotonic() - started < 1.0
