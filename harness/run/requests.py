"""The requests a case sends the guest agent (harness.guest.protocol), built from its
scenario values (pure): the topology, what a loader sets before the load, each drive."""

from __future__ import annotations

from harness.bpf import packet
from harness.guest import protocol
from harness.guest.protocol import LoadArgs
from harness.scenario.model import (
    Case,
    LoadOptions,
    Scenario,
    SyscallDrive,
    TestRunDrive,
    TrafficDrive,
)


def test_run_request(case: Case, drive: TestRunDrive, handle: int) -> protocol.TestRun:
    data = (
        drive.data
        if drive.data is not None
        else packet.build(drive.packet.as_dict() if drive.packet else {})
    )
    return protocol.TestRun(
        handle=handle,
        program=case.program,
        data_hex=data.hex(),
        repeat=drive.repeat,
        # raw_tracepoint, syscall...: the context is the only input
        ctx_only=not case.prog_type.test_run_data,
        ctx_hex=drive.ctx_data.hex() if drive.ctx_data is not None else None,
    )


def traffic_request(
    drive: TrafficDrive, cgroup: str | None, socket_filter: tuple[int, str] | None
) -> protocol.Traffic:
    """The traffic drive's request; `socket_filter` (handle, program) puts the program
    on the receiving socket."""
    return protocol.Traffic(
        from_ns=drive.from_ns,
        to=drive.to,
        to_ns=drive.to_ns,
        proto=drive.proto,
        port=drive.port or 9000,
        count=drive.count,
        size=drive.size,
        cgroup=cgroup,
        socket_filter=(
            {"handle": socket_filter[0], "program": socket_filter[1]} if socket_filter else None
        ),
    )


def syscall_request(drive: SyscallDrive, cgroup: str | None) -> protocol.Syscall:
    return protocol.Syscall(
        action=drive.action,
        argv=tuple(drive.argv),
        path=drive.path,
        mode="write" if drive.write else "read",
        create=drive.create,
        to=drive.to,
        port=drive.port,
        proto=drive.proto,
        ns=drive.ns,
        cgroup=cgroup,
    )


def topology_request(scenario: Scenario) -> protocol.TopologyUp:
    t = scenario.topology
    return protocol.TopologyUp(
        netns=tuple(t.netns),
        veth=tuple(
            {
                "a": {"dev": p.a.ifname, "ns": p.a.ns, "addr": p.a.address},
                "b": {"dev": p.b.ifname, "ns": p.b.ns, "addr": p.b.address},
            }
            for p in t.veth
        ),
        netdevsim=tuple({"id": d.id, "ports": d.ports, "ns": d.ns} for d in t.netdevsim),
    )


def prepare_args(load: LoadOptions) -> LoadArgs:
    """What the guest sets on the object before its load, as a real loader would
    (harness.guest.libbpf_prepare); only what differs from the guest's defaults."""
    args: LoadArgs = {}
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
