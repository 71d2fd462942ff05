"""The Markdown reports: summary.md, short enough for a CI job summary however many cells
ran (harness.report.summary groups it), and details.md, every failure with its log.

The summary lists rows with a failure and counts the rest, groups failures by outcome,
class and message with one repro command each, and tells a kernel that never ran once; a
guest console's tail appears at most once per kernel.  Everything it leaves out is in
details.md and index.html beside it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from harness.report.model import Cell, Report, loader_ending, program_line, tail
from harness.report.summary import (
    DownKernel,
    FailureGroup,
    RowGroup,
    Summary,
    boot_failures,
    detail_of,
    summarize,
)
from harness.results.record import text_of

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&#])")
CELLS_LISTED = 5  # cells named under a failure group; the rest are counted
GROUPS_SHOWN = 30  # failure groups in the summary; the rest are counted
NAMES_SHOWN = 3  # a group of rows this small names them
LOADERS_SHOWN = 20
CONSOLE_LINES = 12
DETAILS = "details.md"


def md_escape(text: str) -> str:
    """Inline Markdown text shown as is: one line, no emphasis, no HTML, `|` kept in cells."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def fence(text: str) -> str:
    # a fence longer than any run of backticks inside, so a log cannot close it
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def code(text: str) -> str:
    """Inline code that no backtick inside can end."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{' '.join(text.split())}{pad}{ticks}"


def _block(text: str, what: str) -> list[str]:
    marks = fence(text)
    return [f"{md_escape(what)} (tail):", "", f"{marks}text", text, marks, ""]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _head(report: Report) -> list[str]:
    out = ["# kitl report", "", f"**{md_escape(report.headline())}**", ""]
    meta = [f"run {code(str(report.run_dir))}"]
    if report.kernels:
        meta.append("kernels " + ", ".join(md_escape(k) for k in report.kernels))
    for key in ("accel", "libbpf", "started", "finished"):
        if value := text_of(report.meta.get(key)):
            meta.append(f"{key} {md_escape(value)}")
    return [*out, " · ".join(meta), ""]


# -- the summary ------------------------------------------------------------------------------


def render_summary(report: Report, summary: Summary | None = None) -> str:
    """summary.md: the headline, kernels that never ran, the grouped matrix, the grouped
    failures, the user loaders; a few hundred lines at most for thousands of cells."""
    summary = summary or summarize(report)
    shown: set[str] = set()  # kernels whose console tail is already in the summary
    out = _head(report)
    out += _down_markdown(report, summary.down, shown)
    out += _matrix_markdown(summary)
    out += _failures_markdown(report, summary, shown)
    out += _loaders_markdown(report.loader_cells, LOADERS_SHOWN)
    out += ["", f"Every failure with its log: {DETAILS} and index.html beside this file."]
    return "\n".join(out).rstrip("\n") + "\n"


def _console(report: Report, kernel: str, shown: set[str]) -> list[str]:
    """The tail of a kernel's guest console, the first time the summary needs it."""
    path = report.guest_file(kernel, "console")
    if kernel in shown or path is None:
        return []
    shown.add(kernel)
    return _block(tail(path, lines=CONSOLE_LINES), f"{kernel} guest console")


def _down_markdown(report: Report, down: Iterable[DownKernel], shown: set[str]) -> list[str]:
    kernels = list(down)
    if not kernels:
        return []
    out = ["## Kernels that did not run", ""]
    for kernel in kernels:
        held = f" ({_plural(kernel.not_run, 'cell')} did not run)" if kernel.not_run else ""
        out += [f"### 💥 {md_escape(kernel.kernel)}: {md_escape(kernel.outcome)}{held}", ""]
        out += [f"> {md_escape(line) or ' '}" for line in kernel.reason.splitlines()[:5]]
        out.append("")
        if kernel.console is not None and kernel.kernel not in shown:
            shown.add(kernel.kernel)
            out += _block(tail(kernel.console, lines=CONSOLE_LINES), "Guest console")
        if kernel.cell is not None:
            out += [f"Reproduce: {code(report.repro(kernel.cell))}", ""]
    return out


def _group_name(group: RowGroup, *, failing: bool) -> str:
    if len(group.rows) == 1:
        return md_escape(group.rows[0].name)
    if len(group.rows) <= NAMES_SHOWN:
        names = ", ".join(md_escape(r.name) for r in group.rows)
        return f"{len(group.rows)} cases: {names}"
    scenarios = f" of {group.scenarios} scenarios" if group.scenarios > 1 else ""
    return f"{len(group.rows)} cases{scenarios}" + (" (see Failures)" if failing else "")


