"""`kitl doctor`: is this host ready to run kitl, and what to install if not.

Pure: the host's facts (`HostFacts`, gathered by harness.cli.hostprobe, which boots nothing)
become one `Check` per need, each with its exact fix for this host's distribution.

Required (exit 1 when one is missing): what every `kitl run` uses: QEMU, virtme-ng and
its busybox, clang and bpftool (objects and vmlinux.h), gcc and make (the default loader,
libbpf, is built from source), dpkg-deb, xz and zstd (kernel packages), sshd and ip (the
guest runs the host's root and starts them), and a writable cache with room.  Optional:
KVM (TCG is slower but works), pahole (only kernels without BTF and source builds need it)
and cached kernels (fetched on first use).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.cli.packages import Distro, install_argv
from harness.outcome import EXIT_FAILED, EXIT_OK

GIB = 1 << 30
MIN_FREE = 4 * GIB  # five Debian kernels unpacked and the objects; source builds want more


@dataclass(frozen=True)
class Need:
    """A command kitl runs: the packages that bring it, whether a run needs it, why."""

    name: str
    command: str
    debian: tuple[str, ...]  # each in harness/data/debian-packages.txt (but dpkg: essential)
    fedora: tuple[str, ...]
    required: bool
    why: str
    version_args: tuple[str, ...] = ("--version",)


NEEDS: tuple[Need, ...] = (
    Need("qemu", "qemu-system-x86_64", ("qemu-system-x86",), ("qemu-system-x86-core",), True,
         "boots the guests"),
    Need("virtme-ng", "vng", (), (), True, "starts QEMU with the host's root (kitl's dependency)"),
    Need("busybox", "busybox", ("busybox-static",), ("busybox",), True,
         "virtme-ng's initramfs", ("--help",)),
    Need("clang", "clang", ("clang",), ("clang",), True, "compiles BPF objects"),
    Need("bpftool", "bpftool", ("bpftool",), ("bpftool",), True, "vmlinux.h from a kernel's BTF"),
    Need("pahole", "pahole", ("dwarves",), ("dwarves",), False,
         "BTF for kernels without it, kernel builds"),
    Need("gcc", "gcc", ("build-essential", "libelf-dev"), ("gcc", "elfutils-libelf-devel"), True,
         "builds the default loader (libbpf) and netdevsim"),
    Need("make", "make", ("build-essential",), ("make",), True, "builds libbpf and netdevsim"),
    Need("dpkg-deb", "dpkg-deb", ("dpkg",), ("dpkg",), True, "unpacks Debian kernel packages"),
    Need("xz", "xz", ("xz-utils",), ("xz",), True, "unpacks kernel packages"),
    Need("zstd", "zstd", ("zstd",), ("zstd",), True, "unpacks kernel packages"),
    Need("sshd", "sshd", ("openssh-server",), ("openssh-server",), True,
         "started inside the guest", ("-V",)),
    Need("ip", "ip", ("iproute2",), ("iproute",), True, "the guest's network topology", ("-V",)),
)  # fmt: skip


@dataclass(frozen=True)
class HostFacts:
    """What harness.cli.hostprobe found; the tests make these by hand."""

    distro: Distro
    root: bool
    user: str
    # a command's first version line ("" when it says none), None when it is not found
    tools: Mapping[str, str | None]
    kvm_device: str  # "usable", "missing" or "no access"
    accel_verdict: tuple[str, str] | None  # the cached (accel, reason); None: not probed
    cache_root: Path
    cache_free: int | None  # bytes free where the cache is (None: could not tell)
    cache_writable: bool
    cached_kernels: tuple[str, ...] = ()
    catalog_kernels: int = 0
    kitl_version: str = ""
    python: str = ""
    executable: str = "python3"  # kitl's interpreter: its pip installs kitl's dependencies


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: tuple[str, ...] = ()  # the command that fixes it (an argv), () when none does
    required: bool = True
    packages: tuple[str, ...] = field(default=(), compare=False)  # for the combined fix

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "MISSING" if self.required else "warning"


def _packages(need: Need, distro: Distro) -> tuple[str, ...]:
    return {"debian": need.debian, "fedora": need.fedora}.get(distro.family, ())


def tool_check(need: Need, facts: HostFacts) -> Check:
    found = facts.tools.get(need.command)
    if found is not None:
        return Check(need.name, True, found or need.command, required=need.required)
    detail = f"{need.command} not found ({need.why})"
    if need.name == "virtme-ng":
        # a Python dependency of kitl: missing means kitl's own install is incomplete
        pip = (facts.executable, "-m", "pip", "install", "virtme-ng>=1.40")
        return Check(need.name, False, detail, pip)
    packages = _packages(need, facts.distro)
    fix = install_argv(facts.distro, packages, root=facts.root)
    if not fix:
        detail += f"; no install command known for {facts.distro.pretty} (Debian: {need.debian})"
    return Check(need.name, False, detail, fix, need.required, packages)


def kvm_check(facts: HostFacts) -> Check:
    """Optional: without KVM kitl runs guests under TCG, several times slower."""
    if facts.kvm_device == "missing":
        detail = "no /dev/kvm: guests run under TCG (slower); enable virtualization or load kvm"
        return Check("kvm", False, detail, required=False)
    if facts.kvm_device == "no access":
        detail = f"/dev/kvm is not readable and writable by {facts.user}: TCG until it is"
        return Check("kvm", False, detail, ("sudo", "usermod", "-aG", "kvm", facts.user), False)
    if facts.accel_verdict is None:
        detail = "/dev/kvm usable, not probed yet (the first run probes it, about 20 s)"
        return Check("kvm", False, detail, ("kitl", "accel", "--reprobe"), False)
    accel, reason = facts.accel_verdict
    if accel == "kvm":
        return Check("kvm", True, f"works: {reason}", required=False)
    return Check("kvm", False, f"/dev/kvm present but unusable, TCG: {reason}", required=False)


def cache_check(facts: HostFacts) -> Check:
    where = str(facts.cache_root)
    if not facts.cache_writable:
        return Check("cache", False, f"{where} is not writable: set KITL_CACHE to a directory")
    if facts.cache_free is None:
        return Check("cache", True, f"{where} (free space unknown)")
    free = f"{where}: {facts.cache_free / GIB:.1f} GiB free"
    if facts.cache_free < MIN_FREE:
        need = f"{MIN_FREE // GIB} GiB"
        return Check("cache", False, f"{free}, under {need}: set KITL_CACHE to a bigger disk")
    return Check("cache", True, free)


def kernels_check(facts: HostFacts) -> Check:
    cached = facts.cached_kernels
    if not cached:
        detail = f"none of the {facts.catalog_kernels} catalog kernels cached (fetched on use)"
        return Check("kernels", False, detail, ("kitl", "kernels", "fetch"), False)
    detail = f"{len(cached)} of {facts.catalog_kernels} cached: {', '.join(cached)}"
    return Check("kernels", True, detail, required=False)


def checks(facts: HostFacts) -> tuple[Check, ...]:
    return (
        *(tool_check(n, facts) for n in NEEDS),
        kvm_check(facts),
        cache_check(facts),
        kernels_check(facts),
    )


def combined_fix(facts: HostFacts, found: Sequence[Check]) -> tuple[str, ...]:
    """One command that installs every missing package, required or not."""
    packages = dict.fromkeys(p for c in found if not c.ok for p in c.packages)
    return install_argv(facts.distro, tuple(packages), root=facts.root)


def render(facts: HostFacts, found: Sequence[Check]) -> list[str]:
    """The report: a header, a line per check (and its fix), then the verdict."""
    lines = [f"kitl {facts.kitl_version} on {facts.distro.pretty}, Python {facts.python}"]
    width = max(len(c.name) for c in found)
    for check in found:
        lines.append(f"  {check.status:<8} {check.name:<{width}}  {check.detail}")
        if check.fix:
            lines.append(f"  {'':<8} {'':<{width}}  fix: {shlex.join(check.fix)}")
    missing = [c.name for c in found if c.required and not c.ok]
    together = combined_fix(facts, found)
    if len([c for c in found if not c.ok and c.packages]) > 1 and together:
        lines.append(f"all missing packages: {shlex.join(together)}")
    if missing and facts.distro.family == "debian":
        lines.append("or: kitl setup (every package kitl needs, with confirmation)")
    if missing:
        lines.append(f"not ready: missing {', '.join(missing)}")
    else:
        lines.append("ready: every required piece is here")
    return lines


def status(found: Sequence[Check]) -> int:
    """EXIT_OK when every required check passed, else EXIT_FAILED."""
    return EXIT_FAILED if any(c.required and not c.ok for c in found) else EXIT_OK
