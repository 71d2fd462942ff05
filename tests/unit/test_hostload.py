"""The host-load verdict a stalled boot or a timed-out cell carries: parsers on /proc text
as a loaded and a quiet host show it, and the snapshot on a fake /proc."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.vm import hostload
from harness.vm.hostload import CpuTimes, HostLoad

# /proc/stat of a 2-core guest-of-a-cloud host: user nice system idle iowait irq softirq
# steal guest guest_nice
STAT = """cpu  10132153 290696 3084719 46828483 16683 0 25195 175628 0 0
cpu0 5088383 145348 1542361 23414224 8343 0 12598 87814 0 0
cpu1 5043770 145348 1542358 23414259 8340 0 12597 87814 0 0
intr 1462898 0 0 0
"""


def test_parsers() -> None:
    assert hostload.parse_loadavg("6.80 3.12 1.05 7/412 31337\n") == 6.8
    times = hostload.parse_cpu_times(STAT)
    assert times.steal == 175628
    assert times.total == 10132153 + 290696 + 3084719 + 46828483 + 16683 + 25195 + 175628
    with pytest.raises(ValueError, match="no aggregate cpu line"):
        hostload.parse_cpu_times("intr 1 2 3\n")
    assert hostload.count_qemus(["qemu-system-x86\n", "python3\n", "qemu-system-aar\n"]) == 2


def test_steal_share_over_a_window() -> None:
    before, after = CpuTimes(total=1000, steal=10), CpuTimes(total=2000, steal=310)
    assert hostload.steal_share(before, after) == pytest.approx(0.3)
    assert hostload.steal_share(after, after) is None


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (HostLoad(6.8, 2, 3, None), "host overloaded: load 6.8 on 2 cores, 3 QEMU processes"),
        (
            HostLoad(1.0, 2, 1, 0.35),
            "host overloaded: load 1.0 on 2 cores, 1 QEMU process, 35% steal",
        ),
        (HostLoad(1.2, 2, 1, 0.0), "host not overloaded: load 1.2 on 2 cores, 1 QEMU process"),
    ],
)
def test_the_verdict_names_what_loads_the_host(load: HostLoad, expected: str) -> None:
    assert load.verdict() == expected


def test_a_snapshot_of_a_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "loadavg").write_text("7.01 6.00 5.00 9/300 4242\n")
    (tmp_path / "stat").write_text(STAT)
    for pid, comm in ((101, "qemu-system-x86"), (102, "qemu-system-x86"), (103, "sshd")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")
    since = CpuTimes(total=hostload.parse_cpu_times(STAT).total - 100, steal=175628 - 50)
    load = hostload.snapshot(since=since, proc=tmp_path)
    assert (load.load1, load.qemus, load.steal_share) == (7.01, 2, 0.5)
    assert load.overloaded
