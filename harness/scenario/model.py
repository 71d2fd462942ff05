"""What a scenario is made of: the frozen dataclasses a scenario file becomes.

`Scenario` holds its objects, configs, topology and `Case`s; a case names its program, what it
requires, how it is loaded (`LoadOptions`), attached and driven, and what it expects
(harness.scenario.expect).  No parsing here: harness.scenario.loader reads files into these,
harness.scenario.objects builds them for `kitl verify`.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

from harness.bpf import packet, progtypes, sections
from harness.bpf.elfobj import ObjectInfo
from harness.bpf.progtypes import ProgType
from harness.scenario.expect import (
    Expect,
    MapExpect,
    Override,
    VersionRange,
    apply_overrides,
)

__all__ = [
    "AutoAttach",
    "BpfObject",
    "Case",
    "CgroupAttach",
    "Endpoint",
    "LoadOptions",
    "LoaderCase",
    "NetdevsimDevice",
    "PacketSpec",
    "Requires",
    "RunConfig",
    "Scenario",
    "SocketAttach",
    "SyscallDrive",
    "TcAttach",
    "TcxAttach",
    "TestRunDrive",
    "Topology",
    "TrafficDrive",
    "UserLoader",
    "VethPair",
    "XdpAttach",
]

DEFAULT_LOG_LEVEL = 5  # BPF_LOG_LEVEL1 | BPF_LOG_STATS


# --- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    name: str
    sysctl: tuple[tuple[str, int | str], ...] = ()


@dataclass(frozen=True)
class BpfObject:
    name: str
    source: Path | None = None  # a C file kitl compiles
    path: Path | None = None  # a compiled object
    cflags: tuple[str, ...] = ()
    info: ObjectInfo | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Endpoint:
    ifname: str
    ns: str | None = None  # None: the root namespace
    address: str | None = None  # "10.0.0.1/24"

    @property
    def ip(self) -> str | None:
        return str(ipaddress.ip_interface(self.address).ip) if self.address else None


@dataclass(frozen=True)
class VethPair:
    a: Endpoint
    b: Endpoint


@dataclass(frozen=True)
class NetdevsimDevice:
    id: int
    ports: int = 1
    ns: str | None = None

    @property
    def ifnames(self) -> tuple[str, ...]:
        """The names kitl gives the ports: nsim<ID>p<N>, N from 0."""
        return tuple(f"nsim{self.id}p{n}" for n in range(self.ports))


@dataclass(frozen=True)
class Topology:
    netns: tuple[str, ...] = ()
    veth: tuple[VethPair, ...] = ()
    netdevsim: tuple[NetdevsimDevice, ...] = ()

    def devices(self) -> list[tuple[str, str | None, str]]:
        """(ifname, ns, kind) of every declared device; kind is "veth" or "netdevsim"."""
        out = [(e.ifname, e.ns, "veth") for pair in self.veth for e in (pair.a, pair.b)]
        out += [(name, d.ns, "netdevsim") for d in self.netdevsim for name in d.ifnames]
        return out

    def endpoint_for(self, ip: str) -> Endpoint | None:
        for pair in self.veth:
            for end in (pair.a, pair.b):
                if end.ip == ip:
                    return end
        return None


@dataclass(frozen=True)
class Requires:
    helpers: tuple[str, ...] = ()  # canonical "bpf_" names
    prog_types: tuple[str, ...] = ()
    map_types: tuple[str, ...] = ()
    kfuncs: tuple[str, ...] = ()
    btf: bool = False  # /sys/kernel/btf/vmlinux
    attach_types: tuple[str, ...] = ()  # libbpf names: "tcx_ingress", "cgroup_inet4_connect"
    libbpf: VersionRange | None = None  # the loader's version must be in this range
    # names the kernel's or a loaded module's BTF must hold: what each is, by name
    # ({"bpf_testmod_ops": "struct_ops type bpf_testmod_ops"})
    btf_names: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LoadOptions:
    log_level: int = DEFAULT_LOG_LEVEL
    log_size: int | None = None  # bytes; None: the engine's default
    flags: tuple[str, ...] = ()  # names from progtypes.PROG_LOAD_FLAGS
    btf_custom_path: Path | None = None
    privilege: str = "privileged"  # a profile of harness.guest.caps.PROFILES
    globals: tuple[tuple[str, int], ...] = ()  # initial values of global variables
    external_btf: bool = False  # `btf: external`: kitl's BTF of a kernel built without it
    # what a real loader sets before its load (harness.guest.libbpf_prepare): map sizes as
    # (name, max_entries, value_size), veristat's fixups, pinning and its root, the target
    # of a tracing program whose user space sets it
    maps: tuple[tuple[str, int | None, int | None], ...] = ()
    fixups: bool = True
    pinning: bool = True
    pin_root: str | None = None
    attach_target: str | None = None
    # programs loaded with it in one object load ("*": all of them, as a skeleton does)
    companions: tuple[str, ...] = ()
    # the kernel's test_loader's ways: flags OR'ed in where the kernel takes them,
    # capabilities an unprivileged load keeps, and no map an unprivileged user may not create
    testing_flags: tuple[str, ...] = ()
    keep_caps: tuple[int, ...] = ()
    unprivileged_maps_only: bool = False
    # the user set log_level: a load that passes keeps its whole log.  Otherwise it keeps
    # the statistics only and a failure is loaded again for its log (a level-1 log makes
    # the verifier several times slower: docs/benchmarks.md)
    keep_log: bool = False

    @property
    def unprivileged(self) -> bool:
        return self.privilege == "unprivileged"

    @property
    def flags_value(self) -> int:
        return sum(progtypes.PROG_LOAD_FLAGS[f] for f in set(self.flags))


def profile_case_name(program: str, privilege: str) -> str:
    """A program's case as loaded with a privilege profile: `PROGRAM` with every
    capability, `PROGRAM.PROFILE` otherwise (kitl verify and --annotations alike)."""
    return program if privilege == "privileged" else f"{program}.{privilege}"


Direction = Literal["ingress", "egress"]


@dataclass(frozen=True)
class XdpAttach:
    family: ClassVar[str] = "xdp"
    dev: str
    ns: str | None = None
    mode: Literal["skb", "drv", "hw"] | None = None  # None: the kernel picks (drv if it can)


@dataclass(frozen=True)
class TcAttach:
    family: ClassVar[str] = "tc"
    dev: str
    direction: Direction
    ns: str | None = None


@dataclass(frozen=True)
class TcxAttach:
    family: ClassVar[str] = "tcx"
    dev: str
    direction: Direction
    ns: str | None = None


@dataclass(frozen=True)
class CgroupAttach:
    family: ClassVar[str] = "cgroup"
    path: str  # relative to the cgroup2 root; created by the engine
    direction: Direction | None = None  # cgroup_skb programs only


@dataclass(frozen=True)
class AutoAttach:
    family: ClassVar[str] = "auto"


@dataclass(frozen=True)
class SocketAttach:
    family: ClassVar[str] = "socket"
    ns: str | None = None  # the namespace of the receiving socket


Attach = XdpAttach | TcAttach | TcxAttach | CgroupAttach | AutoAttach | SocketAttach


IP = TypeVar("IP", packet.IPv4, packet.IPv6)


@dataclass(frozen=True)
class PacketSpec:
    """A packet for test_run, built by harness.bpf.packet: Ethernet, optionally IPv4/IPv6 and
    UDP/TCP/ICMP (ICMPv6 over IPv6), then `payload_size` zero bytes.  None: the builder's
    default."""

    eth_src: str | None = None
    eth_dst: str | None = None
    eth_type: int | None = None  # only without an IP layer
    l3: Literal["ipv4", "ipv6"] | None = None
    src: str | None = None
    dst: str | None = None
    ttl: int | None = None  # hop_limit for IPv6
    l4: Literal["udp", "tcp", "icmp"] | None = None
    sport: int | None = None
    dport: int | None = None
    tcp_flags: tuple[str, ...] | None = None  # "syn", "ack", ...
    tcp_seq: int | None = None
    tcp_ack: int | None = None
    tcp_window: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    payload_size: int = 0

    def as_dict(self) -> packet.Frame:
        """The spec harness.bpf.packet.build() takes (the YAML's own shape); a value not
        given is left out, for the builder's default."""
        out: packet.Frame = {"payload_size": self.payload_size, "eth": self._eth()}
        if self.l3 == "ipv4":
            out["ipv4"] = v4 = self._ends(packet.IPv4())
            if self.ttl is not None:
                v4["ttl"] = self.ttl
        elif self.l3 == "ipv6":
            out["ipv6"] = v6 = self._ends(packet.IPv6())
            if self.ttl is not None:
                v6["hop_limit"] = self.ttl
        if self.l4 == "icmp":
            out["icmp"] = self._icmp()
        elif self.l4 is not None:
            out[self.l4] = self._tcp() if self.l4 == "tcp" else self._udp()
        return out

    def _ends(self, ip: IP) -> IP:
        if self.src is not None:
            ip["src"] = self.src
        if self.dst is not None:
            ip["dst"] = self.dst
        return ip

    def _eth(self) -> packet.Eth:
        eth = packet.Eth()
        if self.eth_src is not None:
            eth["src"] = self.eth_src
        if self.eth_dst is not None:
            eth["dst"] = self.eth_dst
        if self.eth_type is not None:
            eth["type"] = self.eth_type
        return eth

    def _icmp(self) -> packet.Icmp:
        icmp = packet.Icmp()
        if self.icmp_type is not None:
            icmp["type"] = self.icmp_type
        if self.icmp_code is not None:
            icmp["code"] = self.icmp_code
        return icmp

    def _udp(self) -> packet.Udp:
        udp = packet.Udp()
        if self.sport is not None:
            udp["sport"] = self.sport
        if self.dport is not None:
            udp["dport"] = self.dport
        return udp

    def _tcp(self) -> packet.Tcp:
        tcp = packet.Tcp()
        if self.sport is not None:
            tcp["sport"] = self.sport
        if self.dport is not None:
            tcp["dport"] = self.dport
        if self.tcp_flags is not None:
            tcp["flags"] = list(self.tcp_flags)
        if self.tcp_seq is not None:
            tcp["seq"] = self.tcp_seq
        if self.tcp_ack is not None:
            tcp["ack"] = self.tcp_ack
        if self.tcp_window is not None:
            tcp["window"] = self.tcp_window
        return tcp


@dataclass(frozen=True)
class TestRunDrive:
    __test__ = False  # not a pytest class
    kind: ClassVar[str] = "test_run"
    packet: PacketSpec | None = None
    data: bytes | None = None  # from hex:
    ctx: tuple[tuple[str, int | tuple[int, ...]], ...] = ()
    ctx_data: bytes | None = None  # from ctx_hex:
    repeat: int = 1
    ingress_dev: str | None = None
    ingress_ns: str | None = None


@dataclass(frozen=True)
class TrafficDrive:
    kind: ClassVar[str] = "traffic"
    to: str  # destination address; an endpoint of the topology
    proto: Literal["udp", "tcp", "icmp"]
    from_ns: str | None = None  # None: the root namespace
    to_ns: str | None = None  # the namespace of the endpoint that owns `to`
    port: int | None = None
    count: int = 1
    size: int = 64  # payload bytes per packet


SyscallAction = Literal["run", "open", "unlink", "connect", "execve"]
SYSCALL_ACTIONS: tuple[SyscallAction, ...] = ("run", "open", "unlink", "connect", "execve")


@dataclass(frozen=True)
class SyscallDrive:
    """`run` executes a command (its exit status is observed); the built-in actions are
    done by the guest agent itself, so the errno the kernel returned is observed."""

    kind: ClassVar[str] = "syscall"
    action: SyscallAction
    argv: tuple[str, ...] = ()  # run, execve
    path: str | None = None  # open, unlink
    write: bool = False  # open: O_WRONLY instead of O_RDONLY
    create: bool = False  # open: O_CREAT
    to: str | None = None  # connect
    port: int | None = None  # connect
    proto: Literal["tcp", "udp"] = "tcp"  # connect
    ns: str | None = None

    @property
    def gives_errno(self) -> bool:
        return self.action != "run"

    @property
    def gives_status(self) -> bool:
        return self.action in ("run", "execve")


Drive = TestRunDrive | TrafficDrive | SyscallDrive


class _Overridden:
    """What a case of either kind (a program kitl loads, the user's own loader) expects
    on a kernel: its expectation with its overrides applied."""

    expect: Expect
    overrides: tuple[Override, ...]

    def expect_for(
        self,
        kernel_release: str,
        config: str,
        libbpf_version: str = "",
        kernel_btf: bool | None = None,
    ) -> Expect:
        """The expectation on a kernel (`uname -r`, with BTF or not) in a config with a
        libbpf ("1.8"), overrides applied in order."""
        return apply_overrides(
            self.expect,
            self.overrides,
            kernel_release,
            config,
            libbpf_version=libbpf_version,
            kernel_btf=kernel_btf,
        )


@dataclass(frozen=True)
class Case(_Overridden):
    name: str
    object: str
    program: str  # the function name
    section: str  # its SEC()
    prog_type: ProgType
    expect: Expect
    description: str = ""
    requires: Requires = Requires()
    load: LoadOptions = LoadOptions()
    attach: Attach | None = None
    drive: Drive | None = None
    overrides: tuple[Override, ...] = ()
    line: int = field(default=0, compare=False)
    setup_maps: tuple[MapExpect, ...] = ()  # map contents written after the load
    skip: str = ""  # why the case is not run: its cells are SKIPPED with this reason
    # prog array slots filled after the load: (map, index, program of the same object)
    tail_calls: tuple[tuple[str, int, str], ...] = ()

    def retval_name(self, value: int) -> str:
        return sections.retval_name(self.prog_type, self.section, value)


@dataclass(frozen=True)
class UserLoader:
    """The user's own loader: a command run in the guest as it runs on a host (a skeleton
    app, a Go or Rust loader, bpftool), in the scenario's directory (read-only in the
    guest; $TMPDIR is a writable directory of the cell's).  An argument may name an object
    of the scenario, `{object:NAME}`: the path of its build in the guest."""

    argv: tuple[str, ...]  # argv[0] absolute when the scenario gave a path
    cwd: Path  # the scenario's directory
    timeout: float = 60.0  # then its process group is killed: TIMED_OUT
    run_for: float | None = None  # then SIGINT (Ctrl-C), for a loader that runs until stopped
    env: tuple[tuple[str, str], ...] = ()  # added to the guest agent's environment
    command: tuple[str, ...] = ()  # as the scenario wrote it, for reports

    @property
    def shown(self) -> str:
        """The command as a shell would take it, as written in the scenario."""
        return shlex.join(self.command or self.argv)


OBJECT_REF = re.compile(r"\{object:([a-z0-9][a-z0-9._-]{0,63})\}")


@dataclass(frozen=True)
class LoaderCase(_Overridden):
    """A case whose program is loaded by the user's own loader: its exit status is the
    verdict, with the programs it loaded and its output (`Expect.exit_status`, `programs`,
    `stdout`, `stderr`; exit status 0 when not said)."""

    name: str
    loader: UserLoader
    expect: Expect
    description: str = ""
    overrides: tuple[Override, ...] = ()
    line: int = field(default=0, compare=False)
    skip: str = ""  # why the case is not run: its cells are SKIPPED with this reason

    @property
    def objects(self) -> tuple[str, ...]:
        """The scenario's objects its command names ({object:NAME})."""
        return tuple(dict.fromkeys(m for a in self.loader.argv for m in OBJECT_REF.findall(a)))


AnyCase = Case | LoaderCase


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    objects: tuple[BpfObject, ...]
    cases: tuple[Case, ...]  # those that load a program of an object
    description: str = ""
    kernels: tuple[str, ...] = ()  # empty: the catalog's defaults
    configs: tuple[RunConfig, ...] = (RunConfig("default"),)
    topology: Topology = Topology()
    # the loaders as cells record them ("" the default, "system", "debian-X", an absolute
    # path); empty: the default alone
    libbpf: tuple[str, ...] = ()
    loader_cases: tuple[LoaderCase, ...] = ()  # those the user's own loader loads

    def case(self, name: str) -> Case:
        return _named(self.cases, name, "case")

    @property
    def every_case(self) -> tuple[AnyCase, ...]:
        """Its cases and its loader cases, in the file's order: what runs."""
        return tuple(sorted((*self.cases, *self.loader_cases), key=lambda c: c.line))

    def object(self, name: str) -> BpfObject:
        return _named(self.objects, name, "object")

    def config(self, name: str) -> RunConfig:
        return _named(self.configs, name, "config")


_Named = TypeVar("_Named", "Case", "BpfObject", "RunConfig")


def _named(items: tuple[_Named, ...], name: str, kind: str) -> _Named:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"no {kind} named {name!r}")
