"""What a cell records of its case (pure): the verifier's figures, the expectation and
the observations in the results' JSON form, and messages that name the user's files."""

from __future__ import annotations

from typing import Any

from harness.bpf.verifier_log import parse_log
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


def verifier_figures(load: dict[str, Any]) -> Verifier:
    """What a cell records of the verifier: the load's figures and its log's statistics
    (read as a record reads them, so a guest's odd value is kept as it came)."""
    figures = {k: load.get(k) for k in _VERIFIER_KEYS}
    # a failure loaded again for its log: the figures of the first load, at full speed
    stats = parse_log(str(load.get("stats_log") or load.get("log", ""))).stats
    figures.update(
        insns=stats.insns,
        total_states=stats.total_states,
        peak_states=stats.peak_states,
        max_states_per_insn=stats.max_states_per_insn,
        duration_us=stats.duration_us,
        stack_depth=stats.stack_depth_total,
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
    load = {k: v for k, v in seen.load.items() if k not in ("log", "stats_log", "handle")}
    return {
        "load": load,
        "load_args": seen.load_args,
        "error_class": seen.error_class,
        "attach": seen.attach,
        "attach_error": seen.attach_error,
        "test_run": seen.test_run,
        "traffic": seen.traffic,
        "syscall": seen.syscall,
        "maps": seen.maps,
        "events": seen.events,
        "notes": seen.notes,
    }


def user_paths(load: dict[str, Any], copies: dict[str, str]) -> None:
    """libbpf names the object by the path it opened, the guest's copy: say the user's."""
    for key in ("libbpf_messages", "log"):
        text = load.get(key)
        if isinstance(text, str):
            for remote, local in copies.items():
                text = text.replace(remote, local)
            load[key] = text
