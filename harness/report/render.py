"""Reports from a run directory, without a VM: JUnit XML, a Markdown job summary, one static
HTML page and veristat-compatible CSV files.

Everything is read from what harness/results/rundir.py wrote (results.json, or
results.jsonl when the run was killed before the end) plus the verifier and guest logs
next to it.  Reports land in RUN/report/ unless told otherwise; `kitl report RUN_DIR` is
the command.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import shlex
import sys
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.bpf.verifier_log import parse_log
from harness.errors import UsageError, WriteError
from harness.outcome import Outcome
from harness.report import html
from harness.results.rundir import cell_id, label, safe_name, write_atomic
from harness.scenario.expect import kernel_version

FORMATS = ("junit", "markdown", "html", "csv")
RUN_LEVEL = "*"  # scenario (and case, config) of a failure that hit a whole kernel
LOG_EXCERPT_LINES = 20
SYSTEM_OUT_BYTES = 4096

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
_NOT_LOADED = frozenset({Outcome.VERIFIER_REJECTED, Outcome.LOAD_FAILED})
# veristat's default `-o csv` columns: the first name of each stat in its stat_defs table,
# read in tools/testing/selftests/bpf/veristat.c (newer veristat appends more columns; its
# CSV reader takes any subset of known names, so these nine stay comparable with -C).
_STATES = ("total_states", "peak_states", "max_states_per_insn")
_NAMES = ("file_name", "prog_name", "verdict", "duration", "total_insns")
VERISTAT_HEADER = (*_NAMES, *_STATES, "max_mark_read_len")
# the figures a JUnit <testcase> carries as properties, in this order, when the cell has them
_PROPERTIES: tuple[str, ...] = ("insns", "total_states", "peak_states", "load_ms", "ns_per_op")
_PROPERTIES += ("jited_len", "xlated_len")
# characters XML 1.0 cannot carry at all, even escaped (console logs hold ANSI escapes)
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&#])")


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def _number(value: object) -> int | float | None:
    # bool is an int to Python, but never a figure here
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Cell:
    """One cell of results.json, every key optional (older or future runs, killed runs)."""

    scenario: str
    case: str
    kernel: str
    config: str
    libbpf: str
    outcome: str
    reason: str
    kernel_release: str
    program: str
    prog_type: str
    verifier: Mapping[str, Any]
    timings: Mapping[str, Any]
    load_ok: bool | None  # observed.load.ok: None when the case never got to loading
    log_path: str
    cell_id: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cell:
        load = _mapping(_mapping(data.get("observed")).get("load")).get("ok")
        kernel, config = _text(data.get("kernel")), _text(data.get("config"))
        scenario, case = _text(data.get("scenario")), _text(data.get("case"))
        libbpf = _text(data.get("libbpf"))
        outcome = _text(data.get("outcome")) or Outcome.ERROR
        reason = _text(data.get("reason"))
        if not data.get("outcome") and not reason:
            reason = "the cell recorded no outcome"
        return cls(
            scenario=scenario,
            case=case,
            kernel=kernel,
            config=config,
            libbpf=libbpf,
            outcome=outcome,
            reason=reason,
            kernel_release=_text(data.get("kernel_release")),
            program=_text(data.get("program")),
            prog_type=_text(data.get("prog_type")),
            verifier=_mapping(data.get("verifier")),
            timings=_mapping(data.get("timings")),
            load_ok=load if isinstance(load, bool) else None,
            log_path=_text(data.get("log_path")),
            cell_id=_text(data.get("id")) or cell_id(scenario, case, kernel, config, libbpf),
        )

    @property
    def column(self) -> str:
        return label(self.kernel, self.config, self.libbpf)

    @property
    def row(self) -> str:
        return f"{self.scenario}::{self.case}"

    @property
    def run_level(self) -> bool:
        return self.scenario == RUN_LEVEL

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
    def label(self) -> str:
        """Symbol and short word, as a matrix cell shows it."""
        symbol, word = _DISPLAY.get(self.outcome, ("❓", self.outcome.lower()))
        return f"{symbol} {word}"

    def figure(self, key: str) -> int | float | None:
        """A number the cell recorded under `key`, in its verifier stats or its timings."""
        found = _number(self.verifier.get(key))
        return found if found is not None else _number(self.timings.get(key))


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
        return self.inside(cell.log_path)

    def guest_file(self, kernel: str, kind: str) -> Path | None:
        return self.inside(f"guest/{safe_name(kernel)}.{kind}.log")

    def excerpt(
        self, cell: Cell, lines: int = LOG_EXCERPT_LINES, max_bytes: int = 64 * 1024
    ) -> tuple[str, str]:
        """(what, text): the verifier log's tail or, for a failure that killed the kernel
        before any log (a crash, a boot failure), the tail of the guest console."""
        if path := self.log_file(cell):
            return "verifier log", tail(path, lines=lines, max_bytes=max_bytes)
        if cell.category == "infra" and (path := self.guest_file(cell.kernel, "console")):
            return "guest console", tail(path, lines=lines, max_bytes=max_bytes)
        return "", ""

    def repro(self, cell: Cell) -> str:
        return f"kitl repro {shlex.quote(str(self.run_dir))} {shlex.quote(cell.cell_id)}"


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


def load_cells(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(run meta, cells) of a run directory: results.json when it is whole, else the cells
    results.jsonl collected (a killed run), meta then empty.  A cell id seen twice keeps its
    last record (a resumed run appends a cell again) at the place it first appeared."""
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    body: Any = None
    with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
        body = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    records: list[Any]
    if isinstance(body, dict) and isinstance(body.get("cells"), list):
        meta = dict(_mapping(body.get("run")))
        records = body["cells"]
    else:
        meta, records = {}, []
        try:
            lines = (run_dir / "results.jsonl").read_text(encoding="utf-8", errors="replace")
        except OSError:
            raise UsageError(
                f"{run_dir}: not a kitl run directory (no readable results.json or results.jsonl)"
            ) from None
        for line in lines.splitlines():
            # a run killed mid-write leaves a torn last line: skip what does not parse
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
        if lines.strip() and not any(isinstance(r, dict) for r in records):
            raise UsageError(f"{run_dir}/results.jsonl: no cell in it parses as JSON")
    by_id: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if isinstance(record, dict):  # libbpf too: today's ids do not name it
            by_id[(parsed := Cell.from_json(record)).cell_id, parsed.libbpf] = record
    return meta, list(by_id.values())


