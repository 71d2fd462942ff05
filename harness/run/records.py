"""What a cell records of its case (pure): the verifier's figures, the expectation and
the observations in the results' JSON form, and messages that name the user's files."""

from __future__ import annotations

import dataclasses

from harness.bpf.verifier_log import parse_log
from harness.guest.replies import LoadReply
from harness.results.record import Observed as ObservedRecord
from harness.results.record import Verifier
from harness.run.judge import Observed
from harness.scenario.expect import Expect, ExpectJSON, MapExpect
from harness.scenario.model import AnyCase, Case

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


def case_program(case: AnyCase) -> tuple[str, str, str]:
    """(program, prog_type, section) a cell records of its case: `object/function`, or
    the command of a user's loader (which loads programs of types kitl learns only then)."""
    if isinstance(case, Case):
        return f"{case.object}/{case.program}", case.prog_type.name, case.section
    return case.loader.shown, "", ""


def expect_json(expect: Expect) -> ExpectJSON:
    """The keys the expectation says (a None or empty one is left out)."""
    out: ExpectJSON = {"load": expect.load}
    if expect.log:
        out["log"] = list(expect.log)
    if expect.error_class is not None:
        out["error_class"] = expect.error_class
    if expect.retval is not None:
        out["retval"] = expect.retval
    if expect.delivered is not None:
        out["delivered"] = expect.delivered
    if expect.dropped is not None:
        out["dropped"] = expect.dropped
    if expect.errno is not None:
        out["errno"] = expect.errno
    if expect.exit_status is not None:
        out["exit_status"] = expect.exit_status
    if expect.attach_mode is not None:
        out["attach_mode"] = expect.attach_mode
    if expect.map:
        out["map"] = map_rows(expect.map)
    if expect.programs:
        out["programs"] = [
            {k: v for k, v in dataclasses.asdict(p).items() if v is not None}
            for p in expect.programs
        ]
    for key in ("stdout", "stderr"):
        if getattr(expect, key):
            out[key] = list(getattr(expect, key))
    return out


def map_rows(maps: tuple[MapExpect, ...]) -> dict[str, list[list[int | str]]]:
    """Map contents as JSON (for the guest, and the expectation a cell records): integers as
    numbers (written at the map's sizes), bytes as hex."""
    return {m.name: [[_plain(e.key), _plain(e.value)] for e in m.entries] for m in maps}


def _plain(value: int | bytes) -> int | str:
    return value.hex() if isinstance(value, bytes) else value


def observed_json(seen: Observed) -> ObservedRecord:
    """The replies as the guest sent them (the log is a file of its own)."""
    wire = seen.load.to_wire() if seen.load is not None else {}
    load = {k: v for k, v in wire.items() if k not in ("log", "stats_log", "handle")}
    return ObservedRecord.from_json(
        {
            "load": load,
            "load_args": seen.load_args,
            "error_class": seen.error_class,
            "attach": seen.attach.to_wire() if seen.attach is not None else None,
            "attach_error": seen.attach_error,
            "test_run": seen.test_run.to_wire() if seen.test_run is not None else None,
            "traffic": seen.traffic.to_wire() if seen.traffic is not None else None,
            "syscall": seen.syscall.to_wire() if seen.syscall is not None else None,
            "maps": seen.maps.to_wire(),
            "events": seen.events.to_wire(),
            "notes": seen.notes,
        }
    )


def user_paths(load: LoadReply, copies: dict[str, str]) -> LoadReply:
    """libbpf names the object by the path it opened, the guest's copy: say the user's."""
    messages, log = load.libbpf_messages, load.log
    for remote, local in copies.items():
        messages, log = messages.replace(remote, local), log.replace(remote, local)
    return dataclasses.replace(load, libbpf_messages=messages, log=log)
