"""The requests a case sends the guest agent, built from its scenario values (pure):
the topology, what a loader sets before the load, and each drive's arguments."""

from __future__ import annotations

from typing import Any

from harness.bpf import packet
from harness.scenario.model import (
    Case,
    LoadOptions,
    Scenario,
    SyscallDrive,
    TestRunDrive,
    TrafficDrive,
)


def test_run_args(case: Case, drive: TestRunDrive, handle: int) -> dict[str, Any]:
    data = (
        drive.data
        if drive.data is not None
        else packet.build(drive.packet.as_dict() if drive.packet else {})
    )
    args: dict[str, Any] = {
        "handle": handle,
        "program": case.program,
        "data_hex": data.hex(),
        "repeat": drive.repeat,
        # raw_tracepoint, syscall...: the context is the only input
        "ctx_only": not case.prog_type.test_run_data,
    }
    if drive.ctx_data is not None:
        args["ctx_hex"] = drive.ctx_data.hex()
    return args


def traffic_args(
    drive: TrafficDrive, cgroup: str | None, socket_filter: tuple[int, str] | None
) -> dict[str, Any]:
    """The traffic drive's request; `socket_filter` (handle, program) puts the program
    on the receiving socket."""
    return {
        "from": drive.from_ns,
        "to": drive.to,
        "to_ns": drive.to_ns,
        "proto": drive.proto,
        "port": drive.port or 9000,
        "count": drive.count,
        "size": drive.size,
        "cgroup": cgroup,
        "socket_filter": (
            {"handle": socket_filter[0], "program": socket_filter[1]} if socket_filter else None
        ),
    }


def syscall_args(drive: SyscallDrive, cgroup: str | None) -> dict[str, Any]:
    return {
        "action": drive.action,
        "argv": list(drive.argv),
        "path": drive.path,
        "mode": "write" if drive.write else "read",
        "create": drive.create,
        "to": drive.to,
        "port": drive.port,
        "proto": drive.proto,
        "ns": drive.ns,
        "cgroup": cgroup,
    }


def topology_args(scenario: Scenario) -> dict[str, Any]:
    t = scenario.topology
    return {
        "netns": list(t.netns),
        "veth": [
            {
                "a": {"dev": p.a.ifname, "ns": p.a.ns, "addr": p.a.address},
                "b": {"dev": p.b.ifname, "ns": p.b.ns, "addr": p.b.address},
            }
            for p in t.veth
        ],
        "netdevsim": [{"id": d.id, "ports": d.ports, "ns": d.ns} for d in t.netdevsim],
    }


def prepare_args(load: LoadOptions) -> dict[str, Any]:
    """What the guest sets on the object before its load, as a real loader would
    (harness.guest.libbpf_prepare); only what differs from the guest's defaults."""
    args: dict[str, Any] = {}
    if load.maps:
        args["maps"] = [
            {"name": name, "max_entries": entries, "value_size": value}
            for name, entries, value in load.maps
        ]
    if not load.fixups:
        args["fixups"] = False
    if not load.pinning:
        args["pinning"] = False
    if load.pin_root:
        args["pin_root"] = load.pin_root
    if load.attach_target:
        args["attach_target"] = load.attach_target
    if load.companions:
        args["companions"] = list(load.companions)
    if load.keep_caps:
        args["keep_caps"] = list(load.keep_caps)
    if load.unprivileged_maps_only:
        args["unprivileged_maps_only"] = True
    return args
