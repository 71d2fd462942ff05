"""The orchestration of verify-only loads from an object prepared once (harness.guest.
libbpf_clone), on a fake libbpf: statistics first and the whole log only after a failure,
a log that overflows grown to what the kernel says it needs, and the one prepared object
kept per object and settings (its pins removed when it goes).  Real clones against real
loads, program by program: tests/vm/test_clone.py."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from harness.guest import libbpf_clone
from harness.guest.libbpf_clone import BpfProgLoadOpts, PreparedCache, PreparedObject
from harness.guest.libbpf_load import LoadOptions

PROG = 0x1000
STATS = b"processed 7 insns (limit 1000000) max_states_per_insn 0 total_states 1 peak_states 1 mark_read 0\n"  # noqa: E501
TRACE = b"0: (b7) r0 = 0\n1: (95) exit\n"


class FakeC:
    """The libbpf calls a PreparedObject makes; a clone of `reject` fails with EACCES, and
    a log longer than the buffer fails with ENOSPC, reporting the size it needs."""

    def __init__(self, reject: bool = False, trace_bytes: int = len(TRACE)) -> None:
        self.reject, self.trace = reject, (TRACE * (trace_bytes // len(TRACE) + 1))[:trace_bytes]
        self.clones: list[tuple[int, int]] = []  # (log_level, log_size) of each clone
        self.closed = 0
        self.pin: Path | None = None  # a map pinned by name while preparing
        self.rc_failure = -errno.EACCES  # what a rejected clone returns

    def bpf_object__open_file(self, path: bytes, opts: Any) -> int:
        return 0x10

    def bpf_object__prepare(self, obj: int) -> int:
        if self.pin is not None:
            self.pin.touch()
        return 0

    def bpf_object__close(self, obj: int) -> None:
        self.closed += 1

    def bpf_program__set_autoload(self, prog: int, on: bool) -> int:
        return 0

    def bpf_object__find_program_by_name(self, obj: int, name: bytes) -> int | None:
        return PROG if name == b"prog" else None

    def bpf_program__clone(self, prog: int, attr_ref: Any) -> int:
        attr = ctypes.cast(attr_ref, ctypes.POINTER(BpfProgLoadOpts)).contents
        self.clones.append((attr.log_level, attr.log_size))
        if attr.log_level == 0 and not self.reject:
            return os.open(os.devnull, os.O_RDONLY)  # no log; a failure: bpf_prog_load's
            # retry at level 1 into the same buffer, which the log below stands for
        log = (b"" if attr.log_level == 4 else self.trace) + (
            b"R1 invalid mem access 'scalar'\n" if self.reject else b""
        ) + STATS  # fmt: skip
        attr.log_true_size = len(log) + 1
        ctypes.memmove(attr.log_buf, log, min(len(log), attr.log_size - 1))
        if len(log) >= attr.log_size:
            return -errno.ENOSPC
        return self.rc_failure if self.reject else os.open(os.devnull, os.O_RDONLY)

    def bpf_obj_get_info_by_fd(self, fd: int, buf: Any, length: Any) -> int:
        return 0

    def bpf_program__section_name(self, prog: int) -> bytes:
        return b"xdp"

    def bpf_program__type(self, prog: int) -> int:
        return 6

    def bpf_program__expected_attach_type(self, prog: int) -> int:
        return 37

    def bpf_program__insn_cnt(self, prog: int) -> int:
        return 2


class FakeLib:
    def __init__(self, c: FakeC) -> None:
        self.c = c

    def has(self, symbol: str) -> bool:
        return symbol == libbpf_clone.CLONE

    def drain_messages(self) -> str:
        return ""

    def walk(self, function: str, obj: int) -> list[int]:
        return [PROG] if function == "bpf_object__next_program" else []

    def prog_type_name(self, value: int) -> str:
        return "xdp"

    def attach_type_name(self, value: int) -> str:
        return "xdp"


def prepared(c: FakeC) -> PreparedObject:
    found = PreparedObject.open(FakeLib(c), "/o.bpf.o", LoadOptions())  # type: ignore[arg-type]
    assert found is not None
    return found


def test_a_program_that_passes_is_loaded_once_with_statistics_only() -> None:
    c = FakeC()
    load = prepared(c).load("prog", LoadOptions(log_failures_only=True))
    assert (load.ok, load.clone, load.attempts, load.log_level) == (True, True, 1, 4)
    assert c.clones == [(4, 64 << 10)]
    assert load.log == STATS.decode()


def test_a_program_that_fails_is_loaded_again_for_its_whole_log() -> None:
    c = FakeC(reject=True)
    load = prepared(c).load("prog", LoadOptions(log_failures_only=True))
    assert (load.ok, load.errno, load.attempts, load.log_level) == (False, errno.EACCES, 2, 5)
    assert [level for level, _ in c.clones] == [4, 5]
    assert load.log.startswith(TRACE.decode())
    assert "invalid mem access" in load.stats_log
    assert TRACE.decode() not in load.stats_log


def test_a_failures_messages_name_the_object_and_what_preparing_it_said() -> None:
    c = FakeC(reject=True)
    obj = prepared(c)
    obj.messages = "libbpf: elf: skipping unrecognized data section(7) .comment\n"
    failed = obj.load("prog", LoadOptions())
    assert failed.libbpf_messages.splitlines() == [
        "kitl: /o.bpf.o: prog loaded from the object prepared once",
        "libbpf: elf: skipping unrecognized data section(7) .comment",
    ]
    assert prepared(FakeC()).load("prog", LoadOptions()).libbpf_messages == ""


def test_at_log_level_0_a_failure_still_has_its_log() -> None:
    # libbpf's bpf_prog_load loads a failure again at level 1 when given a buffer at
    # level 0; without the buffer the kernel's rejection had no words at all
    c = FakeC(reject=True)
    load = prepared(c).load("prog", LoadOptions(log_level=0))
    assert c.clones == [(0, 16 << 20)]
    assert (load.ok, load.log_level) == (False, 0)
    assert "invalid mem access" in load.log


def test_at_log_level_0_a_program_that_passes_has_no_log() -> None:
    c = FakeC()
    load = prepared(c).load("prog", LoadOptions(log_level=0))
    assert (load.ok, load.log, c.clones) == (True, "", [(0, 16 << 20)])


def test_a_log_that_overflows_is_grown_to_what_the_kernel_says_it_needs() -> None:
    c = FakeC(trace_bytes=5000)
    load = prepared(c).load("prog", LoadOptions(log_level=5, log_size=1024))
    assert (load.ok, load.log_truncated, load.attempts) == (True, False, 2)
    assert c.clones == [(5, 1024), (5, 5000 + len(STATS) + 1)]


def test_a_log_past_its_cap_is_truncated_not_a_verdict() -> None:
    c = FakeC(trace_bytes=5000)
    load = prepared(c).load("prog", LoadOptions(log_level=5, log_size=1024, log_size_max=2048))
    assert (load.ok, load.errno, load.log_truncated) == (False, errno.ENOSPC, True)
    assert [size for _, size in c.clones] == [1024, 2048]


def test_an_unknown_program_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="has no program 'nope'"):
        prepared(FakeC()).load("nope", LoadOptions())


def test_no_clone_without_libbpf_1_8() -> None:
    lib = FakeLib(FakeC())
    lib.has = lambda symbol: False  # type: ignore[method-assign]
    assert PreparedObject.open(lib, "/o.bpf.o", LoadOptions()) is None  # type: ignore[arg-type]


def test_the_cache_keeps_one_object_per_file_and_settings_and_unpins_it(tmp_path: Path) -> None:
    c, cache = FakeC(), PreparedCache()
    lib: Any = FakeLib(c)
    first = cache.get(lib, "/a.o", LoadOptions(log_level=5), str(tmp_path))
    assert first is not None
    again = cache.get(lib, "/a.o", LoadOptions(log_level=4, prog_flags=1), str(tmp_path))
    assert again is first  # the log and flags are each clone's own
    c.pin = tmp_path / "pinned_map"  # what preparing the next object pins
    other = cache.get(lib, "/a.o", LoadOptions(fixups=False), str(tmp_path))
    assert other is not None
    assert other is not first
    assert (c.closed, cache.pins) == (1, [str(tmp_path / "pinned_map")])
    cache.close()
    assert c.closed == 2
    assert not (tmp_path / "pinned_map").exists()


def test_a_failures_log_that_overflows_keeps_the_verdict_and_ends_with_the_error() -> None:
    """The reload for the log does not grow its buffer (a million-instruction program
    logs gigabytes at level 1): the first load's verdict, and its error and statistics
    after what fit."""
    c = FakeC(reject=True, trace_bytes=5000)
    load = prepared(c).load("prog", LoadOptions(log_failures_only=True, log_size=1024))
    assert c.clones == [(4, 1024), (5, 1024)]
    assert (load.ok, load.errno, load.log_truncated, load.attempts) == (
        False,
        errno.EACCES,
        True,
        2,
    )
    assert load.log.endswith(load.stats_log)
    assert "invalid mem access" in load.stats_log


def test_a_program_at_the_complexity_limit_is_not_traced_again() -> None:
    c = FakeC(reject=True)
    c.rc_failure = -errno.E2BIG
    load = prepared(c).load("prog", LoadOptions(log_failures_only=True))
    assert (load.ok, load.errno, load.attempts, load.log_level) == (False, errno.E2BIG, 1, 4)
    assert c.clones == [(4, 64 << 10)]
