"""Scenario files: the YAML a user writes, parsed once into frozen dataclasses.

`check(path)` returns every problem of a file (file:line:column: message (hint)) without
booting anything; `load_scenario(path)` returns the `Scenario` or raises `ScenarioError`
(a ConfigError naming the first problem and carrying all of them).  The language is
documented in docs/scenarios.md; `json_schema()` describes it for editors.

Every name that reaches the guest (netns, devices, cases, cgroup paths) is checked against a
conservative pattern: they become argv elements and directory names there.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from harness import yamlsrc
from harness.bpf import progtypes, sections
from harness.bpf.elfobj import ObjectInfo, read_object, scan_source
from harness.bpf.progtypes import ATTACH_FAMILIES as FAMILIES
from harness.bpf.progtypes import ATTACH_TARGET_TYPES, DRIVES, ProgType
from harness.bpf.sections import SectionMatch
from harness.errors import ConfigError, KitlError, UsageError
from harness.scenario.shape import (
    CASE,
    CONFIG,
    DEV_SPEC,
    EXPECT,
    IFNAME_RULE,
    NAME_SPEC,
    NETDEVSIM,
    OBJECT,
    OVERRIDE,
    SCENARIO,
    VETH,
    Expect,
    ExpectContext,
    MapEntry,
    MapExpect,
    Obj,
    Override,
    Pos,
    Reader,
    Spec,
    VersionRange,
    apply_overrides,
    check_expect,
    describe,
    hex_digits,
    json_schema,
    map_contents,
    parse_version_range,
    read_expect,
    suggest,
    usable,
)
from harness.yamlsrc import LocDict, LocList, where

__all__ = [
    "AutoAttach",
    "BpfObject",
    "Case",
    "CgroupAttach",
    "Endpoint",
    "Expect",
    "LoadOptions",
    "MapEntry",
    "MapExpect",
    "NetdevsimDevice",
    "Override",
    "PacketSpec",
    "Requires",
    "RunConfig",
    "Scenario",
    "ScenarioError",
    "SocketAttach",
    "SyscallDrive",
    "TcAttach",
    "TcxAttach",
    "TestRunDrive",
    "Topology",
    "TrafficDrive",
    "VersionRange",
    "VethPair",
    "XdpAttach",
    "check",
    "json_schema",
    "load_scenario",
]

DEFAULT_LOG_LEVEL = 5  # BPF_LOG_LEVEL1 | BPF_LOG_STATS
# Fields of struct xdp_md / struct __sk_buff that test_run's ctx: may set by name.
CTX_FIELDS = {
    "struct xdp_md": ("ingress_ifindex", "rx_queue_index"),
    "struct __sk_buff": (
        "mark", "priority", "ingress_ifindex", "ifindex", "cb", "tstamp", "wire_len",
        "gso_segs", "gso_size", "hwtstamp",
    ),
}  # fmt: skip
_CTX_BY_NAME = frozenset({"xdp", "sched_cls", "sched_act", "socket_filter", "cgroup_skb"})


class ScenarioError(ConfigError):
    """The first problem of a scenario file (as str()), with all of them in `errors`."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        more = len(errors) - 1
        hint = first.hint
        if more:
            extra = f"{more} more problem{'s' if more > 1 else ''} in this file"
            hint = f"{hint}; {extra}" if hint else extra
        KitlError.__init__(self, first.message, hint=hint)
        self.path, self.line, self.column = first.path, first.line, first.column
        self.errors = tuple(errors)


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

    def as_dict(self) -> dict[str, Any]:
        """The spec harness.bpf.packet.build() takes (the YAML's own shape)."""

        def pick(**values: Any) -> dict[str, Any]:
            return {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in values.items()
                if v is not None
            }

        out: dict[str, Any] = {"payload_size": self.payload_size}
        out["eth"] = pick(src=self.eth_src, dst=self.eth_dst, type=self.eth_type)
        if self.l3 is not None:
            hop = "ttl" if self.l3 == "ipv4" else "hop_limit"
            out[self.l3] = pick(src=self.src, dst=self.dst, **{hop: self.ttl})
        if self.l4 == "icmp":
            out["icmp"] = pick(type=self.icmp_type, code=self.icmp_code)
        elif self.l4 is not None:
            out[self.l4] = pick(sport=self.sport, dport=self.dport)
        if self.l4 == "tcp":
            out["tcp"].update(
                pick(
                    flags=self.tcp_flags, seq=self.tcp_seq, ack=self.tcp_ack, window=self.tcp_window
                )
            )
        return out


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


@dataclass(frozen=True)
class Case:
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

    def retval_name(self, value: int) -> str:
        return sections.retval_name(self.prog_type, self.section, value)


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    objects: tuple[BpfObject, ...]
    cases: tuple[Case, ...]
    description: str = ""
    kernels: tuple[str, ...] = ()  # empty: the catalog's defaults
    configs: tuple[RunConfig, ...] = (RunConfig("default"),)
    topology: Topology = Topology()
    # the loaders as cells record them ("" the default, "system", "debian-X", an absolute
    # path); empty: the default alone
    libbpf: tuple[str, ...] = ()

    def case(self, name: str) -> Case:
        return _named(self.cases, name, "case")

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


# --- entry points ------------------------------------------------------------------------


