"""Deciding a cell's outcome from what was observed and what the case expects (pure)."""

from __future__ import annotations

import errno
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.bpf import retcodes
from harness.bpf.causes import explain
from harness.bpf.verifier_log import log_excerpt, log_from_libbpf_messages
from harness.guest.protocol import LoadArgs
from harness.guest.replies import (
    AttachReply,
    EventsCountReply,
    LoadReply,
    MapDumpReply,
    RunReply,
    SyscallReply,
    TestRunReply,
    TrafficReply,
)
from harness.outcome import Outcome
from harness.scenario.expect import Expect, MapEntry
from harness.scenario.model import Case


@dataclass
class Observed:
    """Everything the guest reported for one cell: its replies (None: not asked)."""

    load: LoadReply | None = None
    # what the guest was asked to set on the object (sizes, globals, targets), for repro:
    # the load request's arguments, as `kitl repro` reads them back
    load_args: LoadArgs = field(default_factory=LoadArgs)
    error_class: str | None = None
    attach: AttachReply | None = None
    attach_error: str | None = None
    test_run: TestRunReply | None = None
    traffic: TrafficReply | None = None
    syscall: SyscallReply | RunReply | None = None  # a syscall drive's, or a command's
    maps: MapDumpReply = field(default_factory=MapDumpReply)
    events: EventsCountReply = field(default_factory=EventsCountReply)  # ringbuf records
    notes: list[str] = field(default_factory=list)  # e.g. requirements libbpf could not probe


# libbpf's words for a SEC() it has no definition for (0.7 up to 1.8)
_UNKNOWN_SECTION = re.compile(r"missing BPF prog type, check ELF section name '([^']*)'")


def regexes_in_order(patterns: tuple[str, ...], text: str) -> str | None:
    """None if every pattern matches after the previous one's match, else the first missing,
    with the log lines around where the search stopped."""
    pos = 0
    for pattern in patterns:
        m = re.compile(pattern, re.M).search(text, pos)
        if m is None:
            return f"{pattern}/ (searched from here:\n{log_excerpt(text, pos)}\n)"
        pos = m.end()
    return None


def _le(value: int | bytes, size: int) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _show(value: int | bytes) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


def _show_like(got: bytes, expected: int | bytes) -> str:
    """The observed value in the form the expectation was written in: hex bytes against
    hex, a number against a number (little-endian, as the map holds it)."""
    if isinstance(expected, bytes):
        return got.hex()
    return str(int.from_bytes(got, "little", signed=expected < 0))


def _map_mismatch(
    name: str, entries: tuple[MapEntry, ...], dump: Sequence[Sequence[str]]
) -> str | None:
    items = {bytes.fromhex(k): bytes.fromhex(v) for k, v in dump}
    if not items:
        return f"map {name} is empty"
    key_size = len(next(iter(items)))
    value_size = len(next(iter(items.values())))
    for entry in entries:
        key = _le(entry.key, key_size)
        want = _le(entry.value, value_size)
        got = items.get(key)
        if got != want:
            shown = _show_like(got, entry.value) if got is not None else "no entry"
            return f"map {name}[{_show(entry.key)}] = {shown}, expected {_show(entry.value)}"
    return None


def _errno_text(code: object) -> str:
    if isinstance(code, int) and code in errno.errorcode:
        return f"{errno.errorcode[code]} ({code})"
    return "0 (success)" if code == 0 else str(code)


def _rejection_text(load: LoadReply | None) -> str:
    """Where a rejection's expected messages are searched: the log, then libbpf's messages
    without the copy of the log they carry at log level 0 (searched twice, patterns in the
    wrong order would match across the two copies)."""
    if load is None:
        return "\n"
    messages = load.libbpf_messages
    embedded = log_from_libbpf_messages(messages)
    if embedded:
        messages = messages.replace(embedded, "", 1)
    return load.log + "\n" + messages


def judge(case: Case, expect: Expect, seen: Observed) -> tuple[Outcome, str]:
    """The outcome of one cell and, when it is not PASSED, the reason in one line."""
    load = seen.load
    if load is None or not load.ok:
        return _judge_failed_load(expect, seen, load)
    if expect.rejected:
        return Outcome.FAILED, "loaded, but the case expects the verifier to reject it"
    missing = regexes_in_order(expect.log, load.log)
    if missing is not None:
        return Outcome.FAILED, f"loaded, but the verifier log lacks /{missing}"
    if seen.attach_error is not None:
        return Outcome.ATTACH_FAILED, seen.attach_error
    return _judge_effects(case, expect, seen)


