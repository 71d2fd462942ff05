"""The libbpf binding on real kernels: load, verify, test_run, maps, and every attach kind.

Python starts slowly in a TCG guest (its files come over 9p: 15-30 s per interpreter), so
each kernel gets one guest run: `guest_checks()` below runs in the guest (its source is
sent with `python -c`, under the imports of GUEST_PRELUDE), does every check, and prints
one JSON report that the tests here assert on.  A check that raised carries its traceback.

Objects are compiled on the host and copied into the guest with SFTP.  The guest's /tmp is
an overlay whose lower layer is the host's /tmp: files the host creates after boot usually
show through, but not at a path the guest looked up before it existed (the overlay keeps
the negative dentry), so pytest's tmp_path is not a reliable way in.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.errors import KernelCrashError
from harness.guest.libbpf import AttachError, Libbpf
from harness.guest.libbpf_load import LoadOptions
from harness.guest.libbpf_object import BpfObject
from harness.kernel.store import Kernel
from harness.vm.channel import CommandResult
from tests.unit.test_libbpf_layout import BPF_SOURCES, compile_bpf
from tests.vm.conftest import VM_KERNELS, VmPool

# What the guest script starts with: the imports guest_checks() and its helpers use.
GUEST_PRELUDE = """\
from __future__ import annotations
import dataclasses, json, os, socket, subprocess, sys, time, traceback
from collections.abc import Callable
from typing import Any
from harness.guest.libbpf import AttachError, Libbpf
from harness.guest.libbpf_load import LoadOptions
from harness.guest.libbpf_object import BpfObject
"""

EACCES, EINVAL, ENOSPC, EPERM = 13, 22, 28, 1
XDP_DROP, XDP_PASS = 1, 2


# -- runs in the guest -------------------------------------------------------------------


def g_frame(ethertype: int) -> bytes:
    """A minimum-size Ethernet frame; 0x88B5 (local experimental) is what the programs mark."""
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + ethertype.to_bytes(2, "big") + bytes(46)


def g_send(ifname: str, count: int) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        for _ in range(count):
            s.send(g_frame(0x88B5))


def g_u64s(obj: BpfObject, map_name: str) -> list[int]:
    return [int.from_bytes(value[:8], "little") for _, value in obj.map_items(map_name)]


def g_wait_marked(obj: BpfObject, want: int) -> int:
    """The MARKED counter, polled until it reaches `want` (NAPI runs a moment later)."""
    deadline = time.monotonic() + 10
    while True:
        marked = g_u64s(obj, "counts")[1]
        if marked >= want or time.monotonic() > deadline:
            return marked
        time.sleep(0.05)


def g_load(lib: Libbpf, path: str, program: str, opts: LoadOptions | None = None) -> Any:
    obj, load = BpfObject.load_one(lib, path, program, opts)
    if obj is not None:
        obj.close()
    return dataclasses.asdict(load)


def g_run(argv: list[str], stdin: bytes | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, check=True)
    return done.stdout.decode()


def g_xdp(lib: Libbpf, objdir: str, dev: str, ifindex: int) -> dict[str, Any]:
    obj, load = BpfObject.load_one(lib, f"{objdir}/net.bpf.o", "xdp_count")
    out: dict[str, Any] = {"load": dataclasses.asdict(load)}
    assert obj is not None, load.log + load.libbpf_messages
    with obj:
        drop = obj.test_run("xdp_count", g_frame(0x88B5))
        passed = obj.test_run("xdp_count", g_frame(0x0800), repeat=1000)
        out["test_run"] = {
            name: {
                "retval": run.retval,
                "duration_ns": run.duration_ns,
                "errno": run.errno,
                "data_out": len(run.data_out),
            }
            for name, run in (("drop", drop), ("pass", passed))
        }
        out["counts_after_test_run"] = g_u64s(obj, "counts")
        key1 = obj.map_lookup("counts", (1).to_bytes(4, "little"))
        out["lookup_key1"] = key1.hex() if key1 is not None else None
        out["prog_info"] = dataclasses.asdict(obj.prog_info("xdp_count"))
        out["modes"] = {}
        for mode in ("skb", "drv"):
            before = g_u64s(obj, "counts")[1]
            with obj.attach_xdp("xdp_count", ifindex, mode):
                state = obj.xdp_query(ifindex)
                g_send(dev, 5)
                marked = g_wait_marked(obj, before + 5)
            out["modes"][mode] = {
                "attach_mode": state.attach_mode,
                "prog_id": state.prog_id,
                "marked": marked - before,
                "after_detach": obj.xdp_attach_mode(ifindex),
            }
        try:
            obj.attach_xdp("xdp_count", ifindex, "hw")
            out["hw_errno"] = 0
        except AttachError as exc:
            out["hw_errno"] = exc.errno
    return out


def g_tc(lib: Libbpf, objdir: str, peer: str, dev: str, ifindex: int) -> dict[str, Any]:
    obj, load = BpfObject.load_one(lib, f"{objdir}/net.bpf.o", "tc_count")
    assert obj is not None, load.log + load.libbpf_messages
    out: dict[str, Any] = {"load_ok": load.ok}
    with obj:
        out["test_run_retval"] = obj.test_run("tc_count", g_frame(0x88B5)).retval
        with obj.attach_tc("tc_count", ifindex, "ingress") as link:
            out["details"] = link.details
            out["filters"] = g_run(["tc", "filter", "show", "dev", dev, "ingress"])
            g_send(peer, 4)
            out["marked"] = g_wait_marked(obj, 1 + 4) - 1
        out["qdiscs_after"] = g_run(["tc", "qdisc", "show", "dev", dev])
        try:
            with obj.attach_tcx("tc_count", ifindex, "ingress") as tcx:
                out["tcx"] = {"via": tcx.via, "fd": tcx.fd}
                g_send(peer, 3)
                out["tcx"]["marked"] = g_wait_marked(obj, 5 + 3) - 5
        except AttachError as exc:
            out["tcx"] = {"errno": exc.errno, "error": str(exc)}
    return out


def g_trace(lib: Libbpf, objdir: str, program: str) -> dict[str, Any]:
    obj, load = BpfObject.load_one(lib, f"{objdir}/trace.bpf.o", program)
    out: dict[str, Any] = {"load": dataclasses.asdict(load)}
    assert obj is not None, load.log + load.libbpf_messages
    with obj, obj.ringbuf_counter("events") as ring:
        obj.map_update("target", bytes(4), os.getpid().to_bytes(4, "little"))
        with obj.attach_auto(program) as link:
            out["via"] = link.via
            for _ in range(50):
                os.getpid()
        out["count"] = g_u64s(obj, "counts")[0]
        ring.consume()
        out["ring"] = ring.count
        out["ring_pid_ok"] = all(s == os.getpid().to_bytes(4, "little") for s in ring.samples)
    return out


def g_cgroup(lib: Libbpf, objdir: str) -> dict[str, Any]:
    def connect(port: int) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect(("127.0.0.1", port))
            except OSError as exc:
                return exc.errno or -1
        return 0

    obj, load = BpfObject.load_one(lib, f"{objdir}/cgroup.bpf.o", "deny_port7")
    assert obj is not None, load.log + load.libbpf_messages
    out: dict[str, Any] = {"attach_type": load.attach_type}
    cgroup = f"/sys/fs/cgroup/kitl-libbpf-{os.getpid()}"
    os.mkdir(cgroup)
    try:
        with open(f"{cgroup}/cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))
        with obj, obj.attach_cgroup("deny_port7", cgroup) as link:
            out["via"] = link.via
            out["port7_attached"] = connect(7)
            out["port9_attached"] = connect(9)
            link.close()
            out["port7_detached"] = connect(7)
    finally:
        with open("/sys/fs/cgroup/cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))
        os.rmdir(cgroup)
    return out


def g_logs(lib: Libbpf, objdir: str) -> dict[str, Any]:
    net = f"{objdir}/net.bpf.o"
    kconfig_obj, kconfig = BpfObject.load_one(
        lib, f"{objdir}/kconfig.bpf.o", "xdp_kconfig", LoadOptions(kconfig="CONFIG_KITL_PROBE=2\n")
    )
    retval = None
    if kconfig_obj is not None:
        with kconfig_obj:
            retval = kconfig_obj.test_run("xdp_kconfig", g_frame(0x0800)).retval
    return {
        "rejected": g_load(lib, net, "xdp_bad"),
        "rejected_level0": g_load(lib, net, "xdp_bad", LoadOptions(log_level=0)),
        "quiet_passed": g_load(lib, net, "xdp_count", LoadOptions(log_failures_only=True)),
        "quiet_rejected": g_load(lib, net, "xdp_bad", LoadOptions(log_failures_only=True)),
        "level2_grown": g_load(lib, net, "xdp_count", LoadOptions(log_level=2, log_size=256)),
        "level2_capped": g_load(
            lib, net, "xdp_count", LoadOptions(log_level=2, log_size=256, log_size_max=512)
        ),
        "kconfig": {"ok": kconfig.ok, "messages": kconfig.libbpf_messages, "retval": retval},
    }


def guest_checks(objdir: str) -> dict[str, Any]:
    lib = Libbpf()
    report: dict[str, Any] = {
        "release": os.uname().release,
        "libbpf": {"version": list(lib.version), "missing": lib.missing_features()},
        "errors": {},
    }
    peer, dev = "kitlbpf1", "kitlbpf0"

    def check(name: str, run: Callable[[], dict[str, Any]]) -> None:
        started = time.monotonic()
        try:
            report[name] = run()
        except Exception:
            report["errors"][name] = traceback.format_exc()
        report.setdefault("seconds", {})[name] = round(time.monotonic() - started, 2)

    batch = f"link add {dev} type veth peer name {peer}\nlink set {dev} up\nlink set {peer} up\n"
    g_run(["ip", "-batch", "-"], batch.encode())
    try:
        ifindex = socket.if_nametoindex(dev)
        check("xdp", lambda: g_xdp(lib, objdir, peer, ifindex))
        check("tc", lambda: g_tc(lib, objdir, peer, dev, ifindex))
    finally:
        g_run(["ip", "link", "del", dev])
    check("logs", lambda: g_logs(lib, objdir))
    check("tracepoint", lambda: g_trace(lib, objdir, "tp_getpid"))
    check("kprobe", lambda: g_trace(lib, objdir, "kprobe_getpid"))
    check("cgroup", lambda: g_cgroup(lib, objdir))
    return report


GUEST_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    g_frame,
    g_send,
    g_u64s,
    g_wait_marked,
    g_load,
    g_run,
    g_xdp,
    g_tc,
    g_trace,
    g_cgroup,
    g_logs,
    guest_checks,
)


def guest_script() -> str:
    functions = "\n\n".join(textwrap.dedent(inspect.getsource(f)) for f in GUEST_FUNCTIONS)
    main = "print(json.dumps(guest_checks(sys.argv[1])))\n"
    return f"{GUEST_PRELUDE}\n{functions}\n{main}"


# -- the host side -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=VM_KERNELS)
def report(
    request: pytest.FixtureRequest, vm_pool: VmPool, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The guest's JSON report for one kernel: one guest run per kernel per session."""
    name: str = request.param
    objdir = tmp_path_factory.mktemp(f"bpf-{name}")
    objects = [compile_bpf(source, objdir) for source in sorted(BPF_SOURCES.glob("*.bpf.c"))]
    try:
        kernel, result = run_checks(vm_pool, name, objects)
    except KernelCrashError as exc:
        # Under TCG a guest has crashed, rarely, outside any BPF code (an int3 met while
        # another vCPU patched a static key in __schedule): the checks get one more
        # guest, and a second crash fails the test.
        warnings.warn(f"{name}: the guest crashed, the checks run once more: {exc}", stacklevel=1)
        kernel, result = run_checks(vm_pool, name, objects)
    assert result.ok, f"guest script failed ({result.status}):\n{result.stderr[-4000:]}"
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["release"] == kernel.release
    return data


