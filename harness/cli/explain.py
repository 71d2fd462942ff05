"""`kitl explain RUN_DIR CELL_ID`: one cell of a run explained from its saved verifier log.

For a rejected program: the instruction the verifier stopped at, its C line (BTF line info),
the registers and stack slots the log had printed for it, the complaint in plain words with
the usual fixes, and the helpers and kfuncs the program calls by name.  For a program that
loaded: its statistics.  Nothing is booted: only the run directory is read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.bpf.causes import explain as explain_load
from harness.bpf.explain import Explanation, explain_log
from harness.bpf.log_insns import state_items
from harness.bpf.verifier_log import VerifierStats
from harness.cli.repro import command_line, find_cell
from harness.cli.requests import ExplainRequest
from harness.errors import UsageError
from harness.outcome import EXIT_OK
from harness.results.record import CellRecord, Verifier

STATE_WIDTH = 100  # a register's value wraps after this many characters
BPF_LOG_LEVEL1 = 1  # the verifier log's level bits (uapi)
BPF_LOG_LEVEL2 = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument(
        "cell_id", metavar="CELL_ID", help="as the reports name it: 'obj::prog[debian-6.1-default]'"
    )


def read_log(run_dir: Path, cell: CellRecord) -> str | None:
    """The cell's saved verifier log, or None when it has none."""
    if not cell.log_path or not cell.log_path.endswith(".verifier.log"):
        return None
    path = run_dir / cell.log_path
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UsageError(f"{path}: the cell's verifier log is gone") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None


def stats_of(cell: CellRecord, explanation: Explanation | None) -> VerifierStats:
    """The log's statistics, else the figures the cell recorded from its first load."""
    if explanation is not None and explanation.log.stats.present:
        return explanation.log.stats
    v: Verifier = cell.verifier
    return VerifierStats(
        insns=v.insns if v.insns is not None else v.verified_insns,
        max_states_per_insn=v.max_states_per_insn,
        total_states=v.total_states,
        peak_states=v.peak_states,
        mark_read=v.mark_read,
        duration_us=v.duration_us,
        stack_depth=(v.stack_depth,) if v.stack_depth is not None else (),
    )


def stats_line(stats: VerifierStats) -> str:
    parts = [
        f"{stats.insns} insns processed" if stats.insns is not None else "",
        f"{stats.total_states} states (peak {stats.peak_states})"
        if stats.total_states is not None
        else "",
        f"stack {stats.stack_depth_total} B" if stats.stack_depth_total is not None else "",
        f"verified in {stats.duration_us} us" if stats.duration_us is not None else "",
    ]
    return ", ".join(p for p in parts if p) or "no statistics recorded"


def verdict(cell: CellRecord) -> str:
    """'loaded', 'rejected (VERIFIER_REJECTED)', or why it never loaded."""
    ok = cell.observed.load_ok
    if ok:
        return "loaded"
    if ok is None:
        return f"not loaded ({cell.outcome_text or 'no outcome'})"
    return f"rejected ({cell.observed.error_class or cell.outcome_text})"


def header(cell: CellRecord) -> list[str]:
    release = f" ({cell.kernel_release})" if cell.kernel_release else ""
    section = f', SEC("{cell.section}")' if cell.section else ""
    attach = str(cell.observed.load.get("attach_type") or "")
    lines = [
        cell.cell_id,
        f"  kernel   {cell.kernel}{release}, config {cell.config}",
        f"  program  {cell.case} ({cell.prog_type or '?'}{section}"
        + (f", attach {attach}" if attach else "")
        + ")",
        f"  object   {cell.object_file or cell.scenario_file}",
        f"  outcome  {cell.outcome_text}: {verdict(cell).replace(f' ({cell.outcome_text})', '')}",
    ]
    if cell.expected:
        expected = ", ".join(f"{k} {v}" for k, v in cell.expected.items())
        lines.append(f"  expected {expected if len(expected) <= 120 else expected[:117] + '...'}")
    if cell.reason:
        lines.append(f"  reason   {cell.reason}")
    if cell.log_path:
        level = cell.verifier.log_level
        lines.append(
            f"  log      {cell.log_path} (log level {level if level is not None else '?'})"
        )
    return lines