def check(path: Path, *, allow_outside: bool = False) -> list[ConfigError]:
    """Every problem of the scenario at `path`, in file order; [] if it is valid."""
    return _parse(path, allow_outside)[1]


def load_scenario(path: Path, *, allow_outside: bool = False) -> Scenario:
    """Parse and check.  Files the scenario names are resolved relative to it and must stay
    inside its directory unless `allow_outside`."""
    scenario, errors = _parse(path, allow_outside)
    if errors or scenario is None:
        raise ScenarioError(errors or [ConfigError("invalid scenario", path=path)])
    return scenario


def _parse(path: Path, allow_outside: bool) -> tuple[Scenario | None, list[ConfigError]]:
    try:
        doc = yamlsrc.load(path)
    except ConfigError as exc:  # yamlsrc turns every malformed document into one
        return None, [exc]
    parser = _Parser(path, allow_outside)
    scenario = parser.scenario(doc)
    unique = {str(e): e for e in parser.rd.errors}.values()
    errors = sorted(unique, key=lambda e: (e.line or 0, e.column or 0))
    return (None if errors else scenario), errors


# --- the checks a shape cannot express ---------------------------------------------------


def _fits(value: object, spec: Spec) -> bool:
    return Reader(Path()).validate(value, spec, "", {})


def _ok(d: LocDict, key: str, spec: Obj) -> bool:
    """`key` is present in `d` and has the shape `spec` gives it (problems already reported)."""
    return key in d and _fits(d[key], spec.field(key))


def _only_key(node: object, choices: tuple[str, ...]) -> str | None:
    if isinstance(node, LocDict) and len(node) == 1 and next(iter(node)) in choices:
        return str(next(iter(node)))
    return None


def _body(d: LocDict, key: str) -> LocDict:
    """`d[key]`, a mapping or null (then an empty mapping at null's position)."""
    value = d[key]
    if isinstance(value, LocDict):
        return value
    out = LocDict()
    at = where(d, key, value=True)
    out.path, out.line, out.column = at["path"], at["line"], at["column"]
    out.key_pos, out.value_pos = {}, {}
    return out


def _items(d: LocDict, key: str) -> list[Any]:
    value = d.get(key)
    return value if isinstance(value, LocList) else []


def _ns_text(ns: str | None) -> str:
    return f"netns {ns!r}" if ns else "the root namespace"


