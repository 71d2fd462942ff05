"""How busy the host is: what a slow or stalled boot is judged against.

Under TCG a guest is only as fast as the host threads that emulate it.  When a boot stalls
or runs out of time, kitl says whether the host was overloaded (load average well over the
cores, CPU time stolen by the hypervisor, other QEMU guests) instead of a bare timeout, so
the user knows to lower -n or move the job rather than suspect the kernel.

The parsers are pure (the text of /proc files in, numbers out); `snapshot` reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# Overloaded: more runnable work than this many times the cores, or this much of the CPU
# time stolen by the hypervisor over the window looked at.
LOAD_PER_CORE = 1.5
STEAL_SHARE = 0.2


@dataclass(frozen=True)
class CpuTimes:
    """Aggregate CPU time of the host (`cpu` line of /proc/stat), in clock ticks."""

    total: int
    steal: int


@dataclass(frozen=True)
class HostLoad:
    load1: float
    cores: int
    qemus: int  # QEMU processes on the host, this guest's own included
    steal_share: float | None  # of all CPU time since the `since` sample; None: unknown

    @property
    def overloaded(self) -> bool:
        steal = self.steal_share is not None and self.steal_share >= STEAL_SHARE
        return self.load1 >= LOAD_PER_CORE * self.cores or steal

    def describe(self) -> str:
        """ "load 6.8 on 2 cores, 3 QEMU processes, 12% steal"."""
        parts = [f"load {self.load1:.1f} on {self.cores} cores"]
        if self.qemus:
            parts.append(f"{self.qemus} QEMU process{'es' if self.qemus != 1 else ''}")
        if self.steal_share:
            parts.append(f"{self.steal_share:.0%} steal")
        return ", ".join(parts)

    def verdict(self) -> str:
        """What a boot failure message appends: whether the host was the likely cause."""
        if self.overloaded:
            return f"host overloaded: {self.describe()}"
        return f"host not overloaded: {self.describe()}"


def parse_loadavg(text: str) -> float:
    """The 1-minute load average from /proc/loadavg."""
    return float(text.split(maxsplit=1)[0])


def parse_cpu_times(text: str) -> CpuTimes:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq
    steal [guest guest_nice]; guest time is already counted in user, so it is left out."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(v) for v in fields[1:9]]
            ticks += [0] * (8 - len(ticks))
            return CpuTimes(total=sum(ticks), steal=ticks[7])
    raise ValueError("no aggregate cpu line in /proc/stat")


def steal_share(before: CpuTimes, after: CpuTimes) -> float | None:
    elapsed = after.total - before.total
    if elapsed <= 0:
        return None
    return (after.steal - before.steal) / elapsed


def count_qemus(comms: list[str]) -> int:
    """QEMU processes among process names (/proc/PID/comm: "qemu-system-x86", truncated
    to 15 characters by the kernel)."""
    return sum(1 for c in comms if c.strip().startswith("qemu-system"))


def cpu_times(proc: Path = PROC) -> CpuTimes | None:
    try:
        return parse_cpu_times((proc / "stat").read_text())
    except (OSError, ValueError):
        return None


def _comms(proc: Path) -> list[str]:
    names = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                names.append((entry / "comm").read_text())
            except OSError:
                continue  # gone meanwhile
    return names


def snapshot(since: CpuTimes | None = None, proc: Path = PROC) -> HostLoad:
    """The host's load now; steal is measured from `since` (a `cpu_times()` sample taken
    when the boot started) when given."""
    try:
        load1 = parse_loadavg((proc / "loadavg").read_text())
    except (OSError, ValueError, IndexError):
        load1 = 0.0
    now = cpu_times(proc)
    share = steal_share(since, now) if since is not None and now is not None else None
    return HostLoad(load1, os.cpu_count() or 1, count_qemus(_comms(proc)), share)
