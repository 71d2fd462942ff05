"""Admission (harness.vm.slots) with real lock files and real processes, no QEMU: a guest
waits while other processes' guests fill the host, is admitted when one goes, a dead
holder's slots come back, and a process never waits on itself."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from multiprocessing.context import SpawnProcess
from pathlib import Path

import pytest

from harness.kernel.store import Kernel
from harness.vm import slots
from harness.vm.machine import VM
from harness.vm.slots import GuestSlots
from tests.fakes import FakeLauncher


def hold(directory: str, vcpus: int, ready: str, seconds: float) -> None:
    """A child process: take `vcpus` slots, say so, hold them, exit (releasing them)."""
    admission = GuestSlots(Path(directory), 2).admit(vcpus, "child")
    Path(ready).write_text(str(len(admission.locks)))
    time.sleep(seconds)


def start_holder(tmp_path: Path, vcpus: int, seconds: float) -> SpawnProcess:
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    proc = multiprocessing.get_context("spawn").Process(
        target=hold, args=(str(tmp_path / "slots"), vcpus, str(ready), seconds)
    )
    proc.start()
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline, "the holder never took its slots"
        time.sleep(0.05)
    return proc


def test_a_guest_waits_while_the_host_is_full_and_is_admitted_when_a_guest_goes(
    tmp_path: Path,
) -> None:
    holder = start_holder(tmp_path, vcpus=2, seconds=1.5)
    said: list[str] = []
    started = time.monotonic()
    admission = GuestSlots(tmp_path / "slots", 2).admit(1, "debian-6.1", on_wait=said.append)
    waited = time.monotonic() - started
    holder.join()
    assert waited > 0.8  # until the holder exited
    assert said == [
        "debian-6.1: waiting for 1 guest slot (all 2 taken by other kitl guests on this host)"
    ]
    assert len(admission.locks) == 1
    assert not admission.over_capacity
    admission.release()


def test_two_guests_of_one_vcpu_share_two_slots_without_waiting(tmp_path: Path) -> None:
    holder = start_holder(tmp_path, vcpus=1, seconds=3)
    started = time.monotonic()
    admission = GuestSlots(tmp_path / "slots", 2).admit(1, "debian-7.2")
    assert time.monotonic() - started < 0.5
    admission.release()
    holder.terminate()
    holder.join()


def test_a_killed_holder_gives_its_slots_back(tmp_path: Path) -> None:
    holder = start_holder(tmp_path, vcpus=2, seconds=60)
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops its flocks
    holder.join()
    started = time.monotonic()
    admission = GuestSlots(tmp_path / "slots", 2).admit(2, "debian-6.1")
    assert time.monotonic() - started < 0.5
    assert len(admission.locks) == 2
    admission.release()


def test_a_process_holding_slots_goes_over_capacity_rather_than_wait(tmp_path: Path) -> None:
    """The test suite's fixtures hold one guest per kernel: a second guest of the same
    process must not wait for the first, which only it can release."""
    pool = GuestSlots(tmp_path / "slots", 2)
    first = pool.admit(2, "debian-6.1")
    started = time.monotonic()
    second = pool.admit(2, "debian-7.2")
    assert time.monotonic() - started < 0.5
    assert second.over_capacity
    assert second.locks == []
    first.release()
    second.release()
    third = pool.admit(2, "debian-6.12")  # everything was given back
    assert len(third.locks) == 2
    assert not third.over_capacity
    third.release()


def test_a_guest_never_asks_for_more_slots_than_there_are(tmp_path: Path) -> None:
    admission = GuestSlots(tmp_path / "slots", 1).admit(2, "debian-6.1")
    assert len(admission.locks) == 1
    admission.release()


@pytest.mark.parametrize(
    ("env", "cores", "memory", "expected"),
    [
        ("", 2, 24.0, 2),  # this machine: two cores
        ("", 16, 8.0, 4),  # memory for four 2 GiB guests only
        ("", 4, 1.0, 1),  # never zero
        ("3", 2, 24.0, 3),  # the user's word
        ("lots", 2, 24.0, 2),  # not a number: ignored (with a warning)
    ],
)
def test_capacity(
    monkeypatch: pytest.MonkeyPatch, env: str, cores: int, memory: float, expected: int
) -> None:
    monkeypatch.setenv(slots.SLOTS_ENV, env)
    assert slots.capacity(cores, memory) == expected


def test_a_vm_waits_for_its_slots_before_it_boots_and_records_the_wait(tmp_path: Path) -> None:
    holder = start_holder(tmp_path, vcpus=2, seconds=1.5)
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"")
    said: list[str] = []
    launcher = FakeLauncher()
    vm = VM(
        Kernel(name="fake-6.1", release="6.1.0-fake", vmlinuz=image, modules=None),
        accel="tcg",
        console_path=tmp_path / "c.log",
        launcher=launcher,
        cpus=2,
        slots=GuestSlots(tmp_path / "slots", 2),
        on_wait=said.append,
    )
    with vm:
        assert vm.record is not None
        assert vm.record.waited_s > 0.8
        assert said == [
            "fake-6.1: waiting for 2 guest slots (all 2 taken by other kitl guests on this host)"
        ]
        holder.join()
        assert GuestSlots(tmp_path / "slots", 2)._try(1) == []  # the VM holds both
    free = GuestSlots(tmp_path / "slots", 2)._try(2)
    assert len(free) == 2  # closing the VM gave them back
    for lock in free:
        lock.release()
