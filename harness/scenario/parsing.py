"""A scenario file's top level, read before its cases: the objects and the topology.

`Parser` holds the parse's state (its Reader, the scenario's directory, configs, objects,
topology) for the case parsers (harness.scenario.cases), and checks what they refer to: files
named relative to the scenario, netns of the topology.  The small helpers here are shared by
every part of the parse.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from harness.bpf.elfobj import read_object, scan_source
from harness.scenario.model import (
    BpfObject,
    Endpoint,
    NetdevsimDevice,
    RunConfig,
    Topology,
    VethPair,
)
from harness.scenario.shape import DEV_SPEC, IFNAME_RULE, NAME_SPEC, NETDEVSIM, OBJECT, VETH
from harness.scenario.spec import Obj, Reader, Spec, suggest
from harness.yamlsrc import LocDict, LocList, Pos, where

# --- the checks a shape cannot express ---------------------------------------------------


def fits(value: object, spec: Spec) -> bool:
    return Reader(Path()).validate(value, spec, "", {})


def key_fits(d: LocDict, key: str, spec: Obj) -> bool:
    """`key` is present in `d` and has the shape `spec` gives it (problems already reported)."""
    return key in d and fits(d[key], spec.field(key))


def only_key(node: object, choices: tuple[str, ...]) -> str | None:
    if isinstance(node, LocDict) and len(node) == 1 and next(iter(node)) in choices:
        return str(next(iter(node)))
    return None


def mapping_at(d: LocDict, key: str) -> LocDict:
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


def ns_text(ns: str | None) -> str:
    return f"netns {ns!r}" if ns else "the root namespace"


class Parser:
    def __init__(self, path: Path, allow_outside: bool) -> None:
        self.path = path
        self.rd = Reader(path)
        self.base = path.parent.resolve()
        self.allow_outside = allow_outside
        self.configs: tuple[RunConfig, ...] = (RunConfig("default"),)
        self.objects: dict[str, BpfObject | None] = {}
        self.topology = Topology()
        self.name = "scenario"

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

    def file_at(self, raw: str, at: Pos, what: str) -> Path | None:
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
        if not fits(name, NAME_SPEC) or not isinstance(body, LocDict) or not fits(body, OBJECT):
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
            names = tuple(dict.fromkeys(n for n in netns if fits(n, NAME_SPEC)))
            self.topology = Topology(names)
        veth: list[VethPair] = []
        owners: dict[str, str] = {}  # address -> device
        devices: set[tuple[str, str | None]] = set()
        for i, item in enumerate(_items(d, "veth")):
            if not fits(item, VETH):
                continue
            what = f"topology.veth[{i}]"
            ends = [self._endpoint(item, k, what) for k in ("a", "b")]
            for key, end in zip(("a", "b"), ends, strict=True):
                at = where(item, key, value=True)
                if end is not None and (end.ifname, end.ns) in devices:
                    self.rd.error(
                        f"{what}.{key}: {end.ifname!r} is already in {ns_text(end.ns)}", at
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
            if not fits(item, NETDEVSIM):
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
        if not fits(ifname, DEV_SPEC):
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
