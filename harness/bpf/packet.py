"""Packets for BPF_PROG_TEST_RUN, built from a small spec (pure).

    {"eth": {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"},
     "ipv4": {"src": "10.0.0.1", "dst": "10.0.0.2", "ttl": 64},    # or "ipv6": {...}
     "udp": {"sport": 1234, "dport": 9000},                         # or "tcp" (+ flags) / "icmp"
     "payload_size": 32}
Every layer is optional except that L4 needs an IP layer; checksums are correct, so a
program that validates them sees a real packet.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TypedDict

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PROTO = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20}


# The spec's layers; a key left out takes the builder's default.
class Eth(TypedDict, total=False):
    src: str
    dst: str
    type: int  # only without an IP layer


class IPv4(TypedDict, total=False):
    src: str
    dst: str
    ttl: int


class IPv6(TypedDict, total=False):
    src: str
    dst: str
    hop_limit: int


class Udp(TypedDict, total=False):
    sport: int
    dport: int


class Tcp(TypedDict, total=False):
    sport: int
    dport: int
    flags: list[str]  # names of TCP_FLAGS; default ["syn"]
    seq: int
    ack: int
    window: int


class Icmp(TypedDict, total=False):
    type: int
    code: int


class Frame(TypedDict, total=False):
    payload_size: int
    eth: Eth
    ipv4: IPv4
    ipv6: IPv6
    udp: Udp
    tcp: Tcp
    icmp: Icmp


def _mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return bytes(int(p, 16) for p in parts)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build(spec: Frame) -> bytes:
    """The frame bytes for `spec` (see the module docstring)."""
    payload = bytes(int(spec.get("payload_size", 0)))
    v4, v6 = spec.get("ipv4"), spec.get("ipv6")
    if v4 is not None and v6 is not None:
        raise ValueError("give ipv4 or ipv6, not both")
    l4_name = next((k for k in ("udp", "tcp", "icmp") if k in spec), None)
    src_ip: bytes = b""
    dst_ip: bytes = b""
    if v4 is not None:
        src_ip = ipaddress.IPv4Address(v4.get("src", "10.0.0.1")).packed
        dst_ip = ipaddress.IPv4Address(v4.get("dst", "10.0.0.2")).packed
    elif v6 is not None:
        src_ip = ipaddress.IPv6Address(v6.get("src", "fd00::1")).packed
        dst_ip = ipaddress.IPv6Address(v6.get("dst", "fd00::2")).packed
    elif l4_name:
        raise ValueError(f"{l4_name} needs an ipv4 or ipv6 layer")

    l4, proto = _l4(spec, l4_name, payload, src_ip, dst_ip, ipv6=v6 is not None)
    if v4 is not None:
        total = 20 + len(l4)
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, int(v4.get("ttl", 64)), proto, 0, src_ip, dst_ip
        )
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        l3, ethertype = ip + l4, ETH_P_IP
    elif v6 is not None:
        ip = struct.pack(
            "!IHBB16s16s", 6 << 28, len(l4), proto, int(v6.get("hop_limit", 64)), src_ip, dst_ip
        )
        l3, ethertype = ip + l4, ETH_P_IPV6
    else:
        l3, ethertype = l4, int(spec.get("eth", {}).get("type", ETH_P_IP))

    eth = spec.get("eth", {})
    frame = (
        _mac(eth.get("dst", "02:00:00:00:00:02"))
        + _mac(eth.get("src", "02:00:00:00:00:01"))
        + struct.pack("!H", ethertype)
        + l3
    )
    # test_run needs at least an Ethernet header; pad tiny frames to the Ethernet minimum.
    return frame + bytes(max(0, 60 - len(frame)))


def _l4(
    spec: Frame,
    name: str | None,
    payload: bytes,
    src_ip: bytes,
    dst_ip: bytes,
    *,
    ipv6: bool,
) -> tuple[bytes, int]:
    """The transport segment with its checksum, and its IP protocol number."""
    if name == "udp":
        udp = spec["udp"]
        header = struct.pack(
            "!HHHH", int(udp.get("sport", 1234)), int(udp.get("dport", 9000)), 8 + len(payload), 0
        )
        return _with_l4_checksum(header + payload, 6, src_ip, dst_ip, PROTO["udp"]), PROTO["udp"]
    if name == "tcp":
        tcp = spec["tcp"]
        flags = 0
        for flag in tcp.get("flags", ["syn"]):
            flags |= TCP_FLAGS[flag]
        header = struct.pack(
            "!HHIIBBHHH",
            int(tcp.get("sport", 1234)),
            int(tcp.get("dport", 80)),
            int(tcp.get("seq", 1)),
            int(tcp.get("ack", 0)),
            5 << 4,
            flags,
            int(tcp.get("window", 65535)),
            0,
            0,
        )
        return _with_l4_checksum(header + payload, 16, src_ip, dst_ip, PROTO["tcp"]), PROTO["tcp"]
    if name == "icmp":
        icmp = spec["icmp"]
        default_type = 128 if ipv6 else 8  # echo request
        header = struct.pack(
            "!BBHHH", int(icmp.get("type", default_type)), int(icmp.get("code", 0)), 0, 1, 1
        )
        body = header + payload
        if ipv6:
            proto = PROTO["icmpv6"]
            return _with_l4_checksum(body, 2, src_ip, dst_ip, proto), proto
        return body[:2] + struct.pack("!H", checksum(body)) + body[4:], PROTO["icmp"]
    return payload, 0


def _with_l4_checksum(segment: bytes, offset: int, src: bytes, dst: bytes, proto: int) -> bytes:
    pseudo = (
        src
        + dst
        + (
            struct.pack("!BBH", 0, proto, len(segment))
            if len(src) == 4
            else struct.pack("!I3xB", len(segment), proto)
        )
    )
    value = checksum(pseudo + segment)
    if proto == PROTO["udp"] and value == 0:
        value = 0xFFFF
    return segment[:offset] + struct.pack("!H", value) + segment[offset + 2 :]


def from_hex(text: str) -> bytes:
    cleaned = "".join(text.split()).removeprefix("0x")
    return bytes.fromhex(cleaned)
