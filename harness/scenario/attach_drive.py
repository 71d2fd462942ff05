"""A case's `attach:` and `drive:`: how its program is attached and made to run.

`AttachDriveParser` turns them into the model's attach and drive values
(harness.scenario.model), checked against the program's type and section and against the
scenario's topology; it is part of harness.scenario.cases' `CaseParser`.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from harness.bpf import sections
from harness.bpf.progtypes import ProgType
from harness.bpf.sections import SectionMatch
from harness.scenario.model import (
    SYSCALL_ACTIONS,
    Attach,
    AutoAttach,
    CgroupAttach,
    Drive,
    Endpoint,
    PacketSpec,
    SocketAttach,
    SyscallDrive,
    TcAttach,
    TcxAttach,
    TestRunDrive,
    TrafficDrive,
    XdpAttach,
)
from harness.scenario.parsing import Parser, mapping_at, ns_text
from harness.scenario.spec import Reader, hex_digits
from harness.yamlsrc import LocDict, Pos, where

# Fields of struct xdp_md / struct __sk_buff that test_run's ctx: may set by name.
CTX_FIELDS = {
    "struct xdp_md": ("ingress_ifindex", "rx_queue_index"),
    "struct __sk_buff": (
        "mark", "priority", "ingress_ifindex", "ifindex", "cb", "tstamp", "wire_len",
        "gso_segs", "gso_size", "hwtstamp",
    ),
}  # fmt: skip
_CTX_BY_NAME = frozenset({"xdp", "sched_cls", "sched_act", "socket_filter", "cgroup_skb"})


class AttachDriveParser:
    """The attach and drive of one case; mixed into CaseParser, whose state it reads."""

    p: Parser
    rd: Reader
    what: str
    match: SectionMatch | None

    # -- attach

    def _attach(self, d: LocDict, case: str) -> Attach | None:
        family = next(iter(d["attach"]))
        what, at = f"{self.what}.attach.{family}", where(d["attach"], family)
        b = mapping_at(d["attach"], family)
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
        known = [f"{name} ({ns_text(n)})" for name, n, _ in devices]
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
        b = mapping_at(d["drive"], kind)
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
            b = mapping_at(m, l3[0])
            spec.update(ttl=b.get("ttl", b.get("hop_limit")))
            for end in ("src", "dst"):
                spec[end] = self._ip(b, end, l3[0], f"{what}.{l3[0]}") if end in b else None
        if l4:
            b = mapping_at(m, l4[0])
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
            msg = f"{what}.to: {target.ip} is in {ns_text(target.ns)}, the socket in {attach.ns!r}"
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
