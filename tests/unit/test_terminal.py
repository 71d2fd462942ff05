"""What kitl run and kitl verify print while cells run: a line per failure, the progress
redrawn in place on a terminal or every tenth of the run (or 30 s) in a log, and a line
per cell with --verbose (kitl run -v, kitl -v run)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from harness.cli import main, requests, runner
from harness.outcome import Outcome
from harness.pytest_plugin.terminal import LinePolicy, StatusLine, brief_line, cell_line
from harness.results.rundir import CellResult
from tests.fakes import run_args


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(policy: LinePolicy, statuses: list[str], total: int) -> list[str]:
    out: list[str] = []
    for n, status in enumerate(statuses):
        out += policy.cell(status, line=f"line {n}", brief=f"brief {n}", total=total)
    return out


def test_a_log_gets_failures_and_a_status_every_tenth() -> None:
    policy = LinePolicy(verbose=False, tty=False, clock=Clock())
    statuses = ["passed"] * 1000
    statuses[500] = "failed"
    statuses[501] = "xfailed"  # a known failure: counted, no line of its own
    lines = feed(policy, statuses, 1000)
    assert [line for line in lines if line.startswith("[")] == ["[ 501/1000] brief 500"]
    progress = [line for line in lines if line.startswith("kitl: ")]
    assert len(progress) == 10
    assert progress[0] == "kitl: 100/1000 cells · 100 passed · 0 failed · 0 skipped"
    assert progress[-1] == "kitl: 1000/1000 cells · 998 passed · 1 failed · 0 skipped · 1 known"


def test_a_log_gets_a_status_every_30_seconds_between_tenths() -> None:
    clock = Clock()
    policy = LinePolicy(verbose=False, tty=False, clock=clock)
    assert policy.cell("passed", line="", brief="", total=1000) == []
    clock.now = 31.0
    assert policy.cell("skipped", line="", brief="", total=1000) == [
        "kitl: 2/1000 cells · 1 passed · 0 failed · 1 skipped"
    ]
    clock.now = 40.0
    assert policy.cell("passed", line="", brief="", total=1000) == []


def test_a_terminal_gets_only_the_failures_as_lines() -> None:
    policy = LinePolicy(verbose=False, tty=True, clock=Clock())
    lines = feed(policy, ["passed", "failed", "skipped", "passed"], 4)
    assert lines == ["[   2/4] brief 1"]
    policy.tally.kernel = "debian-6.1"
    assert policy.tally.status(4) == "4/4 cells · 2 passed · 1 failed · 1 skipped · debian-6.1"


@pytest.mark.parametrize("tty", [True, False])
def test_verbose_keeps_a_line_per_cell(tty: bool) -> None:
    policy = LinePolicy(verbose=True, tty=tty, clock=Clock())
    assert feed(policy, ["passed", "failed"], 2) == ["[   1/2] line 0", "[   2/2] line 1"]


def test_status_line_is_redrawn_in_place_and_lines_print_above_it() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=60, color_system=None)
    status = StatusLine(console)
    status.update("kitl: 1/3 cells")
    status.print("[   2/3] FAILED s::c[k-d]: nope")
    status.update("kitl: 2/3 cells")
    status.stop()
    text = out.getvalue()
    assert "FAILED s::c[k-d]: nope\n" in text
    assert "kitl: 2/3 cells" in text
    assert "\x1b[" in text  # cursor control: the status line is replaced, not appended


def test_brief_line_is_one_line_without_the_repeated_outcome() -> None:
    cell = CellResult(
        "s", "c", "k", "d", Outcome.VERIFIER_REJECTED, reason="VERIFIER_REJECTED: R1 bad\nlog"
    )
    assert brief_line(cell) == "VERIFIER_REJECTED s::c[k-d]: R1 bad"
    assert cell_line(cell).splitlines()[1] == "    VERIFIER_REJECTED: R1 bad"


@pytest.mark.parametrize("argv", [["run"], ["run", "-v"], ["-v", "run"], ["run", "--verbose"]])
def test_kitl_run_verbose_reaches_the_pytest_command(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = main.make_parser().parse_args(argv)
    request = requests.run(args)
    verbose = len(argv) > 1
    assert request.verbose is verbose
    command = runner.pytest_argv(request, [], tmp_path / "run", 1)
    assert ("--kitl-verbose" in command) is verbose
    assert ("--tb=no" in command) is not verbose
    assert run_args().verbose is False  # a request built without the switch