def _kernel_order(meta: Mapping[str, Any], cells: Iterable[Cell]) -> tuple[str, ...]:
    listed = meta.get("kernels")
    named = [k for k in listed if isinstance(k, str)] if isinstance(listed, list) else []
    releases: dict[str, str] = {}
    for cell in cells:
        if not releases.get(cell.kernel):
            releases[cell.kernel] = cell.kernel_release
    if isinstance(one := meta.get("kernel"), str) and one in releases and not releases[one]:
        releases[one] = _text(meta.get("release"))  # a one-kernel run's meta names its release

    def key(kernel: str) -> tuple[int, tuple[int, int, int], str]:
        try:
            return 0, kernel_version(releases[kernel]), kernel
        except ValueError:
            return 1, (0, 0, 0), kernel  # no release known (a boot failure): after the rest

    rest = sorted((k for k in releases if k not in named), key=key)
    return tuple(k for k in named if k in releases) + tuple(rest)


def build_report(run_dir: Path) -> Report:
    meta, records = load_cells(run_dir)
    cells = tuple(Cell.from_json(r) for r in records)
    kernels = _kernel_order(meta, cells)
    configs: dict[tuple[str, str], None] = {}  # first-seen order, an ordered set
    rows: dict[str, None] = {c.row: None for c in cells if c.run_level}  # run-level first
    for cell in cells:
        configs.setdefault((cell.config, cell.libbpf))
        rows.setdefault(cell.row)
    present = {(c.kernel, c.config, c.libbpf) for c in cells}
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
        release = next((c.kernel_release for c in cells if c.kernel_release), "")
        suite_props = {
            "kernel": column.kernel,
            "config": column.config,
            "libbpf": column.libbpf,
            "kernel_release": release,
            "accel": _text(report.meta.get("accel")),
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
        classname=_xml(cell.scenario),
        name=_xml(f"{cell.case}[{cell.column}]"),
        time=f"{seconds:.3f}",
    )
    props = ET.SubElement(case, "properties")
    fields = {
        "outcome": cell.outcome,
        "prog_type": cell.prog_type,
        "program": cell.program,
        "kernel_release": cell.kernel_release,
    }
    fields.update((name, _text(cell.figure(name))) for name in _PROPERTIES)
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


# -- Markdown ---------------------------------------------------------------------------------


