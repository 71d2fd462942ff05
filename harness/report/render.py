"""Reports from a run directory, without a VM: JUnit XML, a Markdown job summary and its
details (harness.report.markdown), one static HTML page and veristat-compatible CSV files.

Everything is read from what harness/results/rundir.py wrote (results.json, or
results.jsonl when the run was killed before the end) plus the verifier and guest logs
next to it.  Reports land in RUN/report/ unless told otherwise; `kitl report RUN_DIR` is
the command.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from harness.bpf.verifier_log import parse_log
from harness.errors import UsageError, WriteError
from harness.outcome import EXIT_OK
from harness.report import github, html
from harness.report.markdown import DETAILS, render_details, render_summary
from harness.report.model import RUN_LEVEL, Cell, Column, Report, build_report, tail
from harness.report.summary import summarize
from harness.results import veristat
from harness.results.record import text_of
from harness.results.rundir import safe_name, write_atomic

FORMATS = ("junit", "markdown", "html", "csv")
SYSTEM_OUT_BYTES = 4096

# the figures a JUnit <testcase> carries as properties, in this order, when the cell has them
_PROPERTIES: tuple[str, ...] = ("insns", "total_states", "peak_states", "load_ms", "ns_per_op")
_PROPERTIES += ("jited_len", "xlated_len")
# characters XML 1.0 cannot carry at all, even escaped (console logs hold ANSI escapes)
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# -- JUnit XML --------------------------------------------------------------------------------


def _xml(text: str) -> str:
    return _XML_ILLEGAL.sub("\ufffd", text)


def render_junit(report: Report) -> bytes:
    """One <testsuite> per kernel-config column, one <testcase> per cell."""
    root = ET.Element("testsuites", name="kitl")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    total_time = 0.0
    for column in report.columns:
        cells = [c for r in report.rows if (c := report.cell(r, column))]
        suite = ET.SubElement(root, "testsuite", name=_xml(column.label))
        props = ET.SubElement(suite, "properties")
        release = next((c.record.kernel_release for c in cells if c.record.kernel_release), "")
        suite_props = {
            "kernel": column.kernel,
            "config": column.config,
            "libbpf": column.libbpf,
            "kernel_release": release,
            "accel": text_of(report.meta.get("accel")),
        }
        for name, text in suite_props.items():
            if text:
                ET.SubElement(props, "property", name=name, value=_xml(text))
        counts = dict.fromkeys(totals, 0)
        suite_time = 0.0
        for cell in cells:
            counts["tests"] += 1
            suite_time += _testcase(report, suite, cell, counts)
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{suite_time:.3f}")
        total_time += suite_time
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    buffer = io.BytesIO()
    ET.ElementTree(root).write(buffer, encoding="utf-8", xml_declaration=True)
    return buffer.getvalue() + b"\n"


def _testcase(report: Report, suite: ET.Element, cell: Cell, counts: dict[str, int]) -> float:
    seconds = float(cell.figure("case_s") or 0.0)
    case = ET.SubElement(
        suite,
        "testcase",
        classname=_xml(cell.record.scenario),
        name=_xml(f"{cell.record.case}[{cell.column}]"),
        time=f"{seconds:.3f}",
    )
    props = ET.SubElement(case, "properties")
    fields = {
        "outcome": cell.outcome,
        "prog_type": cell.record.prog_type,
        "program": cell.record.program,
        "kernel_release": cell.record.kernel_release,
    }
    fields.update((name, text_of(cell.figure(name))) for name in _PROPERTIES)
    for name, value in fields.items():
        if value:
            ET.SubElement(props, "property", name=name, value=_xml(value))
    tag = {"fail": "failure", "infra": "error", "skip": "skipped"}.get(cell.category)
    if tag is not None:
        counts[tag if tag == "skipped" else f"{tag}s"] += 1
        element = ET.SubElement(case, tag, message=_xml(cell.reason or cell.outcome))
    if tag in ("failure", "error"):
        element.set("type", cell.outcome)
        element.text = _xml(f"{cell.reason or cell.outcome}\nrepro: {report.repro(cell)}")
        what, text = report.excerpt(cell, lines=10_000, max_bytes=SYSTEM_OUT_BYTES)
        if text:
            ET.SubElement(case, "system-out").text = _xml(f"[{what}, tail]\n{text}")
    return seconds


# -- veristat CSV -----------------------------------------------------------------------------


def _from_log(report: Report, cell: Cell, row: veristat.Row) -> veristat.Row:
    """A record written before cells kept mark_read and the max stack depth: read them
    from the statistics that end the cell's verifier log."""
    verifier = cell.record.verifier
    path = report.log_file(cell)
    if (verifier.mark_read is not None and verifier.max_stack_depth is not None) or not path:
        return row
    stats = parse_log(tail(path, lines=50, max_bytes=8192) + "\n").stats
    figures = dict(row.figures)
    figures["max_mark_read_len"] = figures["max_mark_read_len"] or stats.mark_read or 0
    figures["max_stack_depth"] = figures["max_stack_depth"] or stats.stack_depth_max or 0
    return replace(row, figures=figures)


