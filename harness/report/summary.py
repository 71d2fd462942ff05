"""The short view of a run, computed once from the report model and rendered by the job
summary (harness.report.markdown) and the GitHub annotations (harness.report.github).

A run of thousands of cells is mostly the same row again: a program that passes on every
kernel.  So the matrix is grouped: kernels are the columns, a scenario's configs and loaders
become sub-rows only where the scenario has more than one, rows that show the same thing on
every kernel make one group, and the failures are grouped by outcome, class and message
across kernels.  A kernel that never ran a cell (it did not boot, or crashed before its
first cell) is told once, apart from the matrix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.outcome import Outcome
from harness.report.model import Cell, Report
from harness.results.record import BootFailure

# at most this many rows with a failure are listed one by one; past it they are grouped too
LISTED_ROWS = 25
# what the message of a failure group leaves out: the parts that differ from case to case
_REGEX = re.compile(r"/(?:[^/\\\n]|\\.)+/")
_NUMBER = re.compile(r"(?<![\w.])(?:0x[0-9a-fA-F]+|-?\d+)(?![\w.])")
MESSAGE_CHARS = 160


@dataclass(frozen=True)
class Row:
    """One case under one config and loader, across the summary's kernels."""

    scenario: str
    case: str
    variant: str  # config[-libbpf], "" where the scenario has only one
    cells: tuple[Cell | None, ...]  # one per kernel of the summary

    @property
    def name(self) -> str:
        base = f"{self.scenario}::{self.case}"
        return f"{base} · {self.variant}" if self.variant else base

    @property
    def pattern(self) -> tuple[str, ...]:
        """What the row shows on each kernel: rows with the same pattern make one group."""
        return tuple(c.display if c else "" for c in self.cells)

    @property
    def failing(self) -> bool:
        return any(c is not None and c.category in ("fail", "infra") for c in self.cells)


@dataclass(frozen=True)
class RowGroup:
    """Rows that show the same on every kernel (one row stands for itself)."""

    pattern: tuple[str, ...]
    rows: tuple[Row, ...]

    @property
    def scenarios(self) -> int:
        return len({r.scenario for r in self.rows})


@dataclass(frozen=True)
class FailureGroup:
    """Failed cells that share an outcome, a failure class and a message, on any kernel."""

    outcome: str
    error_class: str  # the verifier's or the loader's class, "" when none was recorded
    message: str  # the first line of the reason, its case-specific parts left out
    cells: tuple[Cell, ...]

    @property
    def kernels(self) -> dict[str, int]:
        """The kernels of the group with their number of cells, in the summary's order."""
        counts: dict[str, int] = {}
        for cell in self.cells:
            counts[cell.record.kernel] = counts.get(cell.record.kernel, 0) + 1
        return counts

    @property
    def infrastructure(self) -> bool:
        return self.cells[0].category == "infra"


@dataclass(frozen=True)
class DownKernel:
    """A kernel that ran no cell, told once: why, where its console is, how many cells it
    held, and the run-level cell that stands for it (when there is one, for its repro)."""

    kernel: str
    outcome: str
    reason: str
    console: Path | None
    not_run: int
    cell: Cell | None


@dataclass(frozen=True)
class Summary:
    kernels: tuple[str, ...]  # the matrix's columns: the kernels that ran cells
    failing: tuple[RowGroup, ...]  # rows with a failure: one each, or grouped when many
    passing: tuple[RowGroup, ...]  # rows without one, grouped by pattern, largest first
    failures: tuple[FailureGroup, ...]  # largest first
    down: tuple[DownKernel, ...]

    @property
    def failed_cells(self) -> int:
        return sum(len(g.cells) for g in self.failures)


def _first_line(cell: Cell) -> str:
    """The reason's first line without the outcome or class it repeats."""
    first = cell.reason.strip().splitlines()[0] if cell.reason.strip() else ""
    for prefix in (cell.outcome, cell.record.observed.error_class or ""):
        if prefix and first.startswith(prefix + ": "):
            first = first[len(prefix) + 2 :]
    return first