def run_checks(vm_pool: VmPool, name: str, objects: list[Path]) -> tuple[Kernel, CommandResult]:
    kernel, vm = vm_pool.get(name)
    remote = f"/tmp/kitl-libbpf-{os.getpid()}-{name}"
    assert vm.run(["mkdir", "-p", remote], timeout=60).ok
    for obj in objects:
        vm.channel.put(obj.read_bytes(), f"{remote}/{obj.name}")
    return kernel, vm.run([sys.executable, "-c", guest_script(), remote], timeout=1200)


def part(report: dict[str, Any], name: str) -> dict[str, Any]:
    """One check's results; a check that raised in the guest fails here with its traceback."""
    assert name not in report["errors"], f"{name} raised in the guest:\n{report['errors'][name]}"
    section: dict[str, Any] = report[name]
    return section


def test_guest_runs_bookworms_libbpf(report: dict[str, Any]) -> None:
    assert report["libbpf"]["version"] == [1, 1]
    assert "bpf_program__attach_tcx (1.3)" in report["libbpf"]["missing"]


def test_xdp_program_loads_with_stats_log_and_prog_info(report: dict[str, Any]) -> None:
    load = part(report, "xdp")["load"]
    assert load["ok"], load["log"] + load["libbpf_messages"]
    assert (load["errno"], load["log_truncated"], load["attempts"]) == (0, False, 1)
    assert (load["prog_type"], load["section"]) == ("xdp", "xdp")
    assert load["verified_insns"] > 0
    assert load["jited_len"] > 0
    assert load["xlated_len"] > 0
    assert load["insn_cnt"] > 0
    assert load["load_ns"] > 0
    assert f"processed {load['verified_insns']} insns" in load["log"]
    assert "verification time" in load["log"], "BPF_LOG_STATS (4) is in the default level"


