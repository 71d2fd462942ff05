"""Packets for test_run: layout and checksums checked against independent decoding."""

from __future__ import annotations

import struct

import pytest

from harness.bpf.packet import build, checksum, from_hex


def test_udp_over_ipv4_has_valid_checksums() -> None:
    frame = build(
        {
            "ipv4": {"src": "10.0.0.1", "dst": "10.0.0.2"},
            "udp": {"sport": 5, "dport": 9000},
            "payload_size": 10,
        }
    )
    assert frame[12:14] == b"\x08\x00"
    ip = frame[14:34]
    assert checksum(ip) == 0, "IPv4 header checksum verifies to zero"
    assert ip[9] == 17
    udp = frame[34 : 34 + 18]
    assert struct.unpack("!HHH", udp[:6]) == (5, 9000, 18)
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, 18)
    assert checksum(pseudo + udp) == 0


def test_tcp_syn_over_ipv6() -> None:
    frame = build({"ipv6": {"dst": "fd00::2"}, "tcp": {"dport": 80, "flags": ["syn"]}})
    assert frame[12:14] == b"\x86\xdd"
    assert frame[14 + 6] == 6
    tcp = frame[54:74]
    assert struct.unpack("!H", tcp[2:4])[0] == 80
    assert tcp[13] == 0x02


def test_minimum_size_and_errors() -> None:
    assert len(build({})) == 60
    with pytest.raises(ValueError, match="needs an ipv4 or ipv6"):
        build({"udp": {}})
    assert from_hex("0x00 11 22") == b"\x00\x11\x22"