def _cut(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def message_of(cell: Cell) -> str:
    """What groups like failures: the reason's first line without the outcome it repeats
    and the parts that differ from case to case (regular expressions, numbers)."""
    return _cut(_NUMBER.sub("N", _REGEX.sub("/…/", _first_line(cell))))


def detail_of(cell: Cell) -> str:
    """The reason's first line as the cell recorded it, without the outcome it repeats."""
    return _cut(_first_line(cell))


def boot_failures(report: Report) -> list[BootFailure]:
    found = report.meta.get("boot_failures")
    if not isinstance(found, list):
        return []
    return [BootFailure.from_json(f if isinstance(f, dict) else {}) for f in found]


def _down_kernels(report: Report) -> tuple[DownKernel, ...]:
    """Kernels that did not boot (the run's boot_failures) and kernels whose failure hit
    them whole (a run-level cell) without any cell of their own."""
    by_kernel: dict[str, list[Cell]] = {}
    for cell in report.cells:
        by_kernel.setdefault(cell.record.kernel, []).append(cell)
    found: dict[str, DownKernel] = {}
    for failure in boot_failures(report):
        cells = by_kernel.get(failure.kernel, [])
        if any(c.outcome != Outcome.BOOT_FAILED and not c.run_level for c in cells):
            continue  # it came up after all (a retry): its cells say the rest
        console = report.inside(failure.console_path)
        found[failure.kernel] = DownKernel(
            failure.kernel, failure.outcome, failure.reason, console, len(cells), None
        )
    for kernel, cells in by_kernel.items():
        level = [c for c in cells if c.run_level]
        if kernel in found or not level or len(level) < len(cells):
            continue
        first = level[0]
        console = report.guest_file(kernel, "console")
        found[kernel] = DownKernel(kernel, first.outcome, first.reason, console, 0, first)
    return tuple(found[k] for k in sorted(found, key=_order(report.kernels)))


def _order(kernels: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    position = {k: n for n, k in enumerate(kernels)}
    return lambda k: (position.get(k, len(position)), k)


def _rows(report: Report, kernels: tuple[str, ...]) -> list[Row]:
    """The report's cells as rows of kernels: configs and loaders as sub-rows only in
    scenarios that have more than one."""
    variants: dict[str, set[tuple[str, str]]] = {}
    for cell in report.cells:
        variants.setdefault(cell.record.scenario, set()).add(
            (cell.record.config, cell.record.libbpf)
        )
    grid: dict[tuple[str, str, str, str], dict[str, Cell]] = {}
    for row in report.rows:
        for column in report.columns:
            found = report.cell(row, column)
            if found is None or found.run_level or column.kernel not in kernels:
                continue
            record = found.record
            many = len(variants[record.scenario]) > 1
            variant = "-".join(p for p in (record.config, record.libbpf) if p) if many else ""
            key = (record.scenario, record.case, variant, row)
            grid.setdefault(key, {})[column.kernel] = found
    return [
        Row(scenario, case, variant, tuple(found.get(k) for k in kernels))
        for (scenario, case, variant, _), found in grid.items()
    ]


def _grouped(rows: Iterable[Row]) -> tuple[RowGroup, ...]:
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(row.pattern, []).append(row)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))  # stable: first seen
    return tuple(RowGroup(pattern, tuple(rows)) for pattern, rows in ordered)


def _failure_groups(cells: Iterable[Cell], kernels: Sequence[str]) -> tuple[FailureGroup, ...]:
    """Cells grouped by (outcome, class, message); in a group, kernel by kernel."""
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    by_kernel = _order(kernels)
    for cell in sorted(cells, key=lambda c: by_kernel(c.record.kernel)[0]):
        error_class = cell.record.observed.error_class or ""
        if error_class == cell.outcome:
            error_class = ""  # VERIFIER_REJECTED (VERIFIER_REJECTED) says nothing more
        groups.setdefault((cell.outcome, error_class, message_of(cell)), []).append(cell)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    return tuple(FailureGroup(*key, tuple(cells)) for key, cells in ordered)


def summarize(report: Report) -> Summary:
    down = _down_kernels(report)
    gone = {d.kernel for d in down}
    kernels = tuple(k for k in report.kernels if k not in gone)
    rows = _rows(report, kernels)
    failing = [r for r in rows if r.failing]
    if len(failing) <= LISTED_ROWS:
        listed = tuple(RowGroup(r.pattern, (r,)) for r in failing)
    else:
        listed = _grouped(failing)
    failed = (c for r in failing for c in r.cells if c and c.category in ("fail", "infra"))
    return Summary(
        kernels=kernels,
        failing=listed,
        passing=_grouped(r for r in rows if not r.failing),
        failures=_failure_groups(failed, kernels),
        down=down,
    )