def _matrix_markdown(summary: Summary) -> list[str]:
    if not summary.kernels:
        return []
    header = ["case", *(md_escape(k) for k in summary.kernels)]
    out = ["## Matrix", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for groups, failing in ((summary.failing, True), (summary.passing, False)):
        for group in groups:
            shown = [md_escape(p) or "—" for p in group.pattern]
            out.append(f"| {_group_name(group, failing=failing)} | " + " | ".join(shown) + " |")
    return [*out, ""]


def _group_heading(group: FailureGroup) -> str:
    what = group.outcome + (f" · {group.error_class}" if group.error_class else "")
    where = ", ".join(
        md_escape(k) if n == len(group.cells) else f"{md_escape(k)} ({n})"
        for k, n in group.kernels.items()
    )
    symbol = group.cells[0].symbol
    cells = _plural(len(group.cells), "cell")
    # one cell: its own words; more: what they share
    message = group.message if len(group.cells) > 1 else detail_of(group.cells[0])
    return f"### {symbol} {md_escape(what)}: {md_escape(message)} — {cells} on {where}"


def _failure_group(report: Report, group: FailureGroup, shown: set[str]) -> list[str]:
    out = [_group_heading(group), ""]
    if len(group.cells) > 1:
        for cell in group.cells[:CELLS_LISTED]:
            detail = detail_of(cell)
            said = f": {md_escape(detail)}" if detail and detail != group.message else ""
            out.append(f"- {code(cell.cell_id)}{said}")
        if len(group.cells) > CELLS_LISTED:
            out.append(f"- and {len(group.cells) - CELLS_LISTED} more ({DETAILS})")
        out.append("")
    if group.infrastructure:
        for kernel in group.kernels:
            out += _console(report, kernel, shown)
    first = group.cells[0]
    return [*out, f"Reproduce: {code(report.repro(first))}", ""]


def _failures_markdown(report: Report, summary: Summary, shown: set[str]) -> list[str]:
    groups = summary.failures
    title = f"## Failures: {_plural(summary.failed_cells, 'cell')}"
    if len(groups) > 1:
        title += f" in {len(groups)} groups"
    out = [title, ""]
    if not groups:
        return [*out, "None.", ""]
    for group in groups[:GROUPS_SHOWN]:
        out += _failure_group(report, group, shown)
    rest = groups[GROUPS_SHOWN:]
    if rest:
        cells = sum(len(g.cells) for g in rest)
        out += [f"{_plural(len(rest), 'more group')} ({_plural(cells, 'cell')}): {DETAILS}.", ""]
    return out


def _loaders_markdown(cells: tuple[Cell, ...], limit: int | None = None) -> list[str]:
    """Each loader case's cell: its command, how it ended, the programs it loaded."""
    if not cells:
        return []
    out = ["", f"## User loaders ({len(cells)})", ""]
    out += ["| cell | command | ended | programs loaded |", "|---|---|---|---|"]
    for cell in cells[:limit]:
        run = cell.loader
        assert run is not None
        programs = "<br>".join(md_escape(program_line(p)) for p in run.programs) or "none"
        command = md_escape(cell.record.program)
        out.append(
            f"| {md_escape(cell.cell_id)} | {command} | {md_escape(loader_ending(run))} "
            f"| {programs} |"
        )
    if limit is not None and len(cells) > limit:
        out += ["", f"{len(cells) - limit} more in {DETAILS}."]
    return out


# -- the details ------------------------------------------------------------------------------


def render_details(report: Report) -> str:
    """details.md: the whole matrix (a column per kernel and config), the kernels that did
    not boot, every failure with its reason, its log's tail and its repro command.  A
    guest console's tail is shown once per kernel."""
    out = _head(report)
    header = ["scenario::case", *(c.label for c in report.columns), "first failing kernel"]
    out.append("| " + " | ".join(md_escape(h) for h in header) + " |")
    out.append("|" + "---|" * len(header))
    for row in report.rows:
        shown = [md_escape(row)]
        for column in report.columns:
            cell = report.cell(row, column)
            shown.append(md_escape(cell.display) if cell else "")
        shown.append(md_escape(report.first_failing_kernel(row) or "—"))
        out.append("| " + " | ".join(shown) + " |")
    consoles: set[str] = set()
    out += _boot_failures_markdown(report, consoles)
    out += _loaders_markdown(report.loader_cells)
    unbooted = {f.kernel for f in boot_failures(report)}
    failures, not_run = [], 0
    for cell in report.failures:  # an unbooted kernel's cells: counted, told once above
        if cell.outcome == "BOOT_FAILED" and cell.record.kernel in unbooted:
            not_run += 1
        else:
            failures.append(cell)
    out += ["", f"## Failures ({len(failures)})", ""]
    if not_run:
        out += [f"{not_run} cells did not run: their kernel did not boot (above).", ""]
    if not failures:
        out += ["None.", ""]
    for cell in failures:
        out += _failure_details(report, cell, consoles)
    return "\n".join(out).rstrip("\n") + "\n"


def _failure_details(report: Report, cell: Cell, consoles: set[str]) -> list[str]:
    out = [f"### {cell.symbol} {md_escape(cell.cell_id)}: {md_escape(cell.outcome)}", ""]
    if cell.reason:
        out += [f"> {md_escape(line) or ' '}" for line in cell.reason.splitlines()] + [""]
    what, text = report.excerpt(cell)
    kernel = cell.record.kernel
    if what == "guest console" and kernel in consoles:
        out += [f"Guest console: the tail of {md_escape(kernel)}'s is shown above.", ""]
    elif text:
        consoles.update([kernel] if what == "guest console" else [])
        out += _block(text, what.capitalize())
    command = report.repro(cell)
    marks = fence(command)
    return [*out, "Reproduce:", "", f"{marks}sh", command, marks, ""]


def _boot_failures_markdown(report: Report, consoles: set[str]) -> list[str]:
    """One entry per kernel that never came up: why, and its console's tail."""
    failures = boot_failures(report)
    if not failures:
        return []
    out = ["", f"## Kernels that did not boot ({len(failures)})", ""]
    for failure in failures:
        out += [f"### {md_escape(failure.kernel)}: {md_escape(failure.outcome)}", ""]
        out += [f"> {md_escape(line) or ' '}" for line in failure.reason.splitlines()]
        if console := report.inside(failure.console_path):
            consoles.add(failure.kernel)
            out += ["", *_block(tail(console), "Guest console")]
        out.append("")
    return out
