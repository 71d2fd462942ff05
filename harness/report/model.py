"""A run directory as the reports see it (read only): its cells, each with every key
optional, the columns of the matrix (kernel x config x loader) in kernel order, the
failures, and log excerpts.  Every format in harness/report/ renders this model."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.outcome import Outcome
from harness.results.record import CellRecord, LoaderProgram, LoaderRun, label, number_of, text_of
from harness.results.rundir import safe_name
from harness.results.runs import Cells, load_run
from harness.scenario.expect import kernel_version

RUN_LEVEL = "*"  # scenario (and case, config) of a failure that hit a whole kernel
LOG_EXCERPT_LINES = 20

# symbol, short word: what a matrix cell shows for each outcome
_DISPLAY: dict[str, tuple[str, str]] = {
    Outcome.PASSED: ("✅", "pass"),
    Outcome.FAILED: ("❌", "failed"),
    Outcome.VERIFIER_REJECTED: ("❌", "rejected"),
    Outcome.LOAD_FAILED: ("❌", "load failed"),
    Outcome.ATTACH_FAILED: ("❌", "attach failed"),
    Outcome.SKIPPED: ("⏭", "skip"),
    Outcome.BOOT_FAILED: ("💥", "boot failed"),
    Outcome.KERNEL_CRASH: ("💥", "crash"),
    Outcome.VM_LOST: ("💥", "VM lost"),
    Outcome.TIMED_OUT: ("💥", "timeout"),
    Outcome.ERROR: ("💥", "error"),
}


@dataclass(frozen=True)
class Cell:
    """One cell as the reports show it: its record (every key optional: older or future
    runs, killed runs) and what a report makes of it."""

    record: CellRecord

    @property
    def outcome(self) -> str:
        """The outcome as recorded, ERROR when there is none; an unknown name as written."""
        return self.record.outcome_text or Outcome.ERROR

    @property
    def reason(self) -> str:
        if not self.record.outcome_text and not self.record.reason:
            return "the cell recorded no outcome"
        return self.record.reason

    @property
    def cell_id(self) -> str:
        return self.record.cell_id

    @property
    def column(self) -> str:
        return self.record.label

    @property
    def row(self) -> str:
        return f"{self.record.scenario}::{self.record.case}"

    @property
    def run_level(self) -> bool:
        return self.record.scenario == RUN_LEVEL

    @property
    def category(self) -> str:
        """pass, fail, skip or infra; an outcome this version does not know counts as infra
        (nothing can be said about the kernel from it)."""
        if self.outcome == Outcome.PASSED:
            return "pass"
        if self.outcome == Outcome.SKIPPED:
            return "skip"
        if self.outcome in _DISPLAY and not Outcome(self.outcome).is_infrastructure:
            return "fail"
        return "infra"

    @property
    def symbol(self) -> str:
        return _DISPLAY.get(self.outcome, ("❓", ""))[0]

    @property
    def display(self) -> str:
        """Symbol and short word, as a matrix cell shows it."""
        symbol, word = _DISPLAY.get(self.outcome, ("❓", self.outcome.lower()))
        return f"{symbol} {word}"

    @property
    def loader(self) -> LoaderRun | None:
        """What the user's own loader did, for a loader case's cell."""
        return self.record.observed.loader

    def figure(self, key: str) -> int | float | None:
        """A number the cell recorded under `key`, in its verifier stats or its timings."""
        found = number_of(self.record.verifier.value(key))
        return found if found is not None else number_of(self.record.timings.value(key))


@dataclass(frozen=True)
class Column:
    kernel: str
    config: str
    libbpf: str
    label: str


@dataclass(frozen=True)
class Report:
    """The matrix: rows scenario::case, columns kernel-config[-libbpf] in a stable order."""

    run_dir: Path
    meta: Mapping[str, Any]
    cells: tuple[Cell, ...]
    kernels: tuple[str, ...]
    columns: tuple[Column, ...]
    rows: tuple[str, ...]
    grid: Mapping[tuple[str, str], Cell]  # (row, column label) -> cell

    def cell(self, row: str, column: Column) -> Cell | None:
        return self.grid.get((row, column.label))

    def first_failing_kernel(self, row: str) -> str | None:
        """The lowest kernel (in column order) where some config neither passed nor skipped."""
        for kernel in self.kernels:
            for column in self.columns:
                cell = self.cell(row, column)
                if column.kernel == kernel and cell and cell.category in ("fail", "infra"):
                    return kernel
        return None

    @property
    def failures(self) -> tuple[Cell, ...]:
        """Every cell that neither passed nor skipped, in matrix order."""
        found = (self.cell(row, column) for row in self.rows for column in self.columns)
        return tuple(c for c in found if c and c.category in ("fail", "infra"))

    def counts(self) -> list[tuple[str, int]]:
        """(outcome, count) for every outcome present, in the enum's order."""
        seen: dict[str, int] = {}
        for cell in self.cells:
            seen[cell.outcome] = seen.get(cell.outcome, 0) + 1
        order = [str(o) for o in Outcome] + sorted(set(seen) - set(_DISPLAY))
        return [(o, seen[o]) for o in order if o in seen]

    def headline(self) -> str:
        parts = [f"{_DISPLAY.get(o, ('❓',))[0]} {n} {o}" for o, n in self.counts()]
        return f"{len(self.cells)} cells: " + (" · ".join(parts) or "nothing ran")

    def inside(self, relative: str) -> Path | None:
        """RUN/relative if it exists and stays inside the run directory (a hand-edited
        results.json must not make a report embed /etc/shadow)."""
        if not relative:
            return None
        root = self.run_dir.resolve()
        path = (root / relative).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None

    def log_file(self, cell: Cell) -> Path | None:
        return self.inside(cell.record.log_path)

    def guest_file(self, kernel: str, kind: str) -> Path | None:
        return self.inside(f"guest/{safe_name(kernel)}.{kind}.log")

    def excerpt(
        self, cell: Cell, lines: int = LOG_EXCERPT_LINES, max_bytes: int = 64 * 1024
    ) -> tuple[str, str]:
        """(what, text): the verifier log's tail or, for a failure that killed the kernel
        before any log (a crash, a boot failure), the tail of the guest console."""
        if path := self.log_file(cell):
            what = "loader output" if cell.loader is not None else "verifier log"
            return what, tail(path, lines=lines, max_bytes=max_bytes)
        if cell.category == "infra" and (path := self.guest_file(cell.record.kernel, "console")):
            return "guest console", tail(path, lines=lines, max_bytes=max_bytes)
        return "", ""

    @property
    def loader_cells(self) -> tuple[Cell, ...]:
        """The cells of loader cases, in matrix order."""
        found = (self.cell(row, column) for row in self.rows for column in self.columns)
        return tuple(c for c in found if c and c.loader is not None)

    def repro(self, cell: Cell) -> str:
        if cell.loader is not None:  # no one program to reload: the loader runs again
            scenario = cell.record.scenario_file or cell.record.scenario
            return f"kitl run {shlex.quote(scenario)} --kernel {shlex.quote(cell.record.kernel)}"
        return f"kitl repro {shlex.quote(str(self.run_dir))} {shlex.quote(cell.cell_id)}"