def render_csv(report: Report, column: Column) -> str:
    """veristat `-o csv` for the programs this column loaded or saw fail (skipped and
    infrastructure cells never got a verdict): harness.results.veristat's rows."""
    rows = []
    for name in report.rows:
        cell = report.cell(name, column)
        if cell is None or cell.category not in ("pass", "fail"):
            continue
        row = veristat.row_of(cell.record)
        if row is not None:
            rows.append(_from_log(report, cell, row))
    return veristat.render(rows)


# -- writing ----------------------------------------------------------------------------------


def render_all(
    run_dir: Path, out_dir: Path | None = None, *, formats: Collection[str] = FORMATS
) -> list[Path]:
    """Write every report (or those in `formats`) into out_dir, RUN/report/ by default; the
    paths written, in order."""
    return write_reports(build_report(run_dir), out_dir, formats=formats)


def write_reports(
    report: Report, out_dir: Path | None = None, *, formats: Collection[str] = FORMATS
) -> list[Path]:
    """render_all's writing, of a report already built."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise UsageError(f"unknown report format {sorted(unknown)[0]!r}")
    out = out_dir if out_dir is not None else report.run_dir / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the report directory ({exc.strerror})") from None
    files: list[tuple[str, str | bytes]] = []
    if "junit" in formats:
        files.append(("junit.xml", render_junit(report)))
    if "markdown" in formats:
        files.append(("summary.md", render_summary(report, summarize(report))))
        files.append((DETAILS, render_details(report)))
    if "html" in formats:
        files.append(("index.html", html.render_html(report, out)))
    if "csv" in formats:
        files += [
            (f"veristat-{safe_name(c.label)}.csv", render_csv(report, c))
            for c in report.columns
            if c.config != RUN_LEVEL  # a run-level column holds no program
        ]
    try:
        return [write_atomic(out / name, data) for name, data in files]
    except (WriteError, UsageError) as exc:  # the same class: whose problem it is
        raise type(exc)(f"{out}: cannot write the report ({exc})") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a kitl run directory")
    parser.add_argument(
        "--output", "-o", type=Path, metavar="DIR", help="where to write (default: RUN_DIR/report)"
    )
    parser.add_argument(
        "--format",
        choices=("all", *FORMATS),
        default="all",
        help="which report to write (default: all)",
    )


def run(run_dir: Path, output: Path | None = None, format_: str = "all") -> int:
    """`kitl report`: print the paths written.  With --format markdown, stdout carries the
    summary itself (for `>> $GITHUB_STEP_SUMMARY`) and the path goes to stderr.  Under
    GitHub Actions, the failures' annotations go to stderr (the runner reads both)."""
    formats = FORMATS if format_ == "all" else (format_,)
    report = build_report(run_dir)
    written = write_reports(report, output, formats=formats)
    if github.enabled():
        for line in github.lines(report, summarize(report)):
            print(line, file=sys.stderr)
    if format_ == "markdown":
        sys.stdout.write(written[0].read_text(encoding="utf-8"))
        print(written[0], file=sys.stderr)
        return EXIT_OK
    for path in written:
        print(path)
    return EXIT_OK
