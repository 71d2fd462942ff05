"""GitHub Actions annotations for a run's failures: `::error file=F,line=N::message` at the
scenario line of each failing case, so a pull request shows them next to the YAML.

Printed when GITHUB_ACTIONS is "true" (by `kitl run`/`kitl verify` at the end, and by
`kitl report`).  GitHub shows at most 10 error annotations of a step, so past 9 the rest
are one annotation that counts them.  One case failing on several kernels is one
annotation; a kernel that ran nothing is one, without a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from harness.report.model import Cell, Report
from harness.report.summary import Summary

MAX_ANNOTATIONS = 10  # GitHub's limit of error annotations per step
MESSAGE_CHARS = 300


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get("GITHUB_ACTIONS") == "true"


def _data(text: str) -> str:
    # a workflow command's message: only %, CR and LF are special
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def command(message: str, *, file: str = "", line: int | None = None, title: str = "") -> str:
    """One `::error ...::message` line."""
    props = [f"file={_property(file)}"] if file else []
    props += [f"line={line}"] if file and line else []
    props += [f"title={_property(title)}"] if title else []
    head = "::error " + ",".join(props) if props else "::error"
    return f"{head}::{_data(message)}"


def _where(path: str, workspace: str) -> str:
    """A scenario's path as GitHub matches it: relative to the checkout when inside it."""
    if not path or not workspace:
        return path
    try:
        return str(Path(path).relative_to(workspace))
    except ValueError:
        return path


def _first_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= MESSAGE_CHARS else first[: MESSAGE_CHARS - 1] + "…"


def _case_annotation(cells: list[Cell], workspace: str) -> str:
    first = cells[0].record
    outcomes = dict.fromkeys(c.outcome for c in cells)
    labels = ", ".join(c.record.label for c in cells)
    reason = _first_line(cells[0].reason)
    message = f"{'/'.join(outcomes)} on {labels}" + (f": {reason}" if reason else "")
    return command(
        message,
        file=_where(first.scenario_file, workspace),
        line=first.scenario_line,
        title=f"kitl: {first.scenario}::{first.case}",
    )


def lines(report: Report, summary: Summary, environ: Mapping[str, str] | None = None) -> list[str]:
    """The annotation lines of a run's failures, at most MAX_ANNOTATIONS."""
    workspace = (os.environ if environ is None else environ).get("GITHUB_WORKSPACE", "")
    found = [
        command(f"{d.outcome}: {_first_line(d.reason)}", title=f"kitl: {d.kernel} ran no cell")
        for d in summary.down
    ]
    cases: dict[tuple[str, str, str], list[Cell]] = {}
    for group in summary.failures:
        for cell in group.cells:
            key = (cell.record.scenario_file, cell.record.scenario, cell.record.case)
            cases.setdefault(key, []).append(cell)
    order = {c.cell_id: n for n, c in enumerate(report.cells)}
    for cells in sorted(cases.values(), key=lambda cs: min(order.get(c.cell_id, 0) for c in cs)):
        found.append(
            _case_annotation(sorted(cells, key=lambda c: order.get(c.cell_id, 0)), workspace)
        )
    if len(found) <= MAX_ANNOTATIONS:
        return found
    kept = found[: MAX_ANNOTATIONS - 1]
    rest = len(found) - len(kept)
    more = f"{rest} more failing cases: the job summary (kitl report) lists them all"
    return [*kept, command(more, title="kitl: more failures")]
