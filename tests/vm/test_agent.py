"""The guest agent on real kernels: one Python process per VM, requests in milliseconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.vm.agentclient import AgentCallError, AgentClient
from tests.unit.test_libbpf_layout import BPF_SOURCES, compile_bpf
from tests.vm.conftest import VM_KERNELS, VmPool


@pytest.mark.parametrize("name", VM_KERNELS)
def test_agent_sysctl_topology_and_udp_traffic(vm_pool: VmPool, name: str) -> None:
    kernel, vm = vm_pool.get(name)
    with AgentClient(vm) as agent:
        started = time.monotonic()
        for _ in range(20):
            agent.call("ping")
        per_request = (time.monotonic() - started) / 20
        assert per_request < 0.5, f"agent round trip {per_request:.3f}s"

        facts = agent.call("facts")
        assert facts["release"] == kernel.release
        assert facts["btf"] is True

        changed = agent.call("sysctl", {"values": {"net.core.bpf_jit_harden": 2}})
        assert changed["net.core.bpf_jit_harden"] == {"ok": True, "value": "2"}
        refused = agent.call("sysctl", {"values": {"net.core.bpf_jit_enable": 7}})
        assert refused["net.core.bpf_jit_enable"]["ok"] is False
        agent.call("sysctl", {"values": {"net.core.bpf_jit_harden": 0}})

        topo = {
            "netns": ["a", "b"],
            "veth": [
                {
                    "a": {"dev": "v0", "ns": "a", "addr": "10.0.0.1/24"},
                    "b": {"dev": "v1", "ns": "b", "addr": "10.0.0.2/24"},
                }
            ],
        }
        agent.call("topology_up", topo)
        try:
            udp = agent.call(
                "traffic",
                {
                    "from": "a",
                    "to": "10.0.0.2",
                    "to_ns": "b",
                    "proto": "udp",
                    "port": 9000,
                    "count": 50,
                },
            )
            assert udp == {"sent": 50, "delivered": 50, "dropped": 0, "received_bytes": 50 * 64}
            tcp = agent.call(
                "traffic",
                {"from": "a", "to": "10.0.0.2", "to_ns": "b", "proto": "tcp", "port": 8080},
            )
            assert tcp["connect"] == "connected"
            icmp = agent.call(
                "traffic", {"from": "a", "to": "10.0.0.2", "proto": "icmp", "count": 3}
            )
            assert icmp["delivered"] == 3
            in_ns = agent.call("run", {"argv": ["ip", "-br", "addr"], "ns": "b"})
            assert "10.0.0.2/24" in in_ns["stdout"]
        finally:
            down = agent.call("topology_down")
        assert down == {"problems": [], "netns_left": []}

        with pytest.raises(AgentCallError, match="no network namespace"):
            agent.call("run", {"argv": ["true"], "ns": "nope"})
        assert agent.call("ping")["release"] == kernel.release, "the agent survives errors"


@pytest.mark.parametrize("name", VM_KERNELS)
def test_release_names_bpf_objects_a_case_leaked(
    vm_pool: VmPool, name: str, tmp_path: Path
) -> None:
    """Every case ends with release(): whatever BPF program, map or link is alive then and
    was not before the case's first load is reported (the engine turns that into ERROR)."""
    _, vm = vm_pool.get(name)
    obj = compile_bpf(BPF_SOURCES / "net.bpf.c", tmp_path)
    remote = f"/run/kitl-leak-{name}.o"
    vm.channel.put(obj.read_bytes(), remote)
    pin = "/sys/fs/bpf/kitl-leak"
    with AgentClient(vm) as agent:
        # a clean case: load, attach nothing, release -> no problems
        loaded = agent.call("load", {"object": remote, "program": "xdp_count"})
        assert loaded["ok"], loaded
        assert agent.call("release") == {"released": [loaded["handle"]], "problems": []}

        # a case that leaves a pinned map behind (bpftool outlives the agent's objects)
        loaded = agent.call("load", {"object": remote, "program": "xdp_count"})
        agent.call(
            "run",
            {"argv": ["sh", "-c", "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf"]},
        )
        made = agent.call(
            "run",
            {"argv": ["bpftool", "map", "create", pin, "type", "array", "key", "4",
                      "value", "4", "entries", "1", "name", "kitl_leak"]},
        )  # fmt: skip
        assert made["status"] == 0, made
        try:
            released = agent.call("release")
        finally:
            agent.call("run", {"argv": ["rm", "-f", pin]})
        problems = released["problems"]
        assert len(problems) == 1, problems
        assert problems[0].startswith("map id ")
        assert "still alive" in problems[0]