def test_test_run_returns_the_coded_verdicts_and_updates_the_map(report: dict[str, Any]) -> None:
    xdp = part(report, "xdp")
    drop, passed = xdp["test_run"]["drop"], xdp["test_run"]["pass"]
    assert (drop["errno"], drop["retval"]) == (0, XDP_DROP)
    assert (passed["errno"], passed["retval"]) == (0, XDP_PASS)
    assert drop["duration_ns"] > 0
    assert passed["duration_ns"] > 0
    assert passed["data_out"] == 60, "the frame comes back in data_out"
    # counts = [seen, marked]: one marked run, then 1000 repetitions of an unmarked frame.
    assert xdp["counts_after_test_run"] == [1001, 1]
    assert xdp["lookup_key1"] == (1).to_bytes(8, "little").hex()
    assert xdp["prog_info"]["id"] == xdp["load"]["prog_id"]
    assert xdp["prog_info"]["name"] == "xdp_count"


def test_verifier_rejection_has_errno_and_message(report: dict[str, Any]) -> None:
    logs = part(report, "logs")
    rejected = logs["rejected"]
    assert not rejected["ok"]
    assert rejected["errno"] in (EACCES, EINVAL)
    assert "invalid access to packet" in rejected["log"]
    assert "processed" in rejected["log"]
    assert not rejected["log_truncated"]
    assert "failed to load" in rejected["libbpf_messages"]
    assert rejected["prog_id"] is None
    # Level 0: no log is asked for; libbpf retries at level 1 and prints it instead.
    level0 = logs["rejected_level0"]
    assert (level0["ok"], level0["errno"]) == (False, rejected["errno"])
    assert "invalid access to packet" in level0["log"]


