"""What a cell records of its case (pure): the verifier's figures, the expectation and
the observations in the results' JSON form, and messages that name the user's files."""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.bpf.verifier_log import parse_log
from harness.guest.replies import LoadReply, Reply
from harness.results.record import Verifier
from harness.run.judge import Observed
from harness.scenario.expect import Expect, MapExpect

_VERIFIER_KEYS = (
    "verified_insns",
    "xlated_len",
    "jited_len",
    "insn_cnt",
    "errno",
    "log_truncated",
    "libbpf_version",
    "log_level",
    "failed_stage",
)


def verifier_figures(load: LoadReply) -> Verifier:
    """What a cell records of the verifier: the load's figures and its log's statistics
    (read as a record reads them, so a guest's odd value is kept as it came)."""
    figures = {k: getattr(load, k) for k in _VERIFIER_KEYS}
    # a failure loaded again for its log: the figures of the first load, at full speed
    stats = parse_log(load.stats_log or load.log).stats
    figures.update(
        insns=stats.insns,
        total_states=stats.total_states,
        peak_states=stats.peak_states,
        max_states_per_insn=stats.max_states_per_insn,
        duration_us=stats.duration_us,
        stack_depth=stats.stack_depth_total,
        max_stack_depth=stats.stack_depth_max,
        mark_read=stats.mark_read,
    )
    return Verifier.from_json(figures)


def expect_json(expect: Expect) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (
        "load",
        "log",
        "error_class",
        "retval",
        "delivered",
        "dropped",
        "errno",
        "exit_status",
        "attach_mode",
    ):
        value = getattr(expect, key)
        if value not in (None, ()):
            out[key] = list(value) if isinstance(value, tuple) else value
    if expect.map:
        out["map"] = map_rows(expect.map)
    return out


def map_rows(maps: tuple[MapExpect, ...]) -> dict[str, list[list[int | str]]]:
    """Map contents as JSON (for the guest, and the expectation a cell records): integers as
    numbers (written at the map's sizes), bytes as hex."""
    return {m.name: [[_plain(e.key), _plain(e.value)] for e in m.entries] for m in maps}


def _plain(value: int | bytes) -> int | str:
    return value.hex() if isinstance(value, bytes) else value


def observed_json(seen: Observed) -> dict[str, Any]:
    """The replies as the guest sent them (the log is a file of its own)."""
    wire = seen.load.to_wire() if seen.load is not None else {}
    load = {k: v for k, v in wire.items() if k not in ("log", "stats_log", "handle")}
    return {
        "load": load,
        "load_args": seen.load_args,
        "error_class": seen.error_class,
        "attach": _wire(seen.attach),
        "attach_error": seen.attach_error,
        "test_run": _wire(seen.test_run),
        "traffic": _wire(seen.traffic),
        "syscall": _wire(seen.syscall),
        "maps": seen.maps.to_wire(),
        "events": seen.events.to_wire(),
        "notes": seen.notes,
    }


def _wire(reply: Reply | None) -> dict[str, Any] | None:
    return reply.to_wire() if reply is not None else None


def user_paths(load: LoadReply, copies: dict[str, str]) -> LoadReply:
    """libbpf names the object by the path it opened, the guest's copy: say the user's."""
    messages, log = load.libbpf_messages, load.log
    for remote, local in copies.items():
        messages, log = messages.replace(remote, local), log.replace(remote, local)
    return dataclasses.replace(load, libbpf_messages=messages, log=log)