def loader_ending(run: LoaderRun) -> str:
    """How a user's loader ended, in a few words."""
    if run.timed_out:
        return "timed out, killed"
    if run.status is None:
        return "did not run"
    return f"killed by signal {-run.status}" if run.status < 0 else f"exit {run.status}"


def program_line(program: LoaderProgram) -> str:
    """A program a loader loaded: its name, type and the kernel's figures."""
    figures = [f"verified_insns {text_of(program.verified_insns) or '?'}"]
    figures += [f"xlated {text_of(program.xlated_len)} B", f"jited {text_of(program.jited_len)} B"]
    left = ", left loaded" if program.left_loaded else ""
    return f"{program.name} ({program.type}): {', '.join(figures)}{left}"


def tail(path: Path, *, lines: int = LOG_EXCERPT_LINES, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a text file, reading at most `max_bytes` of it (a verifier
    log may reach 16 MiB)."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - max_bytes))
        data = f.read()
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "")
    kept = text.splitlines()
    if size > max_bytes and kept:
        kept = kept[1:]  # the first line read is probably cut
    return "\n".join(kept[-lines:])


def load_cells(run_dir: Path) -> tuple[dict[str, Any], Cells]:
    """(run meta, cells) of a run directory, read by harness.results.runs: results.json
    when it is whole, else the cells results.jsonl collected (a killed run), meta then
    empty."""
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    run = load_run(run_dir)
    return run.meta, run.cells


def _kernel_order(meta: Mapping[str, Any], cells: Iterable[Cell]) -> tuple[str, ...]:
    listed = meta.get("kernels")
    named = [k for k in listed if isinstance(k, str)] if isinstance(listed, list) else []
    releases: dict[str, str] = {}
    for cell in cells:
        if not releases.get(cell.record.kernel):
            releases[cell.record.kernel] = cell.record.kernel_release
    if isinstance(one := meta.get("kernel"), str) and one in releases and not releases[one]:
        releases[one] = text_of(meta.get("release"))  # a one-kernel run's meta names its release

    def key(kernel: str) -> tuple[int, tuple[int, int, int], str]:
        try:
            return 0, kernel_version(releases[kernel]), kernel
        except ValueError:
            return 1, (0, 0, 0), kernel  # no release known (a boot failure): after the rest

    rest = sorted((k for k in releases if k not in named), key=key)
    return tuple(k for k in named if k in releases) + tuple(rest)


def build_report(run_dir: Path) -> Report:
    meta, records = load_cells(run_dir)
    cells = tuple(Cell(r) for r in records)
    kernels = _kernel_order(meta, cells)
    configs: dict[tuple[str, str], None] = {}  # first-seen order, an ordered set
    rows: dict[str, None] = {c.row: None for c in cells if c.run_level}  # run-level first
    for cell in cells:
        configs.setdefault((cell.record.config, cell.record.libbpf))
        rows.setdefault(cell.row)
    present = {(c.record.kernel, c.record.config, c.record.libbpf) for c in cells}
    columns = tuple(
        Column(kernel, config, libbpf, label(kernel, config, libbpf))
        for kernel in kernels
        for config, libbpf in configs
        if (kernel, config, libbpf) in present
    )
    return Report(
        run_dir=run_dir,
        meta=meta,
        cells=cells,
        kernels=kernels,
        columns=columns,
        rows=tuple(rows),
        grid={(c.row, c.column): c for c in cells},
    )
