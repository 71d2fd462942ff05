"""`kitl diff`: one program's verifier logs from two cells, aligned.

    kitl diff RUN_DIR PROGRAM KERNEL_A KERNEL_B    two kernels of one run
    kitl diff RUN_A RUN_B PROGRAM [--kernel K]     one program in two runs (before/after)

PROGRAM is a case name (a `kitl verify` program), `SCENARIO::CASE` where a name is in
several objects or scenarios, or the cell's recorded program.  A KERNEL is a kernel name
(`debian-7.2`) or, where a kernel ran under several configs or loaders, the label of the
cell id's bracket (`debian-6.1-jit`).  Prints the verdicts, where the logs first part, the
statistics side by side, the helpers and kfuncs only one log calls, and the instruction
streams side by side around that point.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from harness.bpf.log_diff import LogDiff, Row, diff_logs, stat_deltas
from harness.bpf.log_insns import Step
from harness.cli.explain import read_log, stats_of, verdict
from harness.cli.requests import DIFF_CONTEXT, DiffRequest
from harness.errors import UsageError
from harness.outcome import EXIT_OK
from harness.results.record import CellRecord
from harness.results.runs import load_run

COLUMN = 52  # characters of each log's column in the side-by-side rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "args",
        nargs="+",
        metavar="ARG",
        help="RUN_DIR PROGRAM KERNEL_A KERNEL_B, or RUN_A RUN_B PROGRAM",
    )
    p.add_argument("--kernel", help="with two runs: the kernel (or label) of both cells")
    p.add_argument("--context", type=int, default=DIFF_CONTEXT, help="rows around the divergence")
    p.add_argument("--all", action="store_true", help="every aligned row of the two logs")


def _program_cells(run_dir: Path, program: str) -> list[CellRecord]:
    cells = load_run(run_dir).cells if run_dir.is_dir() else []
    if not cells:
        raise UsageError(f"{run_dir}: not a kitl run directory (no results)")
    found = [c for c in cells if program in (f"{c.scenario}::{c.case}", c.case, c.program)]
    if not found:
        names = sorted({f"{c.scenario}::{c.case}" for c in cells} | {c.case for c in cells})
        close = difflib.get_close_matches(program, names, n=3)
        hint = "did you mean " + " or ".join(repr(c) for c in close) if close else None
        raise UsageError(f"{run_dir}: no program {program!r}", hint=hint)
    owners = sorted({f"{c.scenario}::{c.case}" for c in found})
    if len(owners) > 1:
        raise UsageError(f"{run_dir}: {program!r} is ambiguous: name one of {', '.join(owners)}")
    return found


def pick_cell(run_dir: Path, program: str, kernel: str | None) -> CellRecord:
    cells = _program_cells(run_dir, program)
    labels = [c.label for c in cells]
    if kernel is None:
        if len(cells) == 1:
            return cells[0]
        raise UsageError(f"{run_dir}: {program!r} ran on {', '.join(labels)}: choose with --kernel")
    chosen = [c for c in cells if kernel == c.label] or [c for c in cells if kernel == c.kernel]
    if len(chosen) == 1:
        return chosen[0]
    if chosen:
        raise UsageError(
            f"{run_dir}: {program!r} ran on {kernel} as {', '.join(c.label for c in chosen)}: "
            "name one"
        )
    close = difflib.get_close_matches(kernel, labels + [c.kernel for c in cells], n=2)
    hint = "did you mean " + " or ".join(repr(c) for c in close) if close else None
    raise UsageError(
        f"{run_dir}: {program!r} did not run on {kernel} (it ran on {', '.join(labels)})",
        hint=hint,
    )


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _side(step: Step | None, width: int) -> str:
    return _cut(step.text if step is not None else "", width).ljust(width)


def _row_lines(rows: tuple[Row, ...], first: int, last: int, mark: int | None) -> list[str]:
    lines: list[str] = []
    shown_source = None
    for number in range(first, last):
        row = rows[number]
        if row.source is not None and row.source != shown_source:
            lines.append(f"{'':9}; {_cut(str(row.source), 2 * COLUMN)}")
            shown_source = row.source
        step = row.a or row.b
        index = step.index if step is not None else 0
        flag = ">" if number == mark else ("!" if row.a is None or row.b is None else " ")
        lines.append(f"{flag} {index:>6}  {_side(row.a, COLUMN)} | {_side(row.b, COLUMN)}".rstrip())
    return lines


def render(diff: LogDiff, a: CellRecord, b: CellRecord, context: int, every_row: bool) -> list[str]:
    lines = [f"kitl diff: {a.scenario}::{a.case}"]
    for side, cell, e in (("A", a, diff.a), ("B", b, diff.b)):
        message = e.message.splitlines()[0] if e.message else ""
        lines.append(
            f"  {side}  {cell.cell_id}: {verdict(cell)}" + (f": {message}" if message else "")
        )
        if not e.trace.steps:
            level = cell.verifier.log_level
            what = "no log saved" if not cell.log_path else "no instructions in its log"
            lines.append(f"      {what} (log level {level}): compared on verdict and statistics")
    if (a.prog_type, a.section) != (b.prog_type, b.section):
        lines.append(
            f"  program type: A {a.prog_type} ({a.section}), B {b.prog_type} ({b.section})"
        )
    d = diff.divergence
    lines += [
        "",
        f"First divergence: {d.kind}, {d.detail}"
        if d
        else "First divergence: none (the logs agree)",
    ]
    lines += ["", f"{'Statistics':26}{'A':>12}{'B':>12}  change"]
    for s in stat_deltas(stats_of(a, diff.a), stats_of(b, diff.b)):
        shown = ["-" if v is None else str(v) for v in (s.a, s.b)]
        lines.append(f"  {s.name:24}{shown[0]:>12}{shown[1]:>12}  {s.delta}")
    for side, calls in (("A", diff.only_a), ("B", diff.only_b)):
        if calls:
            lines += ["", f"Only {side} calls:", *(f"  {c.describe()}" for c in calls)]
    if diff.rows:
        total = len(diff.rows)
        mark = d.row if d else None
        # without a divergence, show where the logs end (a verdict, most often)
        centre = min(mark, total - 1) if mark is not None else total - 1
        first, last = (
            (0, total)
            if every_row
            else (max(0, centre - context), min(total, centre + context + 1))
        )
        lines += [
            "",
            f"Aligned instructions (rows {first + 1}-{last} of {total}; "
            "> first divergence, ! one log only):",
        ]
        lines.append(f"  {'insn':>6}  {'A: ' + a.label:{COLUMN}} | B: {b.label}")
        lines += _row_lines(diff.rows, first, last, mark)
        if diff.cut:
            lines.append(f"  (aligned the first {len(diff.rows)} rows only: a log is longer)")
    return lines


def run(request: DiffRequest) -> int:
    a = pick_cell(request.runs[0], request.program, request.kernels[0])
    b = pick_cell(request.runs[1], request.program, request.kernels[1])
    if a.key == b.key and request.runs[0] == request.runs[1]:
        raise UsageError(f"{a.cell_id}: the same cell twice: name two kernels")
    diff = diff_logs(read_log(request.runs[0], a) or "", read_log(request.runs[1], b) or "")
    for line in render(diff, a, b, request.context, request.every_row):
        print(line)
    return EXIT_OK
