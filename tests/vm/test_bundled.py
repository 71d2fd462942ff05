"""`kitl run` of the bundled scenarios (tc, tracing, cgroup, lsm, kernel-range) on real
kernels: one boot per kernel runs them all; every cell must pass and a few of the effects
each scenario measures are checked in results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from tests.vm.conftest import VM_KERNELS

SCENARIOS = Path(__file__).parents[2] / "scenarios"
BUNDLED = [
    "tc",
    "tracing",
    "cgroup",
    "lsm",
    "kernel-range",
    "socket-filter",
    "test-run-only",
    "netdevsim",
    "core-btf",
]
CASES = {
    "tc": 8,
    "tracing": 8,
    "cgroup": 5,
    "lsm": 7,
    "kernel-range": 3,
    "socket-filter": 3,
    "test-run-only": 2,
    "netdevsim": 3,
    "core-btf": 2,
}


def cells(run_dir: Path) -> dict[str, dict[str, Any]]:
    body = json.loads((run_dir / "results.json").read_text())
    return {c["id"]: c for c in body["cells"]}


def count(cell: dict[str, Any], map_name: str, key: int) -> int:
    """A u64 counter of a dumped array map."""
    want = key.to_bytes(4, "little").hex()
    for k, v in cell["observed"]["maps"][map_name]:
        if k == want:
            return int.from_bytes(bytes.fromhex(v), "little")
    raise AssertionError(f"{map_name}[{key}] not dumped")


@pytest.mark.parametrize("name", VM_KERNELS)
def test_bundled_scenarios_pass(name: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    status = main(
        ["run", *(str(SCENARIOS / s) for s in BUNDLED), "--kernel", name, "--output", str(run_dir)]
    )
    results = cells(run_dir)
    assert len(results) == sum(CASES.values()), sorted(results)
    # arena maps arrived in 6.9: 6.1 must skip that case, with the probe as the reason
    arena = results.pop(f"kernel-range::needs-arena-map-type[{name}-default]")
    if name == "debian-6.1":
        assert arena["outcome"] == "SKIPPED", arena
        assert "arena" in arena["reason"]
    else:
        # the default loader (libbpf 1.8) probes arena maps itself: no fallback note
        assert arena["outcome"] == "PASSED", arena
        assert not any("cannot probe" in n for n in arena["observed"].get("notes", []))
    # tcx links arrived in 6.6: 6.1 skips those cases, named by the missing attach type
    for case, attach_type in [
        ("tcx-shot-udp-traffic", "tcx_ingress"),
        ("tcx-egress-count-udp", "tcx_egress"),
    ]:
        tcx = results.pop(f"tc::{case}[{name}-default]")
        if name == "debian-6.1":
            assert tcx["outcome"] == "SKIPPED", tcx
            assert attach_type in tcx["reason"]
        else:
            assert tcx["outcome"] == "PASSED", tcx
            assert tcx["observed"]["attach"]["via"] in (
                "bpf_link_create",
                "bpf_program__attach_tcx",
            )
            if case == "tcx-shot-udp-traffic":
                assert tcx["observed"]["traffic"]["dropped"] == 50
    failed = {k: c["reason"] for k, c in results.items() if c["outcome"] != "PASSED"}
    assert status == 0, failed
    assert not failed

    def cell(scenario: str, case: str) -> dict[str, Any]:
        return results[f"{scenario}::{case}[{name}-default]"]

    # tc: clsact ingress drops real UDP and counts it; test_run gives TC_ACT_SHOT (2)
    shot = cell("tc", "shot-udp-traffic")
    assert shot["observed"]["traffic"]["delivered"] == 0
    assert shot["observed"]["traffic"]["dropped"] == 50
    assert count(shot, "counts", 0) == 50
    assert cell("tc", "count-udp-traffic")["observed"]["traffic"]["delivered"] == 50
    assert cell("tc", "shot-test-run")["observed"]["test_run"]["retval"] == 2
    # SEC("tc/ingress") carries libbpf 1.3+'s expected attach type; the loader is the default
    assert shot["observed"]["load"]["attach_type"] == "tcx_ingress"
    assert shot["libbpf"] == ""
    assert tuple(int(x) for x in shot["verifier"]["libbpf_version"].split(".")) >= (1, 8)
    assert cell("tc", "current-section-name")["observed"]["test_run"]["retval"] == 2
    assert cell("tc", "legacy-section-name")["observed"]["test_run"]["retval"] == 2

    # tracing: every hook counted exactly the trigger's syscalls
    for case, key, want in [
        ("kprobe-getppid", 0, 5),
        ("tracepoint-sys-enter-getppid", 1, 5),
        ("raw-tracepoint-sys-enter", 2, 5),
        ("tp-btf-sys-enter", 3, 5),
        ("fentry-do-sys-openat2", 4, 3),
        ("fexit-do-sys-openat2", 5, 3),
        ("kretprobe-do-sys-openat2", 6, 3),
    ]:
        assert count(cell("tracing", case), "counts", key) == want, case
    assert cell("tracing", "tracepoint-ringbuf-events")["observed"]["events"] == {"events": 5}

    # cgroup: the drive ran inside the cgroup, so the programs saw (and refused) it
    denied = cell("cgroup", "connect4-denied-port")
    assert denied["observed"]["syscall"]["status"] == 3
    assert count(denied, "counts", 0) == 1
    assert denied["observed"]["load"]["attach_type"] == "cgroup_inet4_connect"
    drop = cell("cgroup", "egress-drop-udp")
    assert drop["observed"]["traffic"]["delivered"] == 0
    assert drop["observed"]["traffic"]["send_errors"] == {"Operation not permitted": 40}
    assert count(cell("cgroup", "egress-count-udp"), "counts", 2) == 40

    # lsm: file_open refused the marked file, and only it
    lsm = cell("lsm", "file-open-denied")
    assert lsm["observed"]["syscall"]["status"] == 1
    assert "Operation not permitted" in lsm["observed"]["syscall"]["stderr"]
    assert count(lsm, "counts", 0) == 1
    assert cell("lsm", "file-open-other-allowed")["observed"]["syscall"]["status"] == 0
    # built-in actions: the agent's own syscall, so the errno is the hook's -EPERM
    created = cell("lsm", "open-create-denied-errno")["observed"]["syscall"]
    assert (created["errno"], created["errno_name"]) == (1, "EPERM")
    assert cell("lsm", "unlink-allowed-errno")["observed"]["syscall"]["errno"] == 0
    assert cell("lsm", "execve-allowed")["observed"]["syscall"]["status"] == 0
    assert cell("lsm", "socket-connect-denied-errno")["observed"]["syscall"]["errno"] == 1
    assert cell("lsm", "socket-connect-other-port-allowed")["observed"]["syscall"]["errno"] == 0
    assert cell("cgroup", "connect4-denied-port-errno")["observed"]["syscall"]["errno"] == 1

    # socket filters on the receiving socket: the return value keeps or drops the packet
    keep = cell("socket-filter", "keep-all-udp")
    assert keep["observed"]["attach"]["via"] == "setsockopt(SO_ATTACH_BPF)"
    assert keep["observed"]["traffic"]["received_bytes"] == 20 * 64
    assert count(keep, "counts", 0) == 20
    assert cell("socket-filter", "drop-all-udp")["observed"]["traffic"]["delivered"] == 0
    assert cell("socket-filter", "trim-test-run")["observed"]["test_run"]["retval"] == 24

    # context-only test_run: raw_tp gets u64 args, the syscall program its struct back
    assert cell("test-run-only", "raw-tp-add-args")["observed"]["test_run"]["retval"] == 42
    product = cell("test-run-only", "syscall-multiply")["observed"]["test_run"]
    assert product["retval"] == 42
    assert product["ctx_out_hex"] == "0600000007000000" + (42).to_bytes(8, "little").hex()

    # netdevsim: native and offloaded XDP; an offload with a host map is refused
    assert cell("netdevsim", "xdp-drv-on-netdevsim")["observed"]["attach"]["attach_mode"] == "drv"
    offloaded = cell("netdevsim", "xdp-hw-offload")
    assert offloaded["observed"]["attach"]["attach_mode"] == "hw"
    assert offloaded["observed"]["load"]["ok"] is True
    refused = cell("netdevsim", "offload-with-host-map-rejected")
    assert refused["observed"]["load"]["ok"] is False

    # kernel-range: bpf_loop runs everywhere here; the CO-RE field exists from 6.11 on
    assert count(cell("kernel-range", "bpf-loop-sum"), "results", 0) == 4 * 45
    core = cell("kernel-range", "core-field-newer-kernels")
    if core["expected"]["load"] == "rejected":
        assert core["observed"]["error_class"] == "CORE_RELOCATION_FAILED"
    else:
        assert count(core, "results", 1) == 5