def md_escape(text: str) -> str:
    """Inline Markdown text shown as is: one line, no emphasis, no HTML, `|` kept in cells."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _fence(text: str) -> str:
    # a fence longer than any run of backticks inside, so a log cannot close it
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def render_markdown(report: Report) -> str:
    out = ["# kitl report", "", f"**{md_escape(report.headline())}**", ""]
    meta = [f"run `{report.run_dir}`"] if "`" not in str(report.run_dir) else []
    if report.kernels:
        meta.append("kernels " + ", ".join(md_escape(k) for k in report.kernels))
    for key in ("accel", "libbpf", "started", "finished"):
        if value := _text(report.meta.get(key)):
            meta.append(f"{key} {md_escape(value)}")
    out += [" · ".join(meta), ""]
    header = ["scenario::case", *(c.label for c in report.columns), "first failing kernel"]
    out.append("| " + " | ".join(md_escape(h) for h in header) + " |")
    out.append("|" + "---|" * len(header))
    for row in report.rows:
        shown = [md_escape(row)]
        for column in report.columns:
            cell = report.cell(row, column)
            shown.append(md_escape(cell.label) if cell else "")
        shown.append(md_escape(report.first_failing_kernel(row) or "—"))
        out.append("| " + " | ".join(shown) + " |")
    out += _boot_failures_markdown(report)
    unbooted = {_text(f.get("kernel")) for f in _boot_failures(report)}
    failures, not_run = [], 0
    for cell in report.failures:  # an unbooted kernel's cells: counted, told once above
        if cell.outcome == "BOOT_FAILED" and cell.kernel in unbooted:
            not_run += 1
        else:
            failures.append(cell)
    out += ["", f"## Failures ({len(failures)})", ""]
    if not_run:
        out += [f"{not_run} cells did not run: their kernel did not boot (above).", ""]
    if not failures:
        out += ["None.", ""]
    for cell in failures:
        out += [f"### {cell.symbol} {md_escape(cell.cell_id)}: {md_escape(cell.outcome)}", ""]
        if cell.reason:
            out += [f"> {md_escape(line) or ' '}" for line in cell.reason.splitlines()] + [""]
        what, text = report.excerpt(cell)
        if text:
            fence = _fence(text)
            out += [f"{md_escape(what).capitalize()} (tail):", "", f"{fence}text", text, fence, ""]
        command = report.repro(cell)
        fence = _fence(command)
        out += ["Reproduce:", "", f"{fence}sh", command, fence, ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _boot_failures(report: Report) -> list[Mapping[str, Any]]:
    found = report.meta.get("boot_failures")
    return [_mapping(f) for f in found] if isinstance(found, list) else []


def _boot_failures_markdown(report: Report) -> list[str]:
    """One entry per kernel that never came up: why, and its console's tail."""
    failures = _boot_failures(report)
    if not failures:
        return []
    out = ["", f"## Kernels that did not boot ({len(failures)})", ""]
    for failure in failures:
        kernel = _text(failure.get("kernel"))
        out += [f"### {md_escape(kernel)}: {md_escape(_text(failure.get('outcome')))}", ""]
        out += [f"> {md_escape(line) or ' '}" for line in _text(failure.get("reason")).splitlines()]
        if console := report.inside(_text(failure.get("console_path"))):
            text = tail(console)
            fence = _fence(text)
            out += ["", "Guest console (tail):", "", f"{fence}text", text, fence]
        out.append("")
    return out


# -- veristat CSV -----------------------------------------------------------------------------


def _mark_read(report: Report, cell: Cell) -> int:
    # the engine records no mark_read: read it from the stats line ending the verifier log
    if (value := cell.figure("mark_read")) is not None:
        return int(value)
    if path := report.log_file(cell):
        return parse_log(tail(path, lines=50, max_bytes=8192) + "\n").stats.mark_read or 0
    return 0


def render_csv(report: Report, column: Column) -> str:
    """veristat `-o csv` rows for the programs this column loaded (skipped and infrastructure
    cells never got a verdict).  veristat keys rows by file and program, so a program that
    several cases load appears once, as its first case saw it; rows sorted as veristat does."""
    rows: dict[tuple[str, str], list[str | int]] = {}
    for row in report.rows:
        cell = report.cell(row, column)
        if cell is None or cell.category not in ("pass", "fail"):
            continue
        if cell.load_ok is None and not cell.verifier:
            continue  # never loaded (a failure before loading)
        obj, _, prog = cell.program.partition("/")
        if (obj, prog) in rows:
            continue
        ok = cell.load_ok if cell.load_ok is not None else cell.outcome not in _NOT_LOADED
        insns = cell.figure("insns")
        if insns is None:
            insns = cell.figure("verified_insns")
        figures = [cell.figure("duration_us"), insns]
        figures += [cell.figure(k) for k in _STATES]
        rows[obj, prog] = [obj, prog, "success" if ok else "failure"]
        rows[obj, prog] += [int(f or 0) for f in figures] + [_mark_read(report, cell)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(VERISTAT_HEADER)
    writer.writerows(rows[k] for k in sorted(rows))
    return buffer.getvalue()


# -- writing ----------------------------------------------------------------------------------


def render_all(
    run_dir: Path, out_dir: Path | None = None, *, formats: Collection[str] = FORMATS
) -> list[Path]:
    """Write every report (or those in `formats`) into out_dir, RUN/report/ by default; the
    paths written, in order."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise UsageError(f"unknown report format {sorted(unknown)[0]!r}")
    report = build_report(run_dir)
    out = out_dir if out_dir is not None else run_dir / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the report directory ({exc.strerror})") from None
    files: list[tuple[str, str | bytes]] = []
    if "junit" in formats:
        files.append(("junit.xml", render_junit(report)))
    if "markdown" in formats:
        files.append(("summary.md", render_markdown(report)))
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


def run(args: argparse.Namespace) -> int:
    """`kitl report`: print the paths written.  With --format markdown, stdout carries the
    summary itself (for `>> $GITHUB_STEP_SUMMARY`) and the path goes to stderr."""
    formats = FORMATS if args.format == "all" else (args.format,)
    written = render_all(args.run_dir, args.output, formats=formats)
    if args.format == "markdown":
        sys.stdout.write(written[0].read_text(encoding="utf-8"))
        print(written[0], file=sys.stderr)
        return 0
    for path in written:
        print(path)
    return 0