def _wrapped(first: str, items: list[str]) -> list[str]:
    """A state over lines of at most STATE_WIDTH characters, cut between registers."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(item) < STATE_WIDTH:
            lines[-1] += " " + item
        else:
            lines.append(item)
    return [(first if i == 0 else " " * len(first)) + line for i, line in enumerate(lines)]


def failure_lines(e: Explanation) -> list[str]:
    lines: list[str] = []
    point = e.failure
    if point is not None:
        lines += ["", f"Failed at insn {point.step.index}: {point.step.text}"]
        if point.source is not None:
            lines.append(f"  source   {point.source}")
        for frame, values in sorted(point.frames.items()):
            if values:
                label = "state" if len(point.frames) == 1 else f"frame {frame}"
                lines += _wrapped(f"  {label:8} ", state_items(values))
        if not point.full_state:
            lines.append(
                "           (as last printed: a level-1 log shows only the registers each "
                "insn touched; level 2 shows all)"
            )
        if e.trace.paths > 1:
            lines.append(f"  paths    {e.trace.paths} walked, {e.trace.pruned} pruned as safe")
    if e.message:
        lines += ["", "The verifier said:", *(f"  {ln}" for ln in e.message.splitlines())]
    if e.log.diagnosis:
        lines.append(f"  (the kernel's own diagnosis: {e.log.diagnosis})")
    if e.unknown:
        lines += ["", "Unknown to this kernel:", *(f"  {c.describe()}" for c in e.unknown)]
    if e.advice is not None:
        lines += ["", f"In plain words ({e.advice.topic}): {e.advice.meaning}.", "Usual fixes:"]
        lines += [f"  - {fix}" for fix in e.advice.fixes]
    if e.kernel_suggestion:
        lines.append(f"  - the kernel suggests: {e.kernel_suggestion}")
    return lines


def no_trace_lines(
    run_dir: Path, cell: CellRecord, e: Explanation | None, failed: bool
) -> list[str]:
    """What to say when the log holds no instruction stream."""
    level = cell.verifier.log_level or 0
    # level 0 with a log: libbpf's retry of a failed load at level 1
    stats_only = level != 0 and not level & (BPF_LOG_LEVEL1 | BPF_LOG_LEVEL2)
    if e is not None and e.message and not stats_only and not e.log.truncated:
        # a whole-program check: the control flow before the walk (back-edges), the stack
        # depth of call chains after it (the walk's trace is dropped when it succeeds), BTF
        return [
            "",
            "No instruction to show: the verifier refused the program in a check of the whole "
            "program (control flow, call-chain stack depth, BTF), not at an insn it walked.",
        ]
    if e is None:
        why = "no verifier log was saved for this cell"
    elif e.log.truncated:
        why = "the log was cut before the verifier's verdict"
    else:
        why = f"the log holds statistics only (log level {level})"
    if not failed:
        return [
            "",
            f"{why}: kitl verify keeps the whole log of failures, and of every program "
            "with --log-level 5",
        ]
    return [
        "",
        f"{why}: no instruction stream to show.",
        f"  its trace, loaded again on the same kernel: {command_line(run_dir, cell.cell_id)}",
    ]


def describe(run_dir: Path, cell: CellRecord, log: str | None) -> list[str]:
    truncated = bool(cell.verifier.log_truncated)
    e = explain_log(log, truncated=truncated) if log else None
    lines = header(cell)
    failed = cell.observed.load_ok is False
    if failed and cell.observed.load and (e is None or e.message is None):
        cause = explain_load(cell.observed.load)
        lines += [
            "",
            f"The load failed before the verifier's verdict: {cause.error_class}: {cause.message}",
        ]
    if e is not None and (e.message or e.failure):
        lines += failure_lines(e)
    if e is None or not e.trace.steps:
        lines += no_trace_lines(run_dir, cell, e, failed)
    if e is not None and e.calls:
        lines += ["", "Calls:", *(f"  {c.describe()}" for c in e.calls)]
    if cell.observed.load or e is not None:
        lines += ["", f"Statistics: {stats_line(stats_of(cell, e))}"]
    return lines


def run(request: ExplainRequest) -> int:
    cell = find_cell(request.run_dir, request.cell_id)
    for line in describe(request.run_dir, cell, read_log(request.run_dir, cell)):
        print(line)
    return EXIT_OK