class _Parser:
    def __init__(self, path: Path, allow_outside: bool) -> None:
        self.path = path
        self.rd = Reader(path)
        self.base = path.parent.resolve()
        self.allow_outside = allow_outside
        self.configs: tuple[RunConfig, ...] = (RunConfig("default"),)
        self.objects: dict[str, BpfObject | None] = {}
        self.topology = Topology()
        self.name = "scenario"

    def scenario(self, doc: object) -> Scenario | None:
        rd = self.rd
        if not isinstance(doc, LocDict):
            msg = f"expected a mapping with keys name, objects and cases, got {describe(doc)}"
            at = where(doc) if isinstance(doc, LocList) else {"path": self.path, "line": 1}
            rd.error(msg, at)
            return None
        rd.validate(doc, SCENARIO, "", where(doc))
        self.name = doc["name"] if _ok(doc, "name", SCENARIO) else "scenario"
        if isinstance(configs := doc.get("configs"), LocDict):
            self.configs = tuple(
                RunConfig(name, tuple(((body or {}).get("sysctl") or {}).items()))
                for name, body in configs.items()
                if _fits(name, NAME_SPEC) and _fits(body, CONFIG)
            )
        if isinstance(objects := doc.get("objects"), LocDict):
            for name, body in objects.items():
                self.objects[name] = self._object(name, body, objects)
        if isinstance(topology := doc.get("topology"), LocDict):
            self.topology = self._topology(topology)
        cases: list[Case | None] = []
        if isinstance(items := doc.get("cases"), LocList):
            cases = [_CaseParser(self, i).parse(c) for i, c in enumerate(items)]
            self._unique_cases(items, cases)
        if rd.errors:
            return None
        return Scenario(
            self.name,
            self.path,
            tuple(o for o in self.objects.values() if o is not None),
            tuple(c for c in cases if c is not None),
            doc.get("description", ""),
            tuple(doc.get("kernels", ())),
            self.configs,
            self.topology,
            self._loaders(doc),
        )

    def _loaders(self, doc: LocDict) -> tuple[str, ...]:
        """The scenario's `libbpf:` list: default, system and debian-X as they are, anything
        else a libbpf.so file relative to the scenario (inside its directory)."""
        if not _ok(doc, "libbpf", SCENARIO):
            return ()
        loaders: list[str] = []
        for i, name in enumerate(doc["libbpf"]):
            if name == "default":
                loaders.append("")
            elif name == "system" or re.fullmatch(r"debian-[A-Za-z0-9._+-]{1,64}", name):
                loaders.append(name)
            else:
                file = self.file_at(name, where(doc["libbpf"], i), f"libbpf[{i}]")
                if file is not None:
                    loaders.append(str(file))
        return tuple(loaders)

    def _unique_cases(self, node: LocList, cases: list[Case | None]) -> None:
        first: dict[str, int] = {}
        for i, case in enumerate(cases):
            if case is None:
                continue
            if case.name in first:
                msg = f"cases[{i}].name: duplicate case name {case.name!r}"
                at = where(node[i], "name", value=True)
                self.rd.error(f"{msg} (first on line {first[case.name]})", at)
            first.setdefault(case.name, case.line)

    def ns(self, d: LocDict, key: str, what: str) -> tuple[bool, str | None]:
        """(ok, namespace) of an optional netns reference `d[key]` (shape already checked)."""
        ns = d.get(key)
        if ns is None or ns in self.topology.netns:
            return True, ns
        known = self.topology.netns
        hint = suggest(ns, known) if known else "declare it in topology.netns"
        self.rd.error(f"{what}.{key}: unknown netns {ns!r}", where(d, key, value=True), hint)
        return False, None

    def file(self, d: LocDict, key: str, what: str) -> Path | None:
        return self.file_at(d[key], where(d, key, value=True), f"{what}.{key}")

    def file_at(self, raw: str, at: dict[str, Any], what: str) -> Path | None:
        """An existing file named relative to the scenario, inside its directory unless
        allow_outside; else None and the error at `at`."""
        try:
            resolved = (self.base / raw).resolve() if raw.strip() else None
        except (OSError, RuntimeError, ValueError):
            resolved = None
        if resolved is None:
            self.rd.error(f"{what}: bad path {raw[:80]!r}", at)
        elif not self.allow_outside and not resolved.is_relative_to(self.base):
            hint = "keep sources and objects in its directory, or pass allow_outside=True"
            msg = f"{what}: {raw[:80]!r} is outside the scenario's directory {self.base}"
            self.rd.error(msg, at, hint)
        elif not resolved.is_file():
            self.rd.error(f"{what}: no such file {raw[:80]!r}", at, f"looked for {resolved}")
        else:
            return resolved
        return None

    def _object(self, name: str, body: object, parent: LocDict) -> BpfObject | None:
        rd, what = self.rd, f"objects.{name}"
        if not _fits(name, NAME_SPEC) or not isinstance(body, LocDict) or not _fits(body, OBJECT):
            return None
        if ("source" in body) == ("path" in body):
            msg = f"{what}: give exactly one of 'source' (a .c file) or 'path' (a .o file)"
            rd.error(msg, where(parent, name))
            return None
        if "cflags" in body and "path" in body:
            rd.error(f"{what}.cflags: only a 'source' object is compiled", where(body, "cflags"))
            return None
        key = "source" if "source" in body else "path"
        file = self.file(body, key, what)
        if file is None:
            return None
        try:
            info = scan_source(file) if key == "source" else read_object(file)
        except ValueError as exc:
            rd.error(f"{what}.{key}: {exc}", where(body, key, value=True))
            return None
        if not info.programs:
            msg = f'{what}.{key}: no programs found (no SEC("...") functions)'
            rd.error(msg, where(body, key, value=True))
            return None
        source, compiled = (file, None) if key == "source" else (None, file)
        return BpfObject(name, source, compiled, tuple(body.get("cflags", ())), info)

    def _topology(self, d: LocDict) -> Topology:
        netns = d.get("netns")
        if isinstance(netns, LocList):
            names = tuple(dict.fromkeys(n for n in netns if _fits(n, NAME_SPEC)))
            self.topology = Topology(names)
        veth: list[VethPair] = []
        owners: dict[str, str] = {}  # address -> device
        devices: set[tuple[str, str | None]] = set()
        for i, item in enumerate(_items(d, "veth")):
            if not _fits(item, VETH):
                continue
            what = f"topology.veth[{i}]"
            ends = [self._endpoint(item, k, what) for k in ("a", "b")]
            for key, end in zip(("a", "b"), ends, strict=True):
                at = where(item, key, value=True)
                if end is not None and (end.ifname, end.ns) in devices:
                    self.rd.error(
                        f"{what}.{key}: {end.ifname!r} is already in {_ns_text(end.ns)}", at
                    )
                if end is not None and end.ip in owners:
                    self.rd.error(
                        f"{what}.{key}: address {end.ip} is already {owners[end.ip]}'s", at
                    )
                if end is not None:
                    devices.add((end.ifname, end.ns))
                    if end.ip:
                        owners.setdefault(end.ip, end.ifname)
            if ends[0] is not None and ends[1] is not None:
                veth.append(VethPair(ends[0], ends[1]))
        nsim: list[NetdevsimDevice] = []
        for i, item in enumerate(_items(d, "netdevsim")):
            if not _fits(item, NETDEVSIM):
                continue
            ok, ns = self.ns(item, "ns", f"topology.netdevsim[{i}]")
            device = NetdevsimDevice(item["id"], item.get("ports", 1), ns)
            taken = [n for n in device.ifnames if (n, ns) in devices]
            if any(n.id == device.id for n in nsim) or taken:
                msg = (
                    f"duplicate netdevsim id {device.id}" if not taken else f"{taken[0]!r} is taken"
                )
                self.rd.error(f"topology.netdevsim[{i}].id: {msg}", where(item, "id", value=True))
            elif ok:
                nsim.append(device)
        return Topology(self.topology.netns, tuple(veth), tuple(nsim))

    def _endpoint(self, d: LocDict, key: str, what: str) -> Endpoint | None:
        text: str = d[key]
        ifname, _, rest = text.partition("/")
        ifname, _, ns = ifname.partition("@")
        at = where(d, key, value=True)
        rule = 'IFNAME[@NETNS][/ADDRESS/PREFIX], e.g. "v1@b/10.0.0.2/24"'
        if not _fits(ifname, DEV_SPEC):
            self.rd.error(
                f"{what}.{key}: bad device name {ifname[:40]!r}", at, f"{rule}; {IFNAME_RULE}"
            )
            return None
        if ns and ns not in self.topology.netns:
            known = self.topology.netns
            hint = suggest(ns, known) if known else "declare it in topology.netns"
            self.rd.error(f"{what}.{key}: unknown netns {ns[:40]!r}", at, hint)
            return None
        address = None
        if rest:
            try:
                address = str(ipaddress.ip_interface(rest))
            except ValueError as exc:
                why = "" if rest in str(exc) else f": {exc}"
                self.rd.error(f"{what}.{key}: bad address {rest[:60]!r}{why}", at, rule)
                return None
        return Endpoint(ifname, ns or None, address)