def test_a_quiet_load_keeps_statistics_and_a_failure_gets_its_full_log(
    report: dict[str, Any],
) -> None:
    """log_failures_only: a load at BPF_LOG_STATS; only a failure is loaded again at 1|4."""
    logs = part(report, "logs")
    passed = logs["quiet_passed"]
    assert passed["ok"], passed["libbpf_messages"]
    assert (passed["log_level"], passed["attempts"], passed["stats_log"]) == (4, 1, "")
    assert f"processed {passed['verified_insns']} insns" in passed["log"]
    assert not TRACED_INSN.search(passed["log"]), "no instruction trace at the statistics level"
    rejected, full = logs["quiet_rejected"], logs["rejected"]
    assert not rejected["ok"]
    assert (rejected["log_level"], rejected["attempts"]) == (5, 2)
    assert rejected["errno"] == full["errno"]
    assert untimed(rejected["log"]) == untimed(full["log"]), "the same complete log"
    assert TRACED_INSN.search(rejected["log"])
    assert "invalid access to packet" in rejected["stats_log"]
    assert "processed" in rejected["stats_log"]
    assert not TRACED_INSN.search(rejected["stats_log"])


TRACED_INSN = re.compile(r"^\d+: \(", re.MULTILINE)  # "0: (61) r2 = *(u32 *)(r1 +0)"


