"""How many workers (pytest-xdist processes, one guest up at a time each) a run gets, and
how many vCPUs each of their guests boots with.

`kitl run` and `kitl verify` run with `-n auto` unless told otherwise: as many workers as
the host holds guests, never more than the plan has kernel groups.

- **Cores.**  A parallel guest boots with one vCPU (`guest_vcpus`), and under TCG a vCPU
  is a host thread that runs flat out while its guest boots or works: one guest per core.
  On this project's 2-core host, two 1-vCPU guests ran the matrix 1.71x faster than one
  (docs/benchmarks.md), while two 2-vCPU guests starved each other.  The same holds under
  KVM: an idle vCPU is cheap there, but a working one still takes a core, the host's
  guest slots (harness.vm.slots) count one per vCPU whatever the accelerator, and the
  count must be known (and printed by --dry-run) before `--accel auto` has probed
  anything.  `KITL_GUEST_SLOTS`, the slots' capacity when set, replaces the cores.
- **Memory.**  Each guest may touch all of its `--memory` (GuestSettings' 2G), so as many
  guests as MemAvailable holds of those; QEMU's own and the worker's fit in what a guest
  leaves untouched (a working TCG guest's qemu measured 0.55 GiB resident here).
- **Groups.**  `--dist loadgroup` sends every cell of a kernel to one worker, so a worker
  beyond the number of kernels would have nothing to do but make the others' guests
  smaller: never more workers than kernel groups.

One worker is no xdist at all (harness.run.options).  The rule (`choose`) is pure; `host`
reads what it needs from the system, `decide` puts them together and logs the decision.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError
from harness.vm.machine import GuestSettings
from harness.vm.slots import SLOTS_ENV, env_capacity

log = logging.getLogger(__name__)

MEMINFO = Path("/proc/meminfo")
AUTO = "auto"
MAX_GUEST_VCPUS = 2  # a guest alone on the host: what the cells gain from a second vCPU
GIB = 2**30
_UNITS = {"": 2**20, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}  # QEMU's -m, bare: MiB


def parse_workers(text: str | None) -> int | None:
    """-n as typed: a positive count, or None for auto (also when not given)."""
    if text is None or text.strip().lower() == AUTO:
        return None
    value = text.strip()
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"-n {text}: expected a number of workers (1 or more) or auto")
    return int(value)


def parse_size(text: str) -> int:
    """A guest's memory as QEMU's -m takes it ("2G", "2048M", "512"), in bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if m is None:
        raise UsageError(f"--memory {text}: expected a size such as 2G or 2048M")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_meminfo(text: str) -> int | None:
    """MemAvailable of /proc/meminfo, in bytes (None when the kernel does not say)."""
    m = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


@dataclass(frozen=True)
class Host:
    """What the host offers guests."""

    cores: int  # the CPUs this process may run on
    available: int | None  # bytes of MemAvailable; None: unknown (no memory bound)
    slots: int | None = None  # KITL_GUEST_SLOTS when set: replaces the cores


@dataclass(frozen=True)
class Workers:
    """A decided worker count, with what it was decided from (for the log)."""

    count: int
    given: bool  # -n N: the user's, nothing else was looked at
    host: Host | None = None
    guest_memory: int = 0  # bytes
    groups: int = 0

    def describe(self) -> str:
        """ "2 (2 cores, 21.3 GiB free / 2 GiB per guest, 5 kernel groups)"."""
        if self.given or self.host is None:
            return f"{self.count} (-n {self.count})"
        host = self.host
        cores = f"{SLOTS_ENV}={host.slots}" if host.slots else _plural(host.cores, "core")
        free = "free memory unknown"
        if host.available is not None:
            free = f"{host.available / GIB:.1f} GiB free / {self.guest_memory / GIB:g} GiB"
            free += " per guest"
        groups = _plural(self.groups, "kernel group")
        return f"{self.count} ({cores}, {free}, {groups})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def choose(host: Host, guest_memory: int, groups: int) -> Workers:
    """-n auto: the guests the cores hold (one vCPU each), at most as many as memory holds
    and as the plan has kernel groups; one at least (a run always has a worker)."""
    bounds = [host.slots or host.cores, groups]
    if host.available is not None:
        bounds.append(host.available // max(1, guest_memory))
    return Workers(max(1, min(bounds)), False, host, guest_memory, groups)


def guest_vcpus(cores: int, workers: int) -> int:
    """The vCPUs of each worker's guest: the cores shared out, one at least (the rule of
    `choose` makes that one per core), two at most."""
    return max(1, min(MAX_GUEST_VCPUS, cores // max(1, workers)))


def host_cores() -> int:
    """The CPUs this process may run on (a container's cpuset, taskset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host(meminfo: Path = MEMINFO) -> Host:
    """The host as `choose` sees it."""
    try:
        available = parse_meminfo(meminfo.read_text())
    except OSError:
        available = None
    return Host(host_cores(), available, env_capacity())


def decide(given: int | None, groups: int, memory: str = GuestSettings.memory) -> int:
    """The worker count of a run whose plan has `groups` kernels: -n N as given, else
    `choose`'s; logged (kitl --verbose)."""
    if given is not None:
        workers = Workers(given, True)
    else:
        workers = choose(host(), parse_size(memory), groups)
    log.info("workers: %s", workers.describe())
    return workers.count
