"""Known failures with expiry: matching by case glob, kernel range or name glob, config and
outcome; expiry on and after the day; fixed and unused entries; the exit status; and every
error in the file reported at its exact file:line:column."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.outcome import Outcome
from harness.results.known import (
    KnownFailures,
    KnownReport,
    apply_known,
    exit_status,
    load_known,
    parse_known,
)
from harness.results.record import CellRecord
from harness.results.rundir import CellResult

FILE = Path("kitl-expect.yaml")
DAY = datetime.date(2027, 3, 1)
GOOD = """\
known_failures:
  - case: "xdp-basics::drop-udp-*"
    kernel: "<6.1"
    config: interp
    outcome: VERIFIER_REJECTED
    reason: "bpf_loop needs 5.17"
    expires: 2027-03-01
  - case: "tc::*"
    kernel: "debian-5.*"
    reason: flaky veth on 5.x
    expires: "2027-06-30"
"""


def cell(
    name: str = "xdp-basics::drop-udp-test-run",
    outcome: str = "VERIFIER_REJECTED",
    *,
    kernel: str = "debian-5.10",
    release: str = "5.10.0-33-amd64",
    config: str = "interp",
) -> CellRecord:
    scenario, case = name.split("::")
    return CellRecord.from_json(
        {
            "scenario": scenario,
            "case": case,
            "kernel": kernel,
            "config": config,
            "outcome": outcome,
            "kernel_release": release,
        }
    )


def known(text: str) -> KnownFailures:
    return parse_known(FILE, text)


def entry_text(**fields: str) -> str:
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    return "known_failures:\n  - " + body[4:]


def one(**fields: str) -> KnownFailures:
    base = {"case": '"xdp-basics::*"', "reason": "why", "expires": "2027-03-01"}
    return known(entry_text(**{**base, **fields}))


# --- parsing ---------------------------------------------------------------------------------


def test_a_good_file_parses_into_entries() -> None:
    first, second = known(GOOD).entries
    assert first.case == "xdp-basics::drop-udp-*"
    assert first.kernel == "<6.1"
    assert first.kernel_range is not None
    assert first.config == "interp"
    assert first.outcome is Outcome.VERIFIER_REJECTED
    assert first.reason == "bpf_loop needs 5.17"
    assert first.expires == DAY
    assert first.where == "kitl-expect.yaml:2"
    assert second.kernel_range is None  # a name glob
    assert second.outcome is None
    assert second.expires == datetime.date(2027, 6, 30)  # a quoted date reads too


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "known_failures:\n"])
def test_an_empty_file_has_no_entries(text: str) -> None:
    assert known(text).entries == ()


def test_load_known_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "kitl-expect.yaml"
    path.write_text(GOOD, encoding="utf-8")
    assert len(load_known(path).entries) == 2
    assert load_known(path).entries[0].where == f"{path}:2"
    with pytest.raises(ConfigError) as info:
        load_known(tmp_path / "missing.yaml")
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: no such file"


BAD = [
    (
        entry_text(case='"a::b"', reasn="x", expires="2027-03-01"),
        "3:5: unknown key 'reasn' (did you mean 'reason'?)",
    ),
    (entry_text(case='"a::b"', expires="2027-03-01"), "2:5: known failure is missing 'reason'"),
    (entry_text(case='"a::b"', reason="x"), "2:5: known failure is missing 'expires'"),
    (entry_text(reason="x", expires="2027-03-01"), "2:5: known failure is missing 'case'"),
    (
        entry_text(case='"a::b"', reason="x", expires="soon"),
        "4:14: expires must be a date like 2027-03-01, got string 'soon'",
    ),
    (
        entry_text(case='"a::b"', reason="x", expires="2027-13-01"),
        "4:14: invalid date '2027-13-01': month must be in 1..12",
    ),
    (
        entry_text(case='"a::b"', reason="x", expires="2027-03-01T10:00:00"),
        "4:14: expires must be a date like 2027-03-01, got a timestamp",
    ),
    (
        entry_text(case='"a::b"', kernel='"<6.x"', reason="x", expires="2027-03-01"),
        "3:13: kernel: bad version range '<6.x': '<6.x' is not a version clause like <5.17 "
        "or >=6.6",
    ),
    (
        entry_text(case='"a::b"', kernel="6.10", reason="x", expires="2027-03-01"),
        "3:13: kernel must be a non-empty version range or kernel name glob, got number 6.1 "
        "(quote it)",
    ),
    (
        entry_text(case='"a::b"', outcome="VERIFER_REJECTED", reason="x", expires="2027-03-01"),
        "3:14: unknown outcome 'VERIFER_REJECTED' (did you mean 'VERIFIER_REJECTED'?)",
    ),
    (
        entry_text(case='"a::b"', outcome="PASSED", reason="x", expires="2027-03-01"),
        "3:14: outcome PASSED is not a failure (known failures name a failing outcome: FAILED, "
        "VERIFIER_REJECTED, LOAD_FAILED, ATTACH_FAILED, BOOT_FAILED, KERNEL_CRASH, VM_LOST, "
        "TIMED_OUT, ERROR)",
    ),
    (
        entry_text(case='"a::b"', reason='""', expires="2027-03-01"),
        "3:13: reason must be a non-empty string, got string ''",
    ),
    (
        entry_text(case='"drop-*"', reason="x", expires="2027-03-01"),
        "2:11: case 'drop-*' can never match: cells are named scenario::case "
        "(did you mean '*::drop-*'?)",
    ),
    (
        entry_text(case='"a::b"', config="[jit]", reason="x", expires="2027-03-01"),
        "3:13: config must be a non-empty glob, got a list",
    ),
    (
        "known_failure:\n  - case: x\n",
        "1:1: unknown key 'known_failure' (did you mean 'known_failures'?)",
    ),
    ("known_failures: {case: x}\n", "1:17: known_failures must be a list, got a mapping"),
    (
        "known_failures:\n  - just a string\n",
        "2:5: a known failure must be a mapping, got string 'just a string'",
    ),
    ("- case: x\n", "1:1: expected a mapping with known_failures, got a list"),
    (
        "# header\n\n  just text\n",
        "3:3: expected a mapping with known_failures, got string 'just text'",
    ),
    (
        "known_failures:\n  - case: [x\n",
        "3:1: invalid YAML: expected ',' or ']', but got '<stream end>'",
    ),
    (
        entry_text(case='"a::b"', reason="x", expires="2027-03-01") + "    reason: y\n",
        "5:5: duplicate key 'reason' (first defined on line 3)",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(": ")[1][:40] for _, m in BAD])
def test_every_error_names_file_line_column(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        known(text)
    assert str(info.value).splitlines()[0] == f"kitl-expect.yaml:{message}"


# --- matching --------------------------------------------------------------------------------


def report(text: str, cells: list[CellRecord], today: datetime.date = DAY) -> KnownReport:
    return apply_known(cells, known(text), today)


def test_a_matching_failure_is_known_and_keeps_its_outcome() -> None:
    cells = [cell()]
    result = report(GOOD, cells)
    (hit,) = result.known
    assert (hit.cell, hit.outcome) == (
        "xdp-basics::drop-udp-test-run[debian-5.10-interp]",
        "VERIFIER_REJECTED",
    )
    assert hit.entry.reason == "bpf_loop needs 5.17"
    assert cells[0].outcome == "VERIFIER_REJECTED"
    assert result.unknown == ()
    assert exit_status(cells, result) == 0
    assert result.lines()[0] == (
        "known: xdp-basics::drop-udp-test-run[debian-5.10-interp] VERIFIER_REJECTED: "
        "bpf_loop needs 5.17 (kitl-expect.yaml:2)"
    )


@pytest.mark.parametrize(
    ("failing", "is_known"),
    [
        (cell(), True),
        (cell("xdp-basics::pass-test-run"), False),  # the case glob does not match
        (cell(config="jit"), False),  # the config glob does not match
        (cell(release="6.1.0-56-amd64", kernel="debian-6.1"), False),  # not <6.1
        (cell(release="6.0.12-1-amd64", kernel="debian-6.0"), True),
        (cell(release="", kernel="debian-5.10"), False),  # no release: cannot be in range
        (cell(outcome="LOAD_FAILED"), False),  # the entry names another outcome
        (cell("tc::count", "FAILED", kernel="debian-5.10"), True),  # a kernel name glob
        (cell("tc::count", "KERNEL_CRASH", kernel="debian-5.10"), True),  # any failure
        (cell("tc::count", "FAILED", kernel="debian-6.1"), False),
    ],
)
def test_matching(failing: CellRecord, is_known: bool) -> None:
    result = report(GOOD, [failing])
    assert bool(result.known) is is_known
    assert exit_status([failing], result) == (0 if is_known else 1)


def test_globs_are_case_sensitive_fnmatch() -> None:
    text = entry_text(case='"xdp-*::drop-?dp-*"', config='"int*"', reason="x", expires="2027-03-01")
    assert report(text, [cell()]).known
    assert not report(text, [cell("XDP-basics::drop-udp-a")]).known


def test_range_clauses_all_hold() -> None:
    text = entry_text(case='"*::*"', kernel='">=5.10,<6.1"', reason="x", expires="2027-03-01")
    assert report(text, [cell(release="5.10.0-33-amd64")]).known
    assert not report(text, [cell(release="5.4.0-1-amd64")]).known
    bare = entry_text(case='"*::*"', kernel='"6.1"', reason="x", expires="2027-03-01")
    assert report(bare, [cell(release="6.1.0-56-amd64")]).known
    assert not report(bare, [cell(release="6.12.0-1-amd64")]).known


def test_the_first_matching_entry_wins() -> None:
    text = GOOD + '  - case: "*::*"\n    reason: everything\n    expires: 2027-03-01\n'
    result = report(text, [cell(), cell("other::x", "FAILED")])
    assert [k.entry.reason for k in result.known] == ["bpf_loop needs 5.17", "everything"]


# --- expiry, fixed, unused -------------------------------------------------------------------


def test_an_entry_holds_on_its_expiry_day_and_fails_the_day_after() -> None:
    cells = [cell()]
    assert exit_status(cells, report(GOOD, cells, DAY)) == 0
    later = report(GOOD, cells, DAY + datetime.timedelta(days=1))
    assert [e.line for e in later.expired] == [2]
    assert later.unknown == ("xdp-basics::drop-udp-test-run[debian-5.10-interp]",)
    assert later.lines()[0] == "expired on 2027-03-01: bpf_loop needs 5.17 (kitl-expect.yaml:2)"
    assert exit_status(cells, later) == 1


def test_an_expired_entry_fails_the_run_even_when_it_matches_nothing() -> None:
    cells = [cell("other::x", "PASSED")]
    result = report(GOOD, cells, datetime.date(2027, 7, 1))
    assert len(result.expired) == 2
    assert result.failed
    assert exit_status(cells, result) == 1


def test_an_entry_whose_cells_pass_now_is_reported_fixed() -> None:
    cells = [cell(outcome="PASSED"), cell("xdp-basics::drop-udp-b", "PASSED")]
    result = report(GOOD, cells)
    (fixed,) = result.fixed
    assert fixed.entry.line == 2
    assert len(fixed.cells) == 2
    assert result.lines() == [
        "fixed: consider removing entry at kitl-expect.yaml:2 (xdp-basics::drop-udp-* passes "
        "on 2 cells)",
        "unused: entry at kitl-expect.yaml:8 (tc::*) covers no failing cell",
    ]
    assert exit_status(cells, result) == 0  # not failing


def test_an_entry_still_covering_a_failure_is_not_fixed() -> None:
    result = report(GOOD, [cell(outcome="PASSED"), cell("xdp-basics::drop-udp-b")])
    assert result.fixed == ()
    assert len(result.known) == 1


def test_an_entry_matching_nothing_is_reported_unused() -> None:
    result = report(GOOD, [cell()])
    (unused,) = result.unused
    assert unused.case == "tc::*"
    assert (
        result.lines()[-1] == "unused: entry at kitl-expect.yaml:8 (tc::*) covers no failing cell"
    )
    assert not result.failed


def test_a_failure_with_another_outcome_leaves_the_entry_unused_and_fails() -> None:
    cells = [cell(outcome="LOAD_FAILED")]
    result = report(GOOD, cells)
    assert [e.line for e in result.unused] == [2, 8]
    assert result.fixed == ()
    assert exit_status(cells, result) == 1


# --- exit status -----------------------------------------------------------------------------


def test_exit_status() -> None:
    passing = [cell(outcome="PASSED"), cell("x::skipped", "SKIPPED")]
    assert exit_status(passing, report("", passing)) == 0
    failing = [*passing, cell("x::y", "FAILED")]
    assert exit_status(failing, report("", failing)) == 1
    assert exit_status([], report(GOOD, [])) == 1  # a run that ran nothing is not green
    odd = [cell(outcome="EXPLODED")]  # an unknown outcome is a failure
    assert exit_status(odd, report(GOOD, odd)) == 1


def test_cell_results_are_accepted() -> None:
    result = CellResult(
        scenario="tc",
        case="count",
        kernel="debian-5.10",
        config="default",
        outcome=Outcome.ATTACH_FAILED,
        kernel_release="5.10.0-33-amd64",
    )
    applied = apply_known([result], known(GOOD), DAY)
    assert [k.cell for k in applied.known] == ["tc::count[debian-5.10-default]"]
    assert exit_status([result], applied) == 0
