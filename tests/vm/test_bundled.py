"""`kitl run` of the bundled scenarios (tc, tracing, cgroup, lsm, kernel-range) on real
kernels: one boot per kernel runs them all; every cell must pass and a few of the effects
each scenario measures are checked in results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from tests.vm.conftest import VM_KERNELS

SCENARIOS = Path(__file__).parents[2] / "scenarios"
BUNDLED = ["tc", "tracing", "cgroup", "lsm", "kernel-range"]
CASES = {
    "tc": 4,
    "tracing": 7,
    "cgroup": 4,
    "lsm": 2,
    "kernel-range": 3,
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
        # bookworm's libbpf 1.1 cannot probe arena maps: the kernel's BTF decides, noted
        assert arena["outcome"] == "PASSED", arena
        assert any("cannot probe" in n for n in arena["observed"]["notes"]), arena["observed"]
    failed = {k: c["reason"] for k, c in results.items() if c["outcome"] != "PASSED"}
    assert status == 0, failed
    assert not failed

    def cell(scenario: str, case: str) -> dict[str, Any]:
        return results[f"{scenario}::{case}[{name}-default]"]

    # tc: clsact ingress drops real UDP and counts it; test_run gives TC_ACT_SHOT (2)
    shot = cell("tc", "shot-udp-traffic")
    assert shot["observed"]["traffic"] == {"sent": 50, "delivered": 0, "dropped": 50}
    assert count(shot, "counts", 0) == 50
    assert cell("tc", "count-udp-traffic")["observed"]["traffic"]["delivered"] == 50
    assert cell("tc", "shot-test-run")["observed"]["test_run"]["retval"] == 2

    # tracing: every hook counted exactly the trigger's syscalls
    for case, key, want in [
        ("kprobe-getppid", 0, 5),
        ("tracepoint-sys-enter-getppid", 1, 5),
        ("raw-tracepoint-sys-enter", 2, 5),
        ("tp-btf-sys-enter", 3, 5),
        ("fentry-do-sys-openat2", 4, 3),
        ("fexit-do-sys-openat2", 5, 3),
    ]:
        assert count(cell("tracing", case), "counts", key) == want, case
    assert cell("tracing", "tracepoint-ringbuf-events")["observed"]["events"] == {"events": 5}

    # cgroup: the drive ran inside the cgroup, so the programs saw (and refused) it
    denied = cell("cgroup", "connect4-denied-port")
    assert denied["observed"]["syscall"]["status"] == 3
    assert count(denied, "counts", 0) == 1
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

    # kernel-range: bpf_loop runs everywhere here; the CO-RE field exists from 6.11 on
    assert count(cell("kernel-range", "bpf-loop-sum"), "results", 0) == 4 * 45
    core = cell("kernel-range", "core-field-newer-kernels")
    if core["expected"]["load"] == "rejected":
        assert core["observed"]["error_class"] == "CORE_RELOCATION_FAILED"
    else:
        assert count(core, "results", 1) == 5
