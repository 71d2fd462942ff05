"""The release gate: crafted baselines for every kind of change, threshold edges, loading a
run from a directory, results.json or results.jsonl, and the CLI's exit codes and formats."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from harness.errors import UsageError
from harness.results import compare as cmp
from harness.results.compare import Comparison, Thresholds, compare, load_results, parse_percent
from harness.results.record import CellRecord

DATA = Path(__file__).parent.parent / "data" / "compare"
DEFAULT = Thresholds()


def cell(case: str = "c", outcome: str = "PASSED", **fields: Any) -> CellRecord:
    return CellRecord.from_json(row(case, outcome, **fields))


def row(
    case: str = "c",
    outcome: str = "PASSED",
    *,
    insns: int | None = 100,
    states: int | None = 10,
    load_ms: float | None = 100.0,
    scenario: str = "s",
    kernel: str = "debian-6.1",
    config: str = "default",
    program: str = "obj/fn",
    release: str = "6.1.0-56-amd64",
    reason: str = "",
    libbpf: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "scenario": scenario,
        "case": case,
        "kernel": kernel,
        "config": config,
        "outcome": outcome,
        "reason": reason,
        "kernel_release": release,
        "program": program,
        "verifier": {"verified_insns": insns, "insns": insns, "total_states": states},
        "timings": {} if load_ms is None else {"load_ms": load_ms},
    }
    if libbpf is not None:
        out["libbpf"] = libbpf
    return out


def kinds(c: Comparison) -> list[tuple[str, bool]]:
    return [(e.kind, e.gating) for e in c.entries]


# --- verdicts --------------------------------------------------------------------------------


def test_identical_runs_pass_with_nothing_to_report() -> None:
    cells = [cell("a"), cell("b", "SKIPPED"), cell("c", "FAILED")]
    result = compare(cells, cells, DEFAULT)
    assert result.entries == ()
    assert result.passed
    assert result.compared == 3
    assert cmp.headline(result) == "gate: PASS — no regressions (3 cells compared)"


def test_pass_to_failure_is_a_gating_verdict_flip() -> None:
    new = cell(outcome="VERIFIER_REJECTED", reason="R1 invalid mem\naccess")
    result = compare([cell()], [new], DEFAULT)
    (entry,) = result.entries
    assert (entry.kind, entry.gating, entry.verdict) == ("verdict-flip", True, "REGRESSION")
    assert entry.change == "PASSED → VERIFIER_REJECTED"
    assert entry.reason == "R1 invalid mem access"  # one line
    assert entry.key == "s::c[debian-6.1-default]"
    assert result.exit_status == 1


def test_failure_to_pass_is_a_reported_improvement() -> None:
    result = compare([cell(outcome="LOAD_FAILED")], [cell()], DEFAULT)
    assert kinds(result) == [("improvement", False)]
    assert result.passed


@pytest.mark.parametrize(
    "outcome", ["BOOT_FAILED", "KERNEL_CRASH", "VM_LOST", "TIMED_OUT", "ERROR"]
)
def test_pass_to_infrastructure_gates_but_is_labelled(outcome: str) -> None:
    (entry,) = compare([cell()], [cell(outcome=outcome)], DEFAULT).entries
    assert (entry.kind, entry.gating) == ("infrastructure", True)
    assert entry.verdict == "REGRESSION (infrastructure)"


@pytest.mark.parametrize(
    ("was", "now"), [("PASSED", "SKIPPED"), ("SKIPPED", "PASSED"), ("SKIPPED", "FAILED")]
)
def test_skipped_on_either_side_is_reported_not_gating(was: str, now: str) -> None:
    assert kinds(compare([cell(outcome=was)], [cell(outcome=now)], DEFAULT)) == [("skipped", False)]


@pytest.mark.parametrize(("was", "now"), [("FAILED", "LOAD_FAILED"), ("FAILED", "VM_LOST")])
def test_one_failure_becoming_another_is_not_gating(was: str, now: str) -> None:
    result = compare([cell(outcome=was)], [cell(outcome=now)], DEFAULT)
    assert kinds(result) == [("outcome-change", False)]


def test_unknown_or_missing_outcome_never_reads_as_a_pass() -> None:
    junk = row()
    del junk["outcome"]
    result = compare(
        [cell("a"), cell("b")],
        [cell("a", "EXPLODED"), CellRecord.from_json({**junk, "case": "b"})],
        DEFAULT,
    )
    assert kinds(result) == [("verdict-flip", True), ("verdict-flip", True)]
    assert result.entries[1].new == "UNKNOWN"


def test_kernel_release_bump_still_compares() -> None:
    result = compare([cell()], [cell(outcome="FAILED", release="6.1.0-57-amd64")], DEFAULT)
    assert kinds(result) == [("verdict-flip", True)]
    assert result.compared == 1


def test_figures_are_not_compared_across_a_flip() -> None:
    result = compare([cell()], [cell(outcome="FAILED", insns=900)], DEFAULT)
    assert kinds(result) == [("verdict-flip", True)]


# --- verifier figures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "was", "now", "expected"),
    [
        (10.0, 100, 110, ("insns-growth", False)),  # exactly at the limit passes
        (10.0, 100, 111, ("insns-growth", True)),
        (10.0, 100, 105, ("insns-growth", False)),
        (0.5, 1000, 1005, ("insns-growth", False)),
        (0.5, 1000, 1006, ("insns-growth", True)),
        (10.0, 100, 50, ("insns-shrink", False)),
    ],
)
def test_insns_growth_against_the_limit(
    limit: float, was: int, now: int, expected: tuple[str, bool]
) -> None:
    result = compare([cell(insns=was)], [cell(insns=now)], Thresholds(max_insns_growth=limit))
    assert kinds(result) == [expected]


def test_insns_prefers_verified_insns_and_falls_back_to_insns() -> None:
    base, new = row(insns=None), row(insns=None)
    base["verifier"]["insns"], new["verifier"]["insns"] = 4, 8
    new["verifier"]["verified_insns"] = 4  # preferred: no change
    records = CellRecord.from_json
    assert compare([records(base)], [records(new)], DEFAULT).entries == ()
    new["verifier"]["verified_insns"] = None
    (entry,) = compare([records(base)], [records(new)], DEFAULT).entries
    assert (entry.kind, entry.base, entry.new, entry.gating) == ("insns-growth", 4, 8, True)
    assert entry.change == "insns +4 (+100.0%)"


def test_states_growth_uses_its_own_limit() -> None:
    assert kinds(compare([cell(states=10)], [cell(states=13)], DEFAULT)) == [
        ("states-growth", True)
    ]
    assert kinds(compare([cell(states=10)], [cell(states=12)], DEFAULT)) == [
        ("states-growth", False)
    ]
    loose = Thresholds(max_states_growth=50)
    assert kinds(compare([cell(states=10)], [cell(states=13)], loose)) == [("states-growth", False)]


@pytest.mark.parametrize("was", [0, None])
def test_growth_from_nothing_is_reported_not_gating(was: int | None) -> None:
    (entry,) = compare([cell(states=was)], [cell(states=5)], DEFAULT).entries
    assert (entry.kind, entry.gating, entry.verdict) == (
        "states-growth",
        False,
        "new figure (not gated)",
    )


def test_a_figure_gone_from_new_is_not_reported() -> None:
    assert compare([cell()], [cell(insns=None, states=None)], DEFAULT).entries == ()


def test_cases_sharing_a_program_make_one_entry() -> None:
    base = [cell("a", insns=100), cell("b", insns=100), cell("c", insns=100, program="o/other")]
    new = [cell("a", insns=200), cell("b", insns=200), cell("c", insns=100, program="o/other")]
    result = compare(base, new, DEFAULT)
    (entry,) = result.entries
    assert entry.key == "s::obj/fn[debian-6.1-default]"
    assert entry.cells == ("s::a[debian-6.1-default]", "s::b[debian-6.1-default]")
    assert cmp.headline(result) == "gate: FAIL — 1 regression (1 insns growth)"


def test_load_time_is_off_by_default_and_gates_when_asked() -> None:
    assert compare([cell(load_ms=100.0)], [cell(load_ms=300.0)], DEFAULT).entries == ()
    limit = Thresholds(max_load_time_growth=50)
    assert kinds(compare([cell(load_ms=100.0)], [cell(load_ms=160.0)], limit)) == [
        ("load-time-growth", True)
    ]
    assert compare([cell(load_ms=100.0)], [cell(load_ms=140.0)], limit).entries == ()
    assert kinds(compare([cell(load_ms=100.0)], [cell(load_ms=40.0)], limit)) == [
        ("load-time-shrink", False)
    ]


# --- matrix changes --------------------------------------------------------------------------


def test_added_and_removed_cells() -> None:
    base, new = [cell("a"), cell("gone")], [cell("a"), cell("fresh")]
    assert kinds(compare(base, new, DEFAULT)) == [("removed", False), ("added", False)]
    strict = compare(base, new, Thresholds(fail_on_removed=True))
    assert kinds(strict) == [("removed", True), ("added", False)]
    assert strict.entries[0].verdict == "REGRESSION (removed)"


def test_libbpf_is_part_of_the_identity() -> None:
    base = [cell(libbpf="1.1"), cell(libbpf="1.4")]
    new = [cell(libbpf="1.1"), cell(libbpf="1.4", outcome="LOAD_FAILED"), cell(libbpf="1.5")]
    result = compare(base, new, DEFAULT)
    assert [(e.kind, e.key) for e in result.entries] == [
        ("verdict-flip", "s::c[debian-6.1-default-1.4]"),
        ("added", "s::c[debian-6.1-default-1.5]"),
    ]
    # A cell without the key and one with it are different cells.
    assert kinds(compare([cell()], [cell(libbpf="1.1")], DEFAULT)) == [
        ("removed", False),
        ("added", False),
    ]


def test_a_new_run_with_no_cells_fails() -> None:
    result = compare([cell()], [], DEFAULT)
    assert ("empty-run", True) in kinds(result)
    assert not result.passed


# --- thresholds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"), [("10%", 10.0), ("10", 10.0), ("0.5%", 0.5), (" 25 % ", 25.0), ("0", 0.0)]
)
def test_parse_percent(text: str, value: float) -> None:
    assert parse_percent(text) == value


@pytest.mark.parametrize("text", ["", "%", "-5%", "ten", "1e3", "nan", "10%%", "5,5"])
def test_parse_percent_refuses_junk(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_percent(text, "--max-insns-growth")
    assert str(info.value) == f"--max-insns-growth: {text!r} is not a percentage like 10% or 0.5%"


def test_thresholds_refuse_negative_values() -> None:
    with pytest.raises(UsageError, match="max_states_growth"):
        Thresholds(max_states_growth=-1)


# --- loading ---------------------------------------------------------------------------------


def write_jsonl(path: Path, cells: list[CellRecord], tail: str = "") -> Path:
    lines = "".join(json.dumps(c.to_json()) + "\n" for c in cells)
    path.write_text(lines + tail, encoding="utf-8")
    return path


def test_load_a_real_run_directory_and_its_results_json() -> None:
    cells = load_results(DATA / "run-61")
    assert len(cells) == 5
    assert cells == load_results(DATA / "run-61" / "results.json")
    assert {c.outcome for c in cells} == {"PASSED", "SKIPPED"}
    assert compare(cells, cells, DEFAULT).entries == ()


def test_load_a_killed_run_from_results_jsonl(tmp_path: Path) -> None:
    # Re-run cell "a" appended twice: the last line wins; the cut final line is dropped.
    write_jsonl(
        tmp_path / "results.jsonl",
        [cell("a", "FAILED"), cell("b"), cell("a")],
        tail='{"scenario": "s", "ca',
    )
    cells = load_results(tmp_path)
    assert [(c.case, c.outcome) for c in cells] == [("b", "PASSED"), ("a", "PASSED")]
    assert cells == load_results(tmp_path / "results.jsonl")


def test_run_directory_prefers_results_json(tmp_path: Path) -> None:
    shutil.copy(DATA / "run-61" / "results.json", tmp_path / "results.json")
    write_jsonl(tmp_path / "results.jsonl", [cell()])
    assert len(load_results(tmp_path)) == 5


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("results.json", '{"cells": [', "corrupt results file: Expecting value"),
        ("results.json", '{"schema": 2, "cells": []}', "unsupported results schema 2 (expected 1)"),
        ("results.json", '{"cells": [1]}', "not a kitl results file (expected a list of cells)"),
        ("results.json", "[[[[" * 100_000, "corrupt results file: nested too deeply"),
        ("results.jsonl", '{"case": "a"}\nnot json\n{}\n', "corrupt results line: Expecting value"),
        ("results.jsonl", "[1]\n", "corrupt results line: not a JSON object"),
        ("results.jsonl", "garbage", "corrupt results line: Expecting value"),
    ],
)
def test_corrupt_results_are_one_line_usage_errors(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError) as info:
        load_results(path)
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_corrupt_jsonl_names_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "results.jsonl", [cell()], tail="{oops\n")
    with pytest.raises(UsageError, match=r"results\.jsonl:2: corrupt results line"):
        load_results(path)


def test_missing_results_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        load_results(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: no such file or directory"
    with pytest.raises(UsageError) as info:
        load_results(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: no results.json or results.jsonl (not a kitl run directory?)"
    )


# --- output ----------------------------------------------------------------------------------


def two_regressions() -> Comparison:
    base = [cell("flip"), cell("grow", program="o/grow"), cell("gone"), cell("better", "FAILED")]
    new = [
        cell("flip", "FAILED", reason="retval 2 | expected 1"),
        cell("grow", program="o/grow", insns=200),
        cell("better"),
        cell("fresh"),
    ]
    return compare(base, new, DEFAULT)


def test_table_leads_with_the_verdict_then_regressions_then_improvements() -> None:
    lines = cmp.format_table(two_regressions()).splitlines()
    assert lines[0] == "gate: FAIL — 2 regressions (1 verdict flip, 1 insns growth)"
    titles = [line for line in lines if line.endswith("):") and not line.startswith(" ")]
    assert titles == ["Regressions (2):", "Improvements (1):"]
    header = lines[lines.index("Regressions (2):") + 1]
    assert header.split() == ["cell", "base", "new", "change", "verdict"]
    starts = [header.index(h) for h in ("base", "new", "change", "verdict")]
    rows = lines[lines.index("Regressions (2):") + 3 : lines.index("Improvements (1):") - 1]
    for row in rows:
        if row.startswith("    "):  # a flip's reason
            continue
        assert all(row[i - 2 : i] == "  " for i in starts), row
    assert "    retval 2 | expected 1" in lines
    # a program's figures are named by a cell id, like every other row
    assert any(line.startswith("s::grow[debian-6.1-default]  ") for line in lines)
    # cells in one run only: counted, not listed
    assert lines[-1] == "In one run only: 1 cell removed, 1 added."
    assert not [line for line in lines if "s::gone" in line or "s::fresh" in line]


def test_removed_cells_counted_as_gating_when_asked() -> None:
    base = [cell(f"c{n}") for n in range(40)]
    result = compare(base, base[:10], Thresholds(fail_on_removed=True))
    text = cmp.format_table(result)
    assert text.splitlines()[0] == "gate: FAIL — 30 regressions (30 removed)"
    assert text.splitlines()[-1] == "In one run only: 30 cells removed (gating)."
    assert len(text.splitlines()) == 3


def test_table_of_no_differences() -> None:
    text = cmp.format_table(compare([cell()], [cell()], DEFAULT))
    assert text == (
        "gate: PASS — no regressions (1 cell compared)\nno differences (1 cell compared)\n"
    )


def test_markdown_leads_with_the_headline_and_regressions() -> None:
    text = cmp.format_markdown(two_regressions())
    lines = text.splitlines()
    assert lines[0] == "**gate: FAIL — 2 regressions (1 verdict flip, 1 insns growth)**"
    assert text.index("### Regressions (2)") < text.index("### Improvements (1)")
    assert "| `s::flip[debian-6.1-default]` | PASSED | FAILED |" in text
    assert "retval 2 \\| expected 1" in text  # a pipe in a reason does not split the row
    assert "<details>" not in text  # nothing else changed
    assert lines[-1] == "In one run only: 1 cell removed, 1 added."


def test_markdown_headline_when_the_gate_passes() -> None:
    result = compare([cell("a", "FAILED")], [cell("a"), cell("b")], DEFAULT)
    first = cmp.format_markdown(result).splitlines()[0]
    assert first == "**gate: PASS — no regressions (1 cell compared; 1 improvement, 1 added)**"


def test_json_is_stable_and_round_trips() -> None:
    data = cmp.to_json(two_regressions())
    assert json.loads(json.dumps(data)) == data
    assert data["schema"] == 1
    assert data["gate"] == "fail"
    assert data["counts"] == {
        "base_cells": 4,
        "new_cells": 4,
        "compared": 3,
        "gating": 2,
        "kinds": {"verdict-flip": 1, "insns-growth": 1, "removed": 1, "improvement": 1, "added": 1},
    }
    first = data["entries"][0]
    assert list(first) == [
        "kind",
        "key",
        "identity",
        "base",
        "new",
        "change",
        "gating",
        "verdict",
        "reason",
        "cells",
    ]
    assert first["identity"] == {
        "scenario": "s",
        "case": "flip",
        "kernel": "debian-6.1",
        "config": "default",
        "libbpf": "",
    }
    assert data["entries"][1]["identity"]["program"] == "o/grow"
    assert data["thresholds"] == {
        "max_insns_growth": 10.0,
        "max_states_growth": 25.0,
        "max_load_time_growth": None,
        "fail_on_removed": False,
    }


# --- command line ----------------------------------------------------------------------------


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    base = write_jsonl(tmp_path / "base.jsonl", [cell("a"), cell("b")])
    new = write_jsonl(tmp_path / "new.jsonl", [cell("a"), cell("b", insns=200)])
    return base, new


def test_run_exits_0_when_the_gate_passes(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, new = runs
    assert kitl_compare(str(base), str(new), "--max-insns-growth", "100%") == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("gate: PASS")


def test_run_exits_1_when_the_gate_fails(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, new = runs
    assert kitl_compare(str(base), str(new)) == 1
    assert "gate: FAIL — 1 regression (1 insns growth)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-states-growth", "lots"], "kitl: --max-states-growth: 'lots' is not a percentage"),
        (["--max-load-time-growth", "-1"], "kitl: --max-load-time-growth: '-1' is not"),
    ],
)
def test_run_exits_2_on_bad_thresholds(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    base, new = runs
    assert kitl_compare(str(base), str(new), *extra) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message)
    assert captured.out == ""


def test_run_exits_2_on_a_missing_run(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kitl_compare(str(runs[0]), str(tmp_path / "missing")) == 2
    assert capsys.readouterr().err == f"kitl: {tmp_path / 'missing'}: no such file or directory\n"


@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_run_writes_the_output_file_as_printed(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    out = tmp_path / f"report.{fmt}"
    assert kitl_compare(*map(str, runs), "--format", fmt, "--output", str(out)) == 1
    printed = capsys.readouterr().out
    assert out.read_text(encoding="utf-8") == printed
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    if fmt == "json":
        assert json.loads(printed)["gate"] == "fail"
    if fmt == "markdown":
        assert printed.startswith("**gate: FAIL")


def test_run_exits_2_when_the_output_cannot_be_written(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no" / "such" / "dir" / "report.md"
    assert kitl_compare(*map(str, runs), "--output", str(out)) == 2
    assert capsys.readouterr().err.startswith(f"kitl: {out}: cannot write")


def test_help_shows_the_defaults() -> None:
    parser = argparse.ArgumentParser(prog="kitl compare")
    cmp.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "fails the gate (default 10%)" in text
    assert "fails the gate (default 25%)" in text
    assert "fails the gate (default off: noisy under TCG)" in text


def test_figures_print_as_integers_and_load_times_in_ms() -> None:
    (entry,) = compare([cell(insns=1_000_000)], [cell(insns=1_234_567)], DEFAULT).entries
    assert entry.change == "insns +234567 (+23.5%)"
    assert "1000000  1234567" in cmp.format_table(
        compare([cell(insns=1_000_000)], [cell(insns=1_234_567)], DEFAULT)
    )
    slow = compare(
        [cell(load_ms=100.0)], [cell(load_ms=170.125)], Thresholds(max_load_time_growth=5)
    )
    (entry,) = slow.entries
    assert entry.change == "load time +70.1ms (+70.1%)"
    assert "100.0ms  170.1ms" in cmp.format_table(slow)


def kitl_compare(*argv: str) -> int:
    """`kitl compare ARGV` as the command line runs it."""
    return main(["compare", *argv])