def untimed(log: str) -> list[str]:
    return [line for line in log.splitlines() if "verification time" not in line]


def test_enospc_grows_the_log_buffer_or_reports_truncation(report: dict[str, Any]) -> None:
    logs = part(report, "logs")
    grown = logs["level2_grown"]
    assert grown["ok"], grown["libbpf_messages"]
    assert grown["attempts"] > 1
    assert grown["log_size"] > 256
    assert not grown["log_truncated"]
    assert len(grown["log"]) > 512
    capped = logs["level2_capped"]
    assert (capped["ok"], capped["errno"], capped["log_truncated"]) == (False, ENOSPC, True)
    assert capped["log_size"] == 512


def test_kconfig_text_resolves_kconfig_externs(report: dict[str, Any]) -> None:
    kconfig = part(report, "logs")["kconfig"]
    assert kconfig["ok"], kconfig["messages"]
    assert kconfig["retval"] == 2


def test_xdp_attaches_in_skb_and_drv_mode_and_sees_veth_traffic(report: dict[str, Any]) -> None:
    xdp = part(report, "xdp")
    for mode in ("skb", "drv"):
        seen = xdp["modes"][mode]
        assert seen["attach_mode"] == mode
        assert seen["prog_id"] == xdp["load"]["prog_id"]
        assert seen["marked"] == 5, f"{mode}: the program saw {seen['marked']} of 5 frames"
        assert seen["after_detach"] == "none"
    assert xdp["hw_errno"] == EINVAL, "veth has no offload"


def test_tc_program_attaches_to_a_veth_and_detaches_cleanly(report: dict[str, Any]) -> None:
    tc = part(report, "tc")
    assert tc["test_run_retval"] == 0  # TC_ACT_OK
    assert tc["details"]["created_hook"] == 1
    assert tc["details"]["handle"] > 0
    assert "tc_count" in tc["filters"]
    assert "direct-action" in tc["filters"]
    assert tc["marked"] == 4
    assert "clsact" not in tc["qdiscs_after"], "the clsact qdisc it created is gone"


def test_tcx_links_through_raw_bpf_link_create_on_6_6_and_later(
    report: dict[str, Any],
) -> None:
    tcx = part(report, "tc")["tcx"]
    if report["release"].startswith("6.1."):
        assert tcx["errno"] == EINVAL, "6.1 predates tcx (6.6)"
    else:
        assert tcx.get("errno") is None, tcx.get("error")
        assert tcx["via"] == "bpf_link_create", "libbpf 1.1.2 has no bpf_program__attach_tcx"
        assert tcx["fd"] >= 0
        assert tcx["marked"] == 3


@pytest.mark.parametrize("check", ["tracepoint", "kprobe"])
def test_tracing_programs_attach_from_sec_and_count_syscalls(
    report: dict[str, Any], check: str
) -> None:
    trace = part(report, check)
    assert trace["load"]["ok"], trace["load"]["libbpf_messages"]
    assert trace["via"] == "bpf_program__attach"
    assert trace["count"] >= 50
    assert trace["ring"] == trace["count"], "every counted call also went through the ring buffer"
    assert trace["ring_pid_ok"]


def test_cgroup_connect4_program_denies_while_attached(report: dict[str, Any]) -> None:
    cgroup = part(report, "cgroup")
    assert cgroup["attach_type"] == "cgroup_inet4_connect"
    assert cgroup["via"] == "bpf_program__attach_cgroup"
    assert cgroup["port7_attached"] == EPERM
    assert cgroup["port9_attached"] == 0
    assert cgroup["port7_detached"] == 0
