"""The spine on real kernels: fetched from Debian, booted with virtme-ng, driven over SSH."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from harness.cli.main import main
from harness.errors import GuestTimeoutError
from harness.outcome import Outcome
from harness.vm.bootcheck import check
from tests.vm.conftest import VM_KERNELS, VmPool


def kitl_qemus() -> list[str]:
    """qemu processes of VMs this test process started (other kitl runs may share the host)."""
    out = subprocess.run(
        ["pgrep", "-af", f"qemu-system-x86_64 -name kitl-{os.getpid()}-"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sorted(line for line in out.splitlines() if "pgrep" not in line)


@pytest.mark.parametrize("name", VM_KERNELS)
def test_guest_runs_the_kernel_asked_for_with_btf_veth_and_netdevsim(
    vm_pool: VmPool, name: str
) -> None:
    kernel, vm = vm_pool.get(name)
    locked = vm_pool.kernels.locked(vm_pool.kernels.catalog.get(name))
    result = check(vm, kernel)
    assert result.release == locked.release, result.problems
    assert result.btf, "/sys/kernel/btf/vmlinux missing"
    assert result.veth
    assert result.netdevsim_netdev, result.netdevsim_error
    assert result.netdevsim_vermagic == kernel.release
    assert result.outcome is Outcome.PASSED, result.problems
    assert vm.record is not None
    assert vm.record.boot_seconds > 1.0
    loaded = vm.run(["sh", "-c", "modprobe netdevsim && modinfo -F filename netdevsim"], timeout=60)
    assert loaded.stdout.strip() == f"/lib/modules/{kernel.release}/extra/netdevsim.ko"


@pytest.mark.parametrize("name", VM_KERNELS)
def test_commands_return_status_stdout_and_stderr(vm_pool: VmPool, name: str) -> None:
    _, vm = vm_pool.get(name)
    result = vm.run(["sh", "-c", "echo out; echo err >&2; exit 7"], timeout=60)
    assert (result.status, result.stdout, result.stderr) == (7, "out\n", "err\n")
    hostile = vm.run(["echo", "a; rm -rf /", "$(id)", "b c"], timeout=60)
    assert hostile.stdout == "a; rm -rf / $(id) b c\n", (
        "argv must reach the guest unquoted by no shell"
    )


def test_ssh_forward_listens_on_loopback_only(vm_pool: VmPool) -> None:
    _, vm = vm_pool.get(VM_KERNELS[0])
    listening = subprocess.run(
        ["ss", "-Hltn", f"sport = :{vm.ssh_port}"], capture_output=True, text=True, check=True
    ).stdout
    assert f"127.0.0.1:{vm.ssh_port}" in listening
    assert f"0.0.0.0:{vm.ssh_port}" not in listening


def test_command_timeout_is_enforced_and_vm_survives(vm_pool: VmPool) -> None:
    _, vm = vm_pool.get(VM_KERNELS[0])
    started = time.monotonic()
    with pytest.raises(GuestTimeoutError):
        vm.run(["sleep", "120"], timeout=3)
    assert time.monotonic() - started < 20
    assert vm.run(["true"], timeout=60).ok


def test_kitl_exec_prints_output_and_exits_with_the_command_status(
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = kitl_qemus()
    status = main(["exec", VM_KERNELS[1], "--", "sh", "-c", "uname -r; echo to-stderr >&2; exit 3"])
    out, err = capfd.readouterr()
    assert status == 3
    assert "+deb14-amd64" in out
    assert "to-stderr" in err
    assert kitl_qemus() == before, "kitl exec must not leave a qemu behind"


def test_kitl_exec_that_crashes_the_guest_says_so_promptly(
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = kitl_qemus()
    started = time.monotonic()
    status = main(["exec", VM_KERNELS[0], "--", "sh", "-c", "echo c > /proc/sysrq-trigger"])
    elapsed = time.monotonic() - started
    _, err = capfd.readouterr()
    assert status == 1
    assert "kernel crash" in err
    assert "sysrq" in err
    assert "write_sysrq_trigger" in err, "the console splat is printed"
    assert elapsed < 400
    assert kitl_qemus() == before
