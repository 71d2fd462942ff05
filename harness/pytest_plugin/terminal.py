"""What `kitl run` and `kitl verify` print while cells run (the plugin's `--kitl-lines`).

A run of thousands of cells must not print a line per passing cell.  By default: one line
per failure, and the progress in a compact form: on a terminal, one status line redrawn in
place (rich) with cells done/total, passed/failed/skipped and the kernel at work; in a log
(stdout not a terminal), that status as a line of its own every tenth of the run or every
30 s.  `kitl run --verbose` (`--kitl-verbose`) prints a line per cell, as kitl always did.

Only the controller prints: under pytest-xdist every worker's reports reach it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from rich.console import Console
from rich.live import Live
from rich.text import Text

from harness.results.rundir import CellResult

PROGRESS_STEPS = 10  # a log gets the status at every tenth of the run...
PROGRESS_SECONDS = 30.0  # ...or when this long has passed since the last one
BRIEF_CHARS = 200


def cell_line(cell: CellResult) -> str:
    """A cell as --verbose shows it: outcome, id, program type, figures; the reason below."""
    figures = []
    if cell.verifier.verified_insns:
        figures.append(f"insns {cell.verifier.verified_insns}")
    if cell.timings.load_ms is not None:
        figures.append(f"load {cell.timings.load_ms:.1f}ms")
    if cell.timings.ns_per_op:
        figures.append(f"{cell.timings.ns_per_op}ns/op")
    line = f"{cell.outcome!s:<17} {cell.cell_id}  {cell.prog_type}  {' '.join(figures)}"
    if cell.reason:
        line += f"\n    {cell.reason}"
    return line


def brief_line(cell: CellResult) -> str:
    """A failed cell in one line: outcome, id and the reason's first line."""
    reason = cell.reason.strip().splitlines()[0] if cell.reason.strip() else ""
    reason = reason.removeprefix(f"{cell.outcome}: ")
    if len(reason) > BRIEF_CHARS:
        reason = reason[: BRIEF_CHARS - 1] + "…"
    return f"{cell.outcome} {cell.cell_id}" + (f": {reason}" if reason else "")


@dataclass
class Tally:
    done: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    known: int = 0  # failures a known-failures file expects (xfailed)
    kernel: str = ""  # of the last cell that started or finished

    def status(self, total: int) -> str:
        parts = [f"{self.done}/{total or '?'} cells", f"{self.passed} passed"]
        parts += [f"{self.failed} failed", f"{self.skipped} skipped"]
        parts += [f"{self.known} known"] if self.known else []
        return " · ".join(parts) + (f" · {self.kernel}" if self.kernel else "")


class LinePolicy:
    """Which lines a finished cell prints (pure: the tests drive it with a fake clock)."""

    def __init__(
        self,
        *,
        verbose: bool,
        tty: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verbose, self.tty, self.clock = verbose, tty, clock
        self.tally = Tally()
        self._said_at = clock()
        self._said_step = 0

    def cell(self, status: str, *, line: str, brief: str, total: int) -> list[str]:
        """The lines to print for a cell that finished with pytest's `status` (passed,
        failed, skipped, xfailed); its verbose `line` and its one-line `brief`."""
        t = self.tally
        t.done += 1
        if status == "passed":
            t.passed += 1
        elif status == "failed":
            t.failed += 1
        elif status == "xfailed":
            t.known += 1
        else:
            t.skipped += 1
        counter = f"[{t.done:>4}/{total or '?'}]"
        if self.verbose:
            return [f"{counter} {line}"]
        out = [f"{counter} {brief}"] if status == "failed" else []
        if not self.tty and self._progress_due(total):
            out.append(f"kitl: {t.status(total)}")
        return out

    def _progress_due(self, total: int) -> bool:
        step = self.tally.done * PROGRESS_STEPS // total if total else 0
        now = self.clock()
        if step > self._said_step or now - self._said_at >= PROGRESS_SECONDS:
            self._said_step, self._said_at = step, now
            return True
        return False


class StatusLine:
    """The status line redrawn in place on a terminal (rich), lines printed above it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stdout, highlight=False)
        self._live: Live | None = None

    def print(self, line: str) -> None:
        self.console.print(Text(line), soft_wrap=True)

    def update(self, text: str) -> None:
        if self._live is None:
            self._live = Live(
                console=self.console,
                auto_refresh=False,  # no thread: it would write while pytest captures
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        self._live.update(Text(text, overflow="ellipsis", no_wrap=True), refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class CellLines:
    """--kitl-lines: kitl's own lines instead of pytest's dots: a line when a kernel's
    first cell starts (that cell boots it), and each cell as LinePolicy says."""

    def __init__(
        self,
        config: pytest.Config,
        *,
        verbose: bool,
        total: Callable[[], int],
        kernel_of: Callable[[str], str | None],
        status_line: StatusLine | None = None,
    ) -> None:
        self.config = config
        self.total, self.kernel_of = total, kernel_of
        tty = status_line is not None or (not verbose and sys.stdout.isatty())
        self.policy = LinePolicy(verbose=verbose, tty=tty)
        self.status_line = status_line or (StatusLine() if tty else None)
        self.announced: set[str] = set()

    def _write(self, line: str) -> None:
        if self.status_line is not None:
            self.status_line.print(line)
            return
        writer = self.config.pluginmanager.get_plugin("terminalreporter")
        if writer is not None:
            writer.write_line(line)

    def _status(self) -> None:
        if self.status_line is not None:
            self.status_line.update(f"kitl: {self.policy.tally.status(self.total())}")

    @pytest.hookimpl
    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, str] | None:
        # a collection report has no user_properties
        if "kitl_line" not in dict(getattr(report, "user_properties", ())):
            return None
        if hasattr(report, "wasxfail"):
            return "xfailed", "", "XFAIL"
        if report.when == "call" or report.skipped:
            return report.outcome, "", report.outcome.upper()
        return "", "", ""

    @pytest.hookimpl
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        writer = self.config.pluginmanager.get_plugin("terminalreporter")
        if writer is not None:  # kitl's lines carry the progress: no [ 50%] column
            writer._show_progress_info = False

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "kitl_line" not in props or (report.when != "call" and not report.skipped):
            return
        if "kitl_boot" in props:
            self._write(f"kitl: {props['kitl_boot']}")
        status = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        kernel = self.kernel_of(report.nodeid)
        self.policy.tally.kernel = kernel or self.policy.tally.kernel
        line, brief = str(props["kitl_line"]), str(props.get("kitl_brief", ""))
        for text in self.policy.cell(status, line=line, brief=brief, total=self.total()):
            self._write(text)
        self._status()

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        kernel = self.kernel_of(nodeid)
        if kernel is not None and kernel not in self.announced:
            self.announced.add(kernel)
            self._write(f"kitl: booting {kernel} (its first cell starts)")
        if kernel is not None:
            self.policy.tally.kernel = kernel
            self._status()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        if self.status_line is not None:  # before pytest's own last lines
            self.status_line.stop()