def _judge_failed_load(
    expect: Expect, seen: Observed, load: LoadReply | None
) -> tuple[Outcome, str]:
    """A load that failed (None: the guest never answered one): the case's result when it
    expects that rejection, else why it failed, with what a newer libbpf might change."""
    # the cause reads the load as the guest reported it (harness.bpf knows no replies)
    cause = explain(load.to_wire() if load is not None else {})
    seen.error_class = cause.error_class
    if not expect.rejected:
        kind = (
            Outcome.VERIFIER_REJECTED
            if seen.error_class == "VERIFIER_REJECTED"
            else Outcome.LOAD_FAILED
        )
        reason = f"{seen.error_class}: {cause.message}"
        if load is None or seen.error_class != "UNSUPPORTED_PROG_TYPE":
            return kind, reason
        unknown = _UNKNOWN_SECTION.search(load.libbpf_messages)
        if unknown:
            # libbpf could not map SEC() to a type: a newer loader may know it
            reason += (
                f" (libbpf {load.libbpf_version} does not know "
                f'SEC("{unknown.group(1)}"); a newer libbpf may: --libbpf default)'
            )
        elif load.libbpf_lacks:
            reason += f" (libbpf {load.libbpf_version} lacks newer APIs, e.g. "
            reason += f"{', '.join(load.libbpf_lacks[-2:])})"
        return kind, reason
    if expect.error_class and expect.error_class != seen.error_class:
        return Outcome.FAILED, f"rejected as {seen.error_class}, expected {expect.error_class}"
    missing = regexes_in_order(expect.log, _rejection_text(load))
    if missing is not None:
        return Outcome.FAILED, f"rejected, but the log lacks /{missing}"
    return Outcome.PASSED, ""


def _judge_effects(case: Case, expect: Expect, seen: Observed) -> tuple[Outcome, str]:
    if expect.attach_mode is not None:
        mode = seen.attach.attach_mode if seen.attach is not None else None
        if mode != expect.attach_mode:
            return Outcome.FAILED, f"XDP attached in mode {mode}, expected {expect.attach_mode}"
    if expect.retval is not None:
        run = seen.test_run
        if run is None:
            return Outcome.FAILED, (
                f"expects return value {case.retval_name(expect.retval)}, but the program "
                "was not run (no test_run for this case)"
            )
        if run.errno:
            return Outcome.FAILED, f"test_run failed: errno {run.errno}"
        got = retcodes.to_s32(run.retval)
        if expect.retval != retcodes.RETVAL_ANY and got != retcodes.to_s32(expect.retval):
            return Outcome.FAILED, (
                f"returned {case.retval_name(got)}, expected {case.retval_name(expect.retval)}"
            )
    traffic = seen.traffic
    sent = traffic.sent if traffic is not None else None
    for key, count, want in (
        ("delivered", traffic.delivered if traffic is not None else None, expect.delivered),
        ("dropped", traffic.dropped if traffic is not None else None, expect.dropped),
    ):
        if want is not None and count != want:
            return Outcome.FAILED, f"{key} {count} of {sent}, expected {want}"
    syscall = seen.syscall
    status = syscall.status if syscall is not None else None
    if expect.exit_status is not None and status != expect.exit_status:
        return Outcome.FAILED, f"exit status {status}, expected {expect.exit_status}"
    # a command (RunReply) has an exit status but no errno
    call_errno = syscall.errno if isinstance(syscall, SyscallReply) else None
    if expect.errno is not None and call_errno != expect.errno:
        return Outcome.FAILED, (
            f"errno {_errno_text(call_errno)}, expected {_errno_text(expect.errno)}"
        )
    for map_name, expected_events in expect.events:
        counted = seen.events.counts.get(map_name)
        if counted != expected_events:
            return Outcome.FAILED, f"{counted} events in {map_name}, expected {expected_events}"
    for map_expect in expect.map:
        problem = _map_mismatch(
            map_expect.name, map_expect.entries, seen.maps.maps.get(map_expect.name, ())
        )
        if problem:
            return Outcome.FAILED, problem
    return Outcome.PASSED, ""