class _CaseParser:
    """One entry of `cases:` (its shape already checked); knows the program's section once
    `program:` is resolved."""

    def __init__(self, parser: _Parser, index: int) -> None:
        self.p = parser
        self.rd = parser.rd
        self.what = f"cases[{index}]"
        self.match: SectionMatch | None = None
        self.obj: BpfObject | None = None

    def parse(self, d: object) -> Case | None:
        if not isinstance(d, LocDict):
            return None
        errors = len(self.rd.errors)
        shape_ok = _fits(d, CASE)
        name: str = d["name"] if _ok(d, "name", CASE) else "case"
        program = self._program(d) if _ok(d, "program", CASE) else None
        requires = self._requires(d["requires"]) if "requires" in d else Requires()
        load = self._load(d) if "load" in d else LoadOptions()
        attach = self._attach(d, name) if _ok(d, "attach", CASE) else None
        drive = self._drive(d, attach) if _ok(d, "drive", CASE) else None
        if isinstance(attach, SocketAttach) and not isinstance(drive, TrafficDrive):
            msg = f"{self.what}.attach.socket: a socket filter needs a traffic drive"
            hint = "it sits on the receiving socket; or omit attach: and drive with test_run"
            self.rd.error(msg, where(d, "attach"), hint)
        expectations = (
            self._expectations(d, attach, drive, load)
            if isinstance(d.get("expect"), LocDict)
            else None
        )
        if not shape_ok or len(self.rd.errors) > errors or not program or not expectations:
            return None
        assert self.match is not None
        expect, overrides = expectations
        obj, prog, section = program
        return Case(
            name, obj, prog, section, self.match.prog_type, expect, d.get("description", ""),
            requires, load, attach, drive, overrides, line=d.line,
            setup_maps=self._setup(d) if "setup" in d else (),
            tail_calls=self._tail_calls(d) if "setup" in d else (),
        )  # fmt: skip

    def _program(self, d: LocDict) -> tuple[str, str, str] | None:
        rd, what, at = self.rd, f"{self.what}.program", where(d, "program", value=True)
        obj_name, prog_name = d["program"].split("/")
        if obj_name not in self.p.objects:
            if not self.p.objects:
                return None  # no usable objects: that is reported already
            rd.error(
                f"{what}: unknown object {obj_name!r}", at, suggest(obj_name, list(self.p.objects))
            )
            return None
        obj = self.p.objects[obj_name]
        if obj is None or obj.info is None:
            return None  # the object's own problem is reported
        prog = obj.info.program(prog_name)
        if prog is None:
            names = obj.info.program_names()
            hint = suggest(prog_name, names, "programs")
            file = (obj.source or obj.path or Path()).name
            rd.error(f"{what}: object {obj_name!r} ({file}) has no program {prog_name!r}", at, hint)
            return None
        match = sections.match_section(prog.section)
        if match is None:
            msg = f'{what}: libbpf has no program type for SEC("{prog.section}") of {prog_name}'
            rd.error(
                msg,
                at,
                'e.g. SEC("xdp"), SEC("tc"), SEC("kprobe/do_unlinkat"); see docs/scenarios.md',
            )
            return None
        self.match, self.obj = match, obj
        return obj_name, prog_name, prog.section

    def _requires(self, m: object) -> Requires:
        if not isinstance(m, LocDict) or not _fits(m, CASE.field("requires")):
            return Requires()
        helpers = tuple(h if h.startswith("bpf_") else f"bpf_{h}" for h in m.get("helpers", ()))
        return Requires(
            helpers, tuple(m.get("prog_types", ())), tuple(m.get("map_types", ())),
            tuple(m.get("kfuncs", ())), m.get("btf", False), tuple(m.get("attach_types", ())),
            self._libbpf_range(m, "libbpf", f"{self.what}.requires"),
        )  # fmt: skip

    def _libbpf_range(self, m: LocDict, key: str, what: str) -> VersionRange | None:
        """A range of libbpf versions, e.g. ">=1.3" (reported and None when malformed)."""
        if key not in m:
            return None
        try:
            return parse_version_range(m[key])
        except ValueError as exc:
            self.rd.error(
                f"{what}.{key}: {exc}", where(m, key, value=True), 'e.g. ">=1.3" or "<1.3"'
            )
            return None

    def _load(self, d: LocDict) -> LoadOptions:
        m = d["load"]
        if not isinstance(m, LocDict) or not _fits(m, CASE.field("load")):
            return LoadOptions()
        btf = (
            self.p.file(m, "btf_custom_path", f"{self.what}.load")
            if "btf_custom_path" in m
            else None
        )
        level = m.get("log_level", DEFAULT_LOG_LEVEL)
        presets = tuple((m.get("globals") or {}).items())
        external = m.get("btf") == "external"
        if external and "btf_custom_path" in m:
            msg = f"{self.what}.load.btf: give btf: external or btf_custom_path, not both"
            self.rd.error(msg, where(m, "btf"))
        sizes = tuple(
            (name, size.get("max_entries"), size.get("value_size"))
            for name, size in (m.get("maps") or {}).items()
        )
        self._check_load_names(m)
        return LoadOptions(
            level,
            m.get("log_size"),
            tuple(m.get("flags", ())),
            btf,
            globals=presets,
            external_btf=external,
            maps=sizes,
            fixups=m.get("fixups", True),
            pinning=m.get("pinning", "on") == "on",
            pin_root=m.get("pin_root"),
            attach_target=m.get("attach_target"),
            companions=tuple(m.get("companions") or ()),
            privilege=m.get("privilege", "privileged"),
        )

    def _setup(self, d: LocDict) -> tuple[MapExpect, ...]:
        """`setup: {maps: {...}}`: map contents written after the load, checked like the
        map contents an expectation names."""
        m = d["setup"]
        if not isinstance(m, LocDict) or not isinstance(m.get("maps"), LocDict):
            return ()
        info = self.obj.info if self.obj else None
        maps = info.maps if info is not None and (info.compiled or info.maps) else None
        ctx = ExpectContext(self.match, maps, None, None, DEFAULT_LOG_LEVEL)
        return map_contents(self.rd, m["maps"], ctx, f"{self.what}.setup.maps")

    def _tail_calls(self, d: LocDict) -> tuple[tuple[str, int, str], ...]:
        """`setup: {tail_calls: {MAP: {SLOT: PROGRAM}}}`, the programs the object's."""
        m = d["setup"]
        table = m.get("tail_calls") if isinstance(m, LocDict) else None
        if not isinstance(table, LocDict):
            return ()
        info = self.obj.info if self.obj else None
        programs = info.program_names() if info is not None else []
        out = []
        for map_name, slots in table.items():
            for slot, program in (slots or {}).items():
                if programs and program not in programs:
                    self.rd.error(
                        f"{self.what}.setup.tail_calls.{map_name}: the object has no program "
                        f"{program!r}",
                        where(slots, slot, value=True),
                        suggest(program, programs, "programs"),
                    )
                out.append((map_name, int(slot), program))
        return tuple(out)

    def _check_load_names(self, m: LocDict) -> None:
        """Maps sized and an attach target set must be the object's and fit the program."""
        info = self.obj.info if self.obj is not None else None
        if info is not None and info.compiled and info.maps:
            for name in m.get("maps") or {}:
                if name not in info.maps:
                    self.rd.error(
                        f"{self.what}.load.maps: the object has no map {name!r}",
                        where(m["maps"], name),
                        suggest(name, list(info.maps), "maps"),
                    )
        programs = info.program_names() if info is not None else []
        for name in m.get("companions") or ():
            if name != "*" and programs and name not in programs:
                self.rd.error(
                    f"{self.what}.load.companions: the object has no program {name!r}",
                    where(m, "companions"),
                    suggest(name, programs, "programs"),
                )
        pt = self.match.prog_type if self.match is not None else None
        if "attach_target" in m and pt is not None and pt.name not in ATTACH_TARGET_TYPES:
            self.rd.error(
                f"{self.what}.load.attach_target: {pt.article} {pt.name} program has no "
                "attach target to set",
                where(m, "attach_target"),
                progtypes.ATTACH_TARGET_HINT,
            )

    # -- attach

    def _attach(self, d: LocDict, case: str) -> Attach | None:
        family = next(iter(d["attach"]))
        what, at = f"{self.what}.attach.{family}", where(d["attach"], family)
        b = _body(d["attach"], family)
        if self.match is not None:
            pt = self.match.prog_type
            if family not in pt.families:
                hint = (
                    f"{pt.name} programs attach with: {', '.join(pt.families)}"
                    if pt.families
                    else f"kitl attaches no {pt.name} programs; omit attach:"
                )
                self.rd.error(
                    f"{what}: {pt.article} {pt.name} program cannot be attached with {family!r}",
                    at,
                    hint,
                )
                return None
        if family == "auto":
            return self._auto(what, at)
        if family == "socket":
            ok, ns = self.p.ns(b, "ns", what)
            return SocketAttach(ns) if ok else None
        if family == "cgroup":
            direction = self._direction(b, what) if self._is("cgroup_skb") else None
            if "direction" in b and not self._is("cgroup_skb"):
                self.rd.error(
                    f"{what}.direction: only cgroup_skb programs have a direction",
                    where(b, "direction"),
                )
            elif direction is not None or not self._is("cgroup_skb"):
                return CgroupAttach(b.get("path", f"kitl/{self.p.name}/{case}"), direction)
            return None
        found = self._dev(b, "dev", what)
        if family == "xdp":
            mode = b.get("mode")
            if found and mode == "hw" and found[2] != "netdevsim":
                self.rd.error(
                    f"{what}.mode: hw (offload) mode needs a netdevsim port",
                    where(b, "mode", value=True),
                    "veth refuses XDP_FLAGS_HW_MODE with EINVAL",
                )
                return None
            return XdpAttach(found[0], found[1], mode) if found else None
        direction = self._direction(b, what)
        if found is None or direction is None:
            return None
        return (TcAttach if family == "tc" else TcxAttach)(found[0], direction, found[1])

    def _is(self, prog_type: str) -> bool:
        return self.match is not None and self.match.prog_type.name == prog_type

    def _auto(self, what: str, at: Pos) -> AutoAttach | None:
        m = self.match
        if m is not None and not (m.definition.auto and sections.section_target(m.section)):
            why = (
                "names no attach target"
                if m.definition.auto
                else "cannot be attached by libbpf alone"
            )
            self.rd.error(
                f'{what}: SEC("{m.section}") {why}',
                at,
                'auto attach needs a target in the section, e.g. SEC("kprobe/do_unlinkat")',
            )
            return None
        return AutoAttach()

    def _dev(self, b: LocDict, key: str, what: str) -> tuple[str, str | None, str] | None:
        """(ifname, ns, kind) of the device `b[key]` (+ optional `ns:`) names."""
        ok, ns = self.p.ns(b, "ns", what)
        dev: str = b[key]
        if not ok:
            return None
        if dev == "lo":
            return dev, ns, "lo"
        devices = self.p.topology.devices()
        found = [(n, k) for name, n, k in devices if name == dev and ("ns" not in b or n == ns)]
        if len(found) == 1:
            return dev, found[0][0], found[0][1]
        at = where(b, key, value=True)
        if found:
            self.rd.error(
                f"{what}.{key}: {dev!r} exists in several namespaces", at, "add ns: to say which"
            )
            return None
        known = [f"{name} ({_ns_text(n)})" for name, n, _ in devices]
        hint = (
            "devices: " + ", ".join(known)
            if known
            else "declare it in topology.veth or topology.netdevsim"
        )
        self.rd.error(
            f"{what}.{key}: no device {dev!r}" + (f" in netns {ns!r}" if ns else ""), at, hint
        )
        return None

    def _direction(self, b: LocDict, what: str) -> Literal["ingress", "egress"] | None:
        section = self.match.section if self.match else ""
        fixed = sections.section_direction(section)
        given = b.get("direction")
        if given is None and fixed is None:
            hint = f'SEC("{section}") does not fix one' if section else None
            self.rd.error(
                f"{what}: missing required key 'direction' (ingress or egress)", where(b), hint
            )
            return None
        if given and fixed and given != fixed:
            self.rd.error(
                f'{what}.direction: SEC("{section}") is an {fixed} program',
                where(b, "direction", value=True),
            )
            return None
        return "egress" if (given or fixed) == "egress" else "ingress"

    # -- drive

    def _drive(self, d: LocDict, attach: Attach | None) -> Drive | None:
        kind = next(iter(d["drive"]))
        what, at = f"{self.what}.drive.{kind}", where(d["drive"], kind)
        b = _body(d["drive"], kind)
        pt = self.match.prog_type if self.match else None
        if pt is not None and kind not in pt.drives:
            if kind == "test_run" and not pt.test_run:
                msg = f"BPF_PROG_TEST_RUN does not run {pt.name} programs (ENOTSUPP)"
            else:
                msg = f"{pt.article} {pt.name} program cannot be driven with {kind}"
            hint = (
                f"{pt.name} programs are driven with: {', '.join(pt.drives)}"
                if pt.drives
                else "omit drive: to test loading only"
            )
            self.rd.error(f"{what}: {msg}", at, hint)
            return None
        if kind != "test_run" and "attach" not in d:
            self.rd.error(
                f"{what}: a {kind} drive needs attach:",
                at,
                "the program only sees what it is attached to",
            )
            return None
        if kind == "test_run":
            return self._test_run(b, what, pt)
        if kind == "traffic":
            return self._traffic(b, what, attach)
        ok, ns = self.p.ns(b, "ns", what)
        return self._syscall(b, what, ns) if ok else None

    def _syscall(self, b: LocDict, what: str, ns: str | None) -> SyscallDrive | None:
        given = [a for a in SYSCALL_ACTIONS if a in b]
        if len(given) != 1:
            listed = ", ".join(given) if given else "none"
            self.rd.error(
                f"{what}: exactly one of {', '.join(SYSCALL_ACTIONS)} (got {listed})",
                where(b, given[1]) if len(given) > 1 else where(b),
                "run: [ARGV] runs a command; the others are done by the agent itself",
            )
            return None
        action = given[0]
        body = b[action]
        if action in ("run", "execve"):
            return SyscallDrive(action, argv=tuple(body), ns=ns)
        if action == "unlink":
            return SyscallDrive(action, path=body, ns=ns)
        if action == "open":
            if isinstance(body, str):
                return SyscallDrive(action, path=body, ns=ns)
            return SyscallDrive(
                action,
                path=body["path"],
                write=body.get("mode", "read") == "write",
                create=bool(body.get("create", False)),
                ns=ns,
            )
        return SyscallDrive(
            "connect", to=body["to"], port=body["port"], proto=body.get("proto", "tcp"), ns=ns
        )

    def _test_run(self, b: LocDict, what: str, pt: ProgType | None) -> TestRunDrive | None:
        rd, errors = self.rd, len(self.rd.errors)
        for one, other in (("packet", "hex"), ("ctx", "ctx_hex")):
            if one in b and other in b:
                rd.error(f"{what}: give {one} or {other}, not both", where(b, other))
        data_key = "packet" if "packet" in b else "hex" if "hex" in b else None
        data = bytes.fromhex(hex_digits(b["hex"])) if "hex" in b else None
        if pt is not None and pt.test_run_data and data_key is None:
            rd.error(
                f"{what}: test_run of {pt.article} {pt.name} program needs packet: or hex:",
                where(b),
                "at least 14 bytes: an Ethernet header",
            )
        elif pt is not None and not pt.test_run_data and data_key is not None:
            rd.error(
                f"{what}.{data_key}: test_run of {pt.name} programs takes no packet data",
                where(b, data_key),
                "give its context with ctx_hex:",
            )
        elif data is not None and len(data) < 14:
            rd.error(
                f"{what}.hex: {len(data)} bytes; test_run needs at least 14 (an Ethernet header)",
                where(b, "hex", value=True),
            )
        packet = self._packet(b["packet"], f"{what}.packet") if "packet" in b else None
        ctx = self._ctx(b["ctx"], f"{what}.ctx", pt, where(b, "ctx")) if "ctx" in b else ()
        dev = self._ingress(b, what, pt, ctx) if "ingress_dev" in b else None
        if len(rd.errors) > errors:
            return None
        ctx_data = bytes.fromhex(hex_digits(b["ctx_hex"])) if "ctx_hex" in b else None
        return TestRunDrive(
            packet, data, ctx, ctx_data, b.get("repeat", 1), dev[0] if dev else None,
            dev[1] if dev else None,
        )  # fmt: skip

    def _ctx(
        self, m: LocDict, what: str, pt: ProgType | None, at: Pos
    ) -> tuple[tuple[str, Any], ...]:
        if pt is None:  # unknown program: reported already
            return ()
        if pt.name not in _CTX_BY_NAME:
            self.rd.error(
                f"{what}: named ctx fields are for xdp and skb programs",
                at,
                "give the context with ctx_hex:",
            )
            return ()
        struct = pt.ctx
        for key in m:
            if key not in CTX_FIELDS[struct]:
                self.rd.error(
                    f"{what}: {key!r} is not a {struct} field kitl sets",
                    where(m, key),
                    "fields: " + ", ".join(CTX_FIELDS[struct]),
                )
        return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in m.items())

    def _ingress(
        self, b: LocDict, what: str, pt: ProgType | None, ctx: tuple[tuple[str, Any], ...]
    ) -> tuple[str, str | None] | None:
        at = where(b, "ingress_dev")
        if pt is not None and pt.name not in _CTX_BY_NAME:
            self.rd.error(
                f"{what}.ingress_dev: only xdp and skb programs take an ingress device", at
            )
        elif any(name == "ingress_ifindex" for name, _ in ctx):
            self.rd.error(f"{what}.ingress_dev: ctx.ingress_ifindex is given too", at)
        elif found := self._dev(b, "ingress_dev", what):
            return found[0], found[1]
        return None

    def _packet(self, m: LocDict, what: str) -> PacketSpec | None:
        l3 = [k for k in ("ipv4", "ipv6") if k in m]
        l4 = [k for k in ("udp", "tcp", "icmp") if k in m]
        if len(l3) > 1 or len(l4) > 1:
            self.rd.error(f"{what}: at most one of ipv4/ipv6 and one of udp/tcp/icmp", where(m))
            return None
        if l4 and not l3:
            self.rd.error(f"{what}.{l4[0]}: needs ipv4: or ipv6: beside it", where(m, l4[0]))
            return None
        spec: dict[str, Any] = {f"eth_{k}": v for k, v in (m.get("eth") or {}).items()}
        if "payload_size" in m:
            spec["payload_size"] = m["payload_size"]
        if l3:
            spec["l3"] = l3[0]
            b = _body(m, l3[0])
            spec.update(ttl=b.get("ttl", b.get("hop_limit")))
            for end in ("src", "dst"):
                spec[end] = self._ip(b, end, l3[0], f"{what}.{l3[0]}") if end in b else None
        if l4:
            b = _body(m, l4[0])
            spec.update(l4=l4[0], sport=b.get("sport"), dport=b.get("dport"))
            spec.update(icmp_type=b.get("type"), icmp_code=b.get("code"))
            flags = b.get("flags")
            spec["tcp_flags"] = (flags,) if isinstance(flags, str) else flags and tuple(flags)
            spec.update({f"tcp_{k}": b.get(k) for k in ("seq", "ack", "window")})
        return PacketSpec(**spec)

    def _ip(self, b: LocDict, end: str, family: str, what: str) -> str | None:
        try:
            addr = ipaddress.ip_address(b[end])
            if addr.version != int(family[-1]):
                raise ValueError(f"not an {family} address")
            return str(addr)
        except ValueError as exc:
            self.rd.error(f"{what}.{end}: {b[end][:60]!r}: {exc}", where(b, end, value=True))
            return None

    def _traffic(self, b: LocDict, what: str, attach: Attach | None) -> TrafficDrive | None:
        rd, errors = self.rd, len(self.rd.errors)
        ok, from_ns = self.p.ns(b, "from", what)
        proto = b["proto"]
        if proto != "icmp" and "port" not in b:
            rd.error(
                f"{what}: missing required key 'port' (the {proto} destination port)", where(b)
            )
        elif proto == "icmp" and "port" in b:
            rd.error(f"{what}.port: icmp has no ports", where(b, "port"))
        target = self._target(b, what)
        if isinstance(attach, SocketAttach) and target and attach.ns and attach.ns != target.ns:
            msg = f"{what}.to: {target.ip} is in {_ns_text(target.ns)}, the socket in {attach.ns!r}"
            rd.error(msg, where(b, "to", value=True))
        if len(rd.errors) > errors or not ok or target is None or target.ip is None:
            return None
        return TrafficDrive(
            target.ip,
            proto,
            from_ns,
            target.ns,
            b.get("port"),
            b.get("count", 1),
            b.get("size", 64),
        )

    def _target(self, b: LocDict, what: str) -> Endpoint | None:
        at = where(b, "to", value=True)
        try:
            ip = str(ipaddress.ip_address(b["to"]))
        except ValueError:
            self.rd.error(f"{what}.to: {b['to'][:60]!r} is not an IP address", at)
            return None
        end = self.p.topology.endpoint_for(ip)
        if end is None:
            known = [
                f"{e.ip} ({e.ifname})" for p in self.p.topology.veth for e in (p.a, p.b) if e.ip
            ]
            hint = (
                "addresses: " + ", ".join(known)
                if known
                else "give a veth endpoint an address, e.g. v1@b/10.0.0.2/24"
            )
            self.rd.error(f"{what}.to: no endpoint of the topology has address {ip}", at, hint)
        return end

    # -- expectations

    def _expectations(
        self, d: LocDict, attach: Attach | None, drive: Drive | None, load: LoadOptions
    ) -> tuple[Expect, tuple[Override, ...]] | None:
        what = f"{self.what}.expect"
        info = self.obj.info if self.obj else None
        maps = info.maps if info is not None and (info.compiled or info.maps) else None
        # What the case asks for, even when its own shape is wrong (no follow-on errors).
        kinds = [_only_key(d.get(k), v) for k, v in (("drive", DRIVES), ("attach", FAMILIES))]
        action = drive.action if isinstance(drive, SyscallDrive) else None
        ctx = ExpectContext(self.match, maps, kinds[0], kinds[1], load.log_level, action)
        if not isinstance(d["expect"], LocDict):
            return None
        expect = read_expect(self.rd, d["expect"], ctx, what)
        if expect is None:
            return None
        base_at = {k: where(d["expect"], k) for k in d["expect"]}
        check_expect(self.rd, expect, lambda k: base_at.get(k, where(d, "expect")), ctx, what)
        overrides = []
        items = d.get("overrides")
        for j, item in enumerate(items if isinstance(items, LocList) else ()):
            override = self._override(item, f"{self.what}.overrides[{j}]", ctx, expect, base_at)
            if override is not None:
                overrides.append(override)
        return expect, tuple(overrides)

    def _override(
        self, m: LocDict, what: str, ctx: ExpectContext, base: Expect, base_at: dict[str, Pos]
    ) -> Override | None:
        rd = self.rd
        if not isinstance(m, LocDict) or not isinstance(m.get("expect"), LocDict):
            return None
        when = m.get("when")
        if not _fits(when, OVERRIDE.field("when")):
            when = LocDict()  # reported; the expectation is still checked
        elif not when:
            msg = f"{what}.when: give kernel:, config:, libbpf: and/or btf:"
            rd.error(msg, where(m, "when", value=True))
            return None
        libbpf = self._libbpf_range(when, "libbpf", f"{what}.when")
        if "libbpf" in when and libbpf is None:
            return None
        kernel = None
        if "kernel" in when:
            try:
                kernel = parse_version_range(when["kernel"])
            except ValueError as exc:
                rd.error(
                    f"{what}.when.kernel: {exc}",
                    where(when, "kernel", value=True),
                    'e.g. "<5.17", ">=6.6" or ">=5.10,<6.1"',
                )
                return None
        configs = (
            (when["config"],)
            if isinstance(when.get("config"), str)
            else tuple(when.get("config", ()))
        )
        known = [c.name for c in self.p.configs]
        for name in configs:
            if name not in known:
                rd.error(
                    f"{what}.when.config: unknown config {name!r}",
                    where(when, "config", value=True),
                    suggest(name, known),
                )
                return None
        expect = read_expect(rd, m["expect"], ctx, f"{what}.expect")
        if expect is None:
            return None
        own_at = {k: where(m["expect"], k) for k in usable(m["expect"], EXPECT)}
        override = Override(expect, tuple(own_at), kernel, configs, libbpf, when.get("btf"))
        merged = override.apply(base)
        at = where(m, "expect")
        check_expect(
            rd,
            merged,
            lambda k: own_at.get(k) or base_at.get(k) or at,
            ctx,
            f"{what}.expect",
            keys=tuple(own_at),
        )
        return override


def files_under(paths: Sequence[Path], suffix: str, one: str, many: str) -> list[Path]:
    """The files named, and those ending in `suffix` below the directories named, sorted
    per directory; a missing path or an empty result is a usage error."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such {one} file or directory")
    if not found:
        raise UsageError(f"no {many} (*{suffix}) in {', '.join(map(str, paths))}")
    return found
