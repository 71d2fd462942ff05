"""-n auto, the default of kitl run and kitl verify (harness.run.workers): as many workers
as the host's cores and memory hold guests, never more than the plan has kernels; -n N as
given, -n 1 without xdist; a bad -n is one line, exit 2, before anything boots."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.errors import UsageError
from harness.run import workers
from harness.run.workers import GIB, Host, choose, guest_vcpus, parse_workers
from harness.vm.slots import SLOTS_ENV

SCENARIO = Path(__file__).parents[2] / "scenarios" / "xdp-basics"
GUEST = 2 * GIB


@pytest.mark.parametrize(
    ("host", "groups", "count"),
    [
        (Host(cores=2, available=int(21.3 * GIB)), 5, 2),  # this project's host: the cores
        (Host(cores=16, available=64 * GIB), 5, 5),  # the kernels: one worker each
        (Host(cores=16, available=64 * GIB), 1, 1),  # one kernel: no xdist
        (Host(cores=16, available=7 * GIB), 5, 3),  # memory: three 2 GiB guests
        (Host(cores=16, available=1 * GIB), 5, 1),  # not even one guest fits: one anyway
        (Host(cores=1, available=64 * GIB), 5, 1),
        (Host(cores=16, available=None), 5, 5),  # memory unknown: not a bound
        (Host(cores=2, available=64 * GIB, slots=4), 5, 4),  # KITL_GUEST_SLOTS: the cores
        (Host(cores=2, available=64 * GIB), 0, 1),  # nothing planned: still one
    ],
)
def test_auto_is_the_least_of_cores_memory_and_kernel_groups(
    host: Host, groups: int, count: int
) -> None:
    assert choose(host, GUEST, groups).count == count


def test_a_bigger_guest_fits_fewer_times() -> None:
    host = Host(cores=32, available=20 * GIB)
    assert choose(host, 2 * GIB, 10).count == 10
    assert choose(host, 4 * GIB, 10).count == 5


def test_the_decision_says_what_it_was_made_from() -> None:
    made = choose(Host(cores=2, available=int(21.3 * GIB)), GUEST, 5)
    assert made.describe() == "2 (2 cores, 21.3 GiB free / 2 GiB per guest, 5 kernel groups)"
    one = choose(Host(cores=1, available=None, slots=3), GUEST, 1)
    assert one.describe() == f"1 ({SLOTS_ENV}=3, free memory unknown, 1 kernel group)"


@pytest.mark.parametrize(
    ("cores", "count", "vcpus"),
    [(2, 1, 2), (2, 2, 1), (4, 2, 2), (16, 2, 2), (8, 5, 1), (2, 5, 1), (1, 1, 1)],
)
def test_guests_share_the_cores_one_vcpu_at_least_two_at_most(
    cores: int, count: int, vcpus: int
) -> None:
    assert guest_vcpus(cores, count) == vcpus


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 64])
def test_auto_never_puts_more_vcpus_than_cores_on_the_host(cores: int) -> None:
    for groups in range(1, 12):
        count = choose(Host(cores, 256 * GIB), GUEST, groups).count
        assert count * guest_vcpus(cores, count) <= cores


@pytest.mark.parametrize(
    ("text", "value"), [(None, None), ("auto", None), ("AUTO", None), ("1", 1), (" 3 ", 3)]
)
def test_minus_n_parses(text: str | None, value: int | None) -> None:
    assert parse_workers(text) == value


@pytest.mark.parametrize("text", ["0", "x", "-1", "2.5", ""])
def test_a_bad_minus_n_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match=f"-n {text}: expected a number of workers"):
        parse_workers(text)


def test_sizes_and_meminfo_parse() -> None:
    assert workers.parse_size("2G") == 2 * GIB
    assert workers.parse_size("2048M") == 2 * GIB
    assert workers.parse_size("512") == 512 * 2**20  # QEMU's -m: a bare number is MiB
    assert workers.parse_size("1.5g") == int(1.5 * GIB)
    with pytest.raises(UsageError, match="--memory lots"):
        workers.parse_size("lots")
    meminfo = "MemTotal:       24683584 kB\nMemFree:  100 kB\nMemAvailable:   22369260 kB\n"
    assert workers.parse_meminfo(meminfo) == 22369260 * 1024
    assert workers.parse_meminfo("MemTotal: 1 kB\n") is None


def test_the_host_is_read_from_affinity_meminfo_and_the_slots_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8388608 kB\nMemAvailable: 4194304 kB\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    monkeypatch.delenv(SLOTS_ENV, raising=False)
    assert workers.host(meminfo) == Host(3, 4 * GIB, None)
    monkeypatch.setenv(SLOTS_ENV, "6")
    assert workers.host(tmp_path / "absent") == Host(3, None, 6)


def test_the_front_logs_its_decision(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(workers, "host", lambda: Host(4, 64 * GIB))
    with caplog.at_level(logging.INFO, logger="harness.run.workers"):
        assert workers.decide(None, 3) == 3
        assert workers.decide(7, 3) == 7  # -n N is the user's: nothing is capped
    assert caplog.messages == [
        "workers: 3 (4 cores, 64.0 GiB free / 2 GiB per guest, 3 kernel groups)",
        "workers: 7 (-n 7)",
    ]


# --- the command line ----------------------------------------------------------------------


def _dry_run(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The pytest command `kitl run --dry-run` prints, on a host of 4 cores and 64 GiB."""
    monkeypatch.setattr(workers, "host", lambda: Host(4, 64 * GIB))
    assert main(["run", "--dry-run", *argv, str(SCENARIO)]) == 0
    return capsys.readouterr().out.split()


@pytest.mark.parametrize(
    ("given", "tail"),
    [
        ([], ["-n", "2", "--dist", "loadgroup"]),  # auto: two kernels, two workers
        (["-n", "auto"], ["-n", "2", "--dist", "loadgroup"]),
        (["-n", "3"], ["-n", "3", "--dist", "loadgroup"]),  # as given, even past the kernels
        (["-n", "1"], []),  # one at a time: no xdist
    ],
)
def test_dry_run_prints_the_chosen_workers(
    given: list[str],
    tail: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    kernels = ["--kernels", "debian-6.1,debian-7.2"]
    printed = _dry_run([*kernels, *given], capsys, monkeypatch)
    kitl_end = printed.index("debian-6.1,debian-7.2") + 1
    assert printed[kitl_end:-1] == tail


def test_auto_counts_only_the_kernels_left_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard that holds one kernel's cells runs without xdist, whatever the matrix."""
    monkeypatch.chdir(tmp_path)
    printed = _dry_run(
        ["--kernels", "debian-6.1,debian-7.2", "--shard", "1/4"], capsys, monkeypatch
    )
    assert "-n" not in printed
    assert "-n" in _dry_run(["--kernels", "debian-6.1,debian-7.2"], capsys, monkeypatch)


@pytest.mark.parametrize("command", [["run", "--dry-run"], ["verify", "x.o", "--dry-run"]])
@pytest.mark.parametrize("value", ["0", "x"])
def test_a_bad_minus_n_is_one_line_and_exit_2(
    command: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "-n", value]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"kitl: -n {value}: expected a number of workers (1 or more) or auto"
    ]
