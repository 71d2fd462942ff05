"""An XDP program tested from Python on a real kernel, with kitl's pytest fixtures.

    pytest --kitl-kernels debian-6.1 examples/test_xdp_with_fixtures.py

The kitl plugin (installed with kitl) provides the fixtures; every test here runs in the
same booted guest, and each must leave it clean (see docs/pytest.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bpf import packet
from harness.pytest_plugin.fixtures import Compile, Guest, NetdevsimFactory, Topology

SOURCE = Path(__file__).with_name("xdp_pass.bpf.c")
XDP_DROP, XDP_PASS = 1, 2
IPV4: packet.IPv4 = {"src": "10.0.0.1", "dst": "10.0.0.2"}
UDP = packet.build({"ipv4": IPV4, "udp": {"dport": 9000}, "payload_size": 16})
TCP = packet.build({"ipv4": IPV4, "tcp": {"dport": 80}})


@pytest.fixture
def obj(kitl_compile: Compile) -> Path:
    return kitl_compile(SOURCE)


@pytest.mark.parametrize("program", ["xdp_pass", "xdp_drop_udp"])
def test_verifier_accepts(kitl_guest: Guest, obj: Path, program: str) -> None:
    prog = kitl_guest.load(obj, program)
    assert prog.ok, prog.log
    assert "processed" in prog.log  # the verifier's statistics line (log_level 5)
    assert prog.info["verified_insns"] > 0


@pytest.mark.parametrize(
    ("program", "frame", "retval"),
    [
        ("xdp_pass", UDP, XDP_PASS),
        ("xdp_drop_udp", UDP, XDP_DROP),
        ("xdp_drop_udp", TCP, XDP_PASS),
    ],
    ids=["pass-udp", "drop-udp", "drop-udp-lets-tcp-pass"],
)
def test_retval(kitl_guest: Guest, obj: Path, program: str, frame: bytes, retval: int) -> None:
    run = kitl_guest.load(obj, program).test_run(frame, repeat=100)
    assert run["retval"] == retval
    assert run["data_out"] == frame  # neither program rewrites the packet


def test_constant_blinding_keeps_the_verdict(kitl_guest: Guest, obj: Path) -> None:
    # put back after the test by the fixture, so later tests see the boot value again
    changed = kitl_guest.sysctl({"net.core.bpf_jit_harden": 2})
    assert changed["net.core.bpf_jit_harden"] == {"ok": True, "value": "2"}
    assert kitl_guest.load(obj, "xdp_drop_udp").test_run(UDP)["retval"] == XDP_DROP


def test_drop_udp_on_a_veth_in_native_mode(
    kitl_guest: Guest, kitl_topology: Topology, obj: Path
) -> None:
    kitl_topology(
        netns=["a", "b"],
        veth=[
            {
                "a": {"dev": "v0", "ns": "a", "addr": "10.0.0.1/24"},
                "b": {"dev": "v1", "ns": "b", "addr": "10.0.0.2/24"},
            }
        ],
    )
    prog = kitl_guest.load(obj, "xdp_drop_udp")
    assert prog.attach("xdp", dev="v1", ns="b", mode="drv")["attach_mode"] == "drv"
    sent = kitl_guest.call(
        "traffic",
        {"from": "a", "to": "10.0.0.2", "to_ns": "b", "proto": "udp", "port": 9000, "count": 20},
    )
    assert (sent["delivered"], sent["dropped"]) == (0, 20)


def test_pass_on_a_netdevsim_port(
    kitl_guest: Guest, kitl_netdevsim: NetdevsimFactory, obj: Path
) -> None:
    nsim = kitl_netdevsim(ports=2)
    assert nsim.ports == ("nsim1p0", "nsim1p1")
    prog = kitl_guest.load(obj, "xdp_pass")
    assert prog.attach("xdp", dev=nsim.ports[1], mode="drv")["attach_mode"] == "drv"
