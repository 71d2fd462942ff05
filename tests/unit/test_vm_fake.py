"""The VM lifecycle against the fake launcher: readiness, crashes, exits, timeouts, teardown."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.errors import (
    BootError,
    BootStalledError,
    BootTimeoutError,
    GuestLostError,
    KernelCrashError,
    outcome_for_error,
)
from harness.kernel.store import Kernel
from harness.outcome import Outcome
from harness.vm.machine import VM, GuestSettings
from tests.fakes import FakeLauncher

PANIC = """\
[   12.345678] sysrq: Trigger a crash
[   12.345901] Kernel panic - not syncing: sysrq triggered crash
[   12.346012] CPU: 0 PID: 230 Comm: sh Not tainted 6.1.0-fake #1
[   12.346100] Call Trace:
[   12.346150]  <TASK>
[   12.346200]  dump_stack_lvl+0x44/0x5c
[   12.346250]  panic+0x118/0x2ed
[   12.346300]  sysrq_handle_crash+0x16/0x20
[   12.346350]  __handle_sysrq.cold+0x43/0x11b
[   12.346400]  write_sysrq_trigger+0x24/0x40
[   12.346450]  </TASK>
[   12.346500] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---
"""


def kernel(tmp_path: Path) -> Kernel:
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"")
    return Kernel(name="fake-6.1", release="6.1.0-fake", vmlinuz=image, modules=None)


def fake_vm(tmp_path: Path, launcher: FakeLauncher, boot_timeout: float) -> VM:
    return VM(
        kernel(tmp_path),
        accel="tcg",
        console_path=tmp_path / "c.log",
        launcher=launcher,
        boot_timeout=boot_timeout,
    )


def test_boot_ready_runs_commands_and_tears_down(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    vm = fake_vm(tmp_path, launcher, 5)
    with vm:
        assert vm.record is not None
        assert vm.record.release == "6.1.0-fake"
        state = launcher.started[0].state_dir
        assert (state / "client_key").stat().st_mode & 0o777 == 0o600
        assert "AuthorizedKeysFile" in (state / "sshd_config").read_text()
        result = vm.run(["echo", "hello"], timeout=5)
        assert (result.status, result.stdout) == (0, "hello\n")
    assert launcher.processes[0].killed
    assert not state.exists(), "per-VM keys must be deleted with the VM"
    assert launcher.channels[0].closed
    assert "KITL-READY" in (tmp_path / "c.log").read_text()


def test_panic_during_boot_is_a_kernel_crash_with_fingerprint(tmp_path: Path) -> None:
    launcher = FakeLauncher(console=[(0.0, PANIC)])
    vm = fake_vm(tmp_path, launcher, 5)
    with pytest.raises(KernelCrashError) as info:
        vm.__enter__()
    assert "sysrq triggered crash" in str(info.value)
    assert len(info.value.fingerprint) == 12
    assert "write_sysrq_trigger" in info.value.splat_text
    assert outcome_for_error(info.value) is Outcome.KERNEL_CRASH
    assert Outcome.KERNEL_CRASH.is_infrastructure
    assert not Outcome.VERIFIER_REJECTED.is_infrastructure
    assert launcher.processes[0].killed


def test_exit_before_ready_names_the_console_tail(tmp_path: Path) -> None:
    launcher = FakeLauncher(
        console=[
            (0.0, "qemu-system-x86_64: -netdev user: Could not set up host forwarding rule\n")
        ],
        exit_status=1,
    )
    vm = fake_vm(tmp_path, launcher, 5)
    with pytest.raises(BootError, match=r"exited with status 1.*host forwarding"):
        vm.__enter__()
    assert outcome_for_error(BootError("x")) is Outcome.BOOT_FAILED


def test_boot_timeout_is_typed_and_kills_the_vm(tmp_path: Path) -> None:
    launcher = FakeLauncher(console=[(0.0, "Probing EDD (edd=off to disable)... ok\n")])
    vm = fake_vm(tmp_path, launcher, 0.5)
    with pytest.raises(BootTimeoutError, match="timed out after 0s") as info:
        vm.__enter__()
    assert launcher.processes[0].killed
    assert len(launcher.started) == 1  # the backstop is not retried: the guest was alive
    assert "host overloaded: load" in str(info.value) or "host not overloaded" in str(info.value)
    assert outcome_for_error(info.value) is Outcome.BOOT_FAILED  # the kernel never came up


def stalling_vm(tmp_path: Path, launcher: FakeLauncher) -> VM:
    return VM(
        kernel(tmp_path),
        accel="tcg",
        console_path=tmp_path / "c.log",
        launcher=launcher,
        boot_timeout=30,
        stall_window=0.4,
    )


def test_a_stalled_boot_is_retried_once_on_a_fresh_vm(tmp_path: Path) -> None:
    stuck = [(0.0, "[    0.000000] Linux version 6.1.0-fake\n"), (5.0, "never\n")]
    launcher = FakeLauncher(attempt_consoles=[stuck])
    started = time.monotonic()
    with stalling_vm(tmp_path, launcher) as vm:
        assert vm.record is not None
        assert "boot stalled: no console output for 0s" in vm.record.retried
        assert "c.log.attempt1" in vm.record.retried
    assert time.monotonic() - started < 4  # judged by the stall window, not the backstop
    assert len(launcher.started) == 2
    assert launcher.processes[0].killed
    assert "Linux version" in (tmp_path / "c.log.attempt1").read_text()


def test_a_boot_stalled_twice_fails_as_boot_failed_naming_the_host(tmp_path: Path) -> None:
    stuck = [(0.0, "[    0.000000] Linux version 6.1.0-fake\n"), (5.0, "never\n")]
    launcher = FakeLauncher(attempt_consoles=[stuck, stuck])
    with pytest.raises(BootStalledError) as info:
        stalling_vm(tmp_path, launcher).__enter__()
    assert " cores" in str(info.value)  # the host's load, named
    assert outcome_for_error(info.value) is Outcome.BOOT_FAILED
    assert all(p.killed for p in launcher.processes)


def test_a_slow_boot_that_keeps_printing_is_not_stalled(tmp_path: Path) -> None:
    """Each line comes after more than half the stall window: slow, but progressing, as a
    starved TCG guest is; the whole boot takes longer than the window several times."""
    slow = [(0.25, f"[   {n}.000000] still booting\n") for n in range(8)]
    launcher = FakeLauncher(console=[*slow, (0.25, "KITL-READY 6.1.0-fake\n")])
    with stalling_vm(tmp_path, launcher) as vm:
        assert vm.record is not None
        assert vm.record.retried == ""
        assert vm.record.boot_seconds > 1.6
    assert len(launcher.started) == 1


def test_guest_setup_failure_line_is_reported(tmp_path: Path) -> None:
    launcher = FakeLauncher(console=[(0.0, "KITL-FAILED sshd: no hostkeys available\n")])
    vm = fake_vm(tmp_path, launcher, 5)
    with pytest.raises(BootError, match="no hostkeys available"):
        vm.__enter__()


def test_lost_channel_after_panic_is_a_crash_not_a_lost_vm(tmp_path: Path) -> None:
    launcher = FakeLauncher(console=[(0.0, "KITL-READY 6.1.0-fake\n"), (0.3, PANIC)], lose_after=1)
    with (
        fake_vm(tmp_path, launcher, 5) as vm,
        pytest.raises(KernelCrashError),
    ):
        vm.run(["true"], timeout=5)


def test_lost_channel_without_panic_is_vm_lost(tmp_path: Path) -> None:
    launcher = FakeLauncher(lose_after=1)
    with fake_vm(tmp_path, launcher, 5) as vm:
        launcher.processes[0].exit_status = -9  # qemu killed from outside
        with pytest.raises(GuestLostError) as info:
            vm.run(["true"], timeout=5)
        assert outcome_for_error(info.value) is Outcome.VM_LOST


def test_a_crash_while_booting_is_retried_once_and_recorded(tmp_path: Path) -> None:
    launcher = FakeLauncher(attempt_consoles=[[(0.0, PANIC)]])
    with fake_vm(tmp_path, launcher, 5) as vm:
        assert vm.record is not None
        assert "sysrq triggered crash" in vm.record.retried
        assert vm.run(["true"], timeout=5).ok
    assert len(launcher.started) == 2
    assert launcher.processes[0].killed
    assert "Kernel panic" in (tmp_path / "c.log.attempt1").read_text()
    assert "KITL-READY" in (tmp_path / "c.log").read_text()


def test_a_guest_is_usable_until_it_crashes_or_its_process_ends(tmp_path: Path) -> None:
    launcher = FakeLauncher(console=[(0.0, "KITL-READY 6.1.0-fake\n"), (0.3, PANIC)])
    with fake_vm(tmp_path, launcher, 5) as vm:
        assert vm.usable()
        deadline = time.monotonic() + 5
        while vm.usable() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not vm.usable(), "a fatal crash on the console makes the guest unusable"
    assert not vm.usable(), "a closed VM is not usable"
    launcher = FakeLauncher()
    with fake_vm(tmp_path, launcher, 5) as vm:
        launcher.processes[0].exit_status = 0
        assert not vm.usable(), "a guest whose process ended is not usable"


def test_guest_settings_make_every_vm_the_same_way(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    settings = GuestSettings("tcg", boot_timeout=7, cpus=1, memory="1G", launcher=launcher)
    with settings.vm(kernel(tmp_path), tmp_path / "c.log") as vm:
        assert (vm.accel, vm.boot_timeout, vm.cpus, vm.memory) == ("tcg", 7, 1, "1G")
        assert vm.launcher is launcher
        assert vm.run(["echo", "up"], timeout=5).stdout == "up\n"
