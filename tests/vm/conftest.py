"""Fixtures for tests that boot real kernels under QEMU.

Nothing here skips: a missing tool, a failed fetch or a boot that does not come up makes
the test fail with the reason.  Each kernel is fetched (from the cache when warm) and
booted once per session; the VMs are torn down at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.kernel.cache import Cache
from harness.kernel.resolve import Kernels
from harness.kernel.store import Kernel
from harness.vm import accel
from harness.vm.machine import VM

# At least one kernel of the old and one of the new Debian packaging; the two must boot in CI.
VM_KERNELS = ["debian-6.1", "debian-7.2"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/vm/" in str(item.path):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def kernels() -> Kernels:
    return Kernels.open(Cache.default())


@pytest.fixture(scope="session")
def accel_name(kernels: Kernels) -> str:
    first = kernels.get(VM_KERNELS[0])
    decision = accel.decide(
        "auto", kernels.store.cache, lambda: accel.qemu_kvm_probe(first.vmlinuz)
    )
    return decision.accel


class VmPool:
    def __init__(self, kernels: Kernels, accel_name: str, logs: Path) -> None:
        self.kernels, self.accel, self.logs = kernels, accel_name, logs
        self.vms: dict[str, VM] = {}
        self.boots: dict[str, int] = {}

    def get(self, name: str) -> tuple[Kernel, VM]:
        """The running guest of a kernel; one that crashed or died is replaced by a fresh
        boot, so that one crash fails the test that met it, not every later test."""
        kernel = self.kernels.get(name)
        old = self.vms.get(name)
        if old is not None and not old.usable():
            old.close()
            del self.vms[name]
        if name not in self.vms:
            self.boots[name] = self.boots.get(name, 0) + 1
            suffix = "" if self.boots[name] == 1 else f".boot{self.boots[name]}"
            console = self.logs / f"console-{name}{suffix}.log"
            vm = VM(kernel, accel=self.accel, console_path=console)
            vm.__enter__()
            self.vms[name] = vm
        return kernel, self.vms[name]

    def close(self) -> None:
        for vm in self.vms.values():
            vm.close()


@pytest.fixture(scope="session")
def vm_pool(
    kernels: Kernels, accel_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VmPool]:
    pool = VmPool(kernels, accel_name, tmp_path_factory.mktemp("consoles"))
    yield pool
    pool.close()
