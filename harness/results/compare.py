"""The release gate: `kitl compare BASE NEW` diffs two runs and fails on regressions.

Cells are matched by identity (scenario, case, kernel, config, libbpf-or-""), never by
kernel_release, so a Debian ABI bump of the same kernel line still compares.  What gates:

  verdict-flip      BASE PASSED, NEW failed (FAILED, VERIFIER_REJECTED, ... or unknown)
  infrastructure    BASE PASSED, NEW BOOT_FAILED/KERNEL_CRASH/VM_LOST/TIMED_OUT/ERROR
  insns-growth      verifier insns (verified_insns, else insns) grew > --max-insns-growth
  states-growth     verifier total_states grew > --max-states-growth
  load-time-growth  timings.load_ms grew > --max-load-time-growth (off unless given)
  removed           a BASE cell missing from NEW, only with --fail-on-removed
  empty-run         NEW holds no cells at all (a run that ran nothing must not look green)

Either side may be a veristat CSV (`veristat -o csv`, any version): its rows are cells of
the object's scenario and the program's case that stand for every kernel, config and loader
of the other side (harness.results.veristat).

Reported, never gating: improvement (failure -> PASSED), skipped (SKIPPED on either side,
outcomes differ), outcome-change (one failure became another), added, growth within the
threshold or from 0/missing, and *-shrink.  Growth exactly at the threshold passes.
Verifier figures are compared only when both sides have the same outcome (on a flip the
verdict is the story; a rejected load stops part-way) and are grouped per program:
cases loading the same program on the same kernel/config with the same figures make one
entry whose `cells` lists them.  Load time is per cell.  A figure missing in NEW is not
reported.

`to_json()` (schema 1) is stable:
  {"schema": 1, "gate": "pass"|"fail", "headline": str,
   "thresholds": {"max_insns_growth": float, "max_states_growth": float,
                  "max_load_time_growth": float|null, "fail_on_removed": bool},
   "counts": {"base_cells", "new_cells", "compared", "gating": int, "kinds": {kind: int}},
   "entries": [{"kind": str, "key": str,
                "identity": {"scenario", "kernel", "config", "libbpf", and "case" or "program"},
                "base": str|number|null, "new": str|number|null, "change": str,
                "gating": bool, "verdict": str, "reason": str, "cells": [cell key, ...]}]}
Entries are ordered gating first, then by kind (the order above), then by key.  The table
and Markdown lead with the verdict, then list regressions, then improvements, then the rest;
cells in one run only (added, removed) are counted there, never listed one by one.
Exit status of `run()`: 0 gate passes, 1 gate fails, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from harness.errors import KitlError, UsageError
from harness.outcome import EXIT_FAILED, EXIT_OK, Outcome
from harness.results import veristat
from harness.results.record import CellRecord, cell_id
from harness.results.rundir import write_atomic
from harness.results.runs import Cells, load_run

COMPARE_SCHEMA = 1
FORMATS = ("table", "markdown", "json")
# Every kind, in report order, with its (singular, plural) headline label.
KINDS: dict[str, tuple[str, str]] = {
    "verdict-flip": ("verdict flip", "verdict flips"),
    "infrastructure": ("infrastructure failure", "infrastructure failures"),
    "insns-growth": ("insns growth", "insns growth"),
    "states-growth": ("states growth", "states growth"),
    "load-time-growth": ("load-time growth", "load-time growth"),
    "removed": ("removed", "removed"),
    "empty-run": ("empty run", "empty runs"),
    "improvement": ("improvement", "improvements"),
    "skipped": ("skip change", "skip changes"),
    "outcome-change": ("changed failure", "changed failures"),
    "added": ("added", "added"),
    "insns-shrink": ("insns shrink", "insns shrink"),
    "states-shrink": ("states shrink", "states shrink"),
    "load-time-shrink": ("load-time shrink", "load-time shrink"),
}
_ORDER = {kind: i for i, kind in enumerate(KINDS)}
_PERCENT = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,9})?|\.\d{1,9})\s*%?\s*$")
Metric = Literal["insns", "states", "load-time"]
Status = Literal["pass", "skip", "fail", "infra"]
_VERIFIER_METRICS: tuple[Metric, ...] = ("insns", "states")


# --- identity and loading --------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class CellKey:
    scenario: str
    case: str
    kernel: str
    config: str
    libbpf: str = ""

    def __str__(self) -> str:
        return cell_id(self.scenario, self.case, self.kernel, self.config, self.libbpf)


@dataclass(frozen=True, order=True)
class ProgramKey:
    scenario: str
    program: str
    kernel: str
    config: str
    libbpf: str = ""

    def __str__(self) -> str:
        return cell_id(self.scenario, self.program, self.kernel, self.config, self.libbpf)


def cell_key(cell: CellRecord) -> CellKey:
    """A cell's identity; missing fields read as "" so junk still gets a (shared) key."""
    return CellKey(cell.scenario, cell.case, cell.kernel, cell.config, cell.libbpf)


def load_results(path: Path) -> Cells:
    """The cells of a run directory, a results.json or a results.jsonl (harness.results.runs
    reads them, by one set of rules), or of a veristat CSV (harness.results.veristat)."""
    return veristat.read(path) if veristat.is_veristat_csv(path) else load_run(path).cells


def load_sides(base: Path, new: Path) -> tuple[Cells, Cells]:
    """Both sides' cells.  A veristat CSV names no kernel: against a kitl run, its rows
    stand for the program on every kernel, config and loader the run has."""
    base_cells, new_cells = load_results(base), load_results(new)
    base_csv, new_csv = veristat.is_veristat_csv(base), veristat.is_veristat_csv(new)
    if base_csv and not new_csv:
        base_cells = _on_every_column(base_cells, new_cells)
    elif new_csv and not base_csv:
        new_cells = _on_every_column(new_cells, base_cells)
    return base_cells, new_cells


def _on_every_column(rows: Cells, run: Cells) -> Cells:
    columns = sorted({(c.kernel, c.config, c.libbpf) for c in run})
    return [
        replace(row, kernel=kernel, config=config, libbpf=libbpf)
        for row in rows
        for kernel, config, libbpf in columns
    ]


# --- thresholds ------------------------------------------------------------------------------


def parse_percent(text: str, option: str = "threshold") -> float:
    """Parse a percentage: "10%", "10" and "0.5%" give 10.0, 10.0 and 0.5."""
    m = _PERCENT.match(text)
    if not m:
        raise UsageError(f"{option}: {text!r} is not a percentage like 10% or 0.5%")
    return float(m.group(1))


@dataclass(frozen=True)
class Thresholds:
    max_insns_growth: float = 10.0
    max_states_growth: float = 25.0
    max_load_time_growth: float | None = None  # off: load time is noisy under TCG
    fail_on_removed: bool = False

    def __post_init__(self) -> None:
        for name in ("max_insns_growth", "max_states_growth", "max_load_time_growth"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise UsageError(f"{name}: {value!r} is not a percentage >= 0")

    def limit(self, metric: Metric) -> float | None:
        value: float | None = getattr(self, f"max_{metric.replace('-', '_')}_growth")
        return value


# --- comparison ------------------------------------------------------------------------------

Value = str | int | float | None
Figure = int | float | None


@dataclass(frozen=True)
class Entry:
    kind: str
    identity: CellKey | ProgramKey
    base: Value
    new: Value
    change: str
    gating: bool
    verdict: str
    reason: str = ""
    cells: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return str(self.identity)


@dataclass(frozen=True)
class Comparison:
    thresholds: Thresholds
    entries: tuple[Entry, ...]
    base_cells: int
    new_cells: int
    compared: int

    @property
    def gating(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.gating)

    @property
    def passed(self) -> bool:
        return not self.gating

    @property
    def exit_status(self) -> int:
        return EXIT_OK if self.passed else EXIT_FAILED


def _status(outcome: str) -> Status:
    try:
        known = Outcome(outcome)
    except ValueError:
        return "fail"  # an outcome this harness does not know must never read as a pass
    if known is Outcome.PASSED:
        return "pass"
    if known is Outcome.SKIPPED:
        return "skip"
    return "infra" if known.is_infrastructure else "fail"


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _verdict(key: CellKey, base: CellRecord, new: CellRecord) -> Entry | None:
    was, now = base.outcome_text or "UNKNOWN", new.outcome_text or "UNKNOWN"
    if was == now:
        return None
    b, n = _status(was), _status(now)
    change = f"{was} → {now}"
    reason = _one_line(new.reason)
    cells = (str(key),)
    if "skip" in (b, n):
        return Entry("skipped", key, was, now, change, False, "skipped (not gated)", reason, cells)
    if b == "pass" and n == "infra":
        verdict = "REGRESSION (infrastructure)"
        return Entry("infrastructure", key, was, now, change, True, verdict, reason, cells)
    if b == "pass":
        return Entry("verdict-flip", key, was, now, change, True, "REGRESSION", reason, cells)
    if n == "pass":
        return Entry("improvement", key, was, now, change, False, "improvement", "", cells)
    verdict = "changed failure (not gated)"
    return Entry("outcome-change", key, was, now, change, False, verdict, reason, cells)


def _number(value: Figure) -> Figure:
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def figure(cell: CellRecord, metric: Metric) -> Figure:
    """One comparable figure of a cell, or None when it is absent or junk."""
    if metric == "insns":
        found = _number(cell.verifier.verified_insns)
        return found if found is not None else _number(cell.verifier.insns)
    if metric == "states":
        return _number(cell.verifier.total_states)
    return _number(cell.timings.load_ms)


def _num(value: float, sign: str = "") -> str:
    # Counts stay integers (a :g format would turn 1234567 into 1.23457e+06).
    return f"{value:{sign}.1f}" if isinstance(value, float) else f"{value:{sign}d}"


def _metric(
    metric: Metric,
    identity: CellKey | ProgramKey,
    was: float | None,
    now: float | None,
    t: Thresholds,
) -> Entry | None:
    limit = t.limit(metric)
    if now is None or was == now:  # a figure gone from NEW is not news: the harness changed
        return None
    if metric == "load-time" and not was:
        return None  # a BASE that timed nothing (a veristat CSV, an older run) is no baseline
    name, unit = ("load time", "ms") if metric == "load-time" else (metric, "")
    kind = f"{metric}-growth" if was is None or now > was else f"{metric}-shrink"
    if not was:  # from 0 or from nothing: no ratio to gate on
        change = f"{name} {_num(now)}{unit} (was {'0' if was == 0 else 'missing'})"
        return Entry(kind, identity, was, now, change, False, "new figure (not gated)")
    pct = (now - was) / was * 100
    change = f"{name} {_num(now - was, '+')}{unit} ({pct:+.1f}%)"
    # Multiplied out rather than divided, so growth exactly at the limit is not a regression.
    if limit is not None and (now - was) * 100 > limit * was:
        return Entry(kind, identity, was, now, change, True, f"REGRESSION ({name} > +{limit:g}%)")
    if metric == "load-time" and (limit is None or abs(pct) <= limit):
        return None  # timing jitter is not news
    verdict = "shrink" if now < was else f"within +{limit:g}%"
    return Entry(kind, identity, was, now, change, False, verdict)


def _index(cells: Iterable[CellRecord]) -> dict[CellKey, CellRecord]:
    return {cell_key(c): c for c in cells}  # a repeated key: the last one wins, as in jsonl


def _program_key(key: CellKey, cell: CellRecord) -> CellKey | ProgramKey:
    program = cell.program
    if not program:
        return key
    return ProgramKey(key.scenario, program, key.kernel, key.config, key.libbpf)


def compare(
    base: Iterable[CellRecord], new: Iterable[CellRecord], thresholds: Thresholds
) -> Comparison:
    """Classify every cell identity of BASE and NEW (pure)."""
    old, cur = _index(base), _index(new)
    entries: list[Entry] = []
    # Verifier figures per program: (metric, identity, base, new) -> the cells that agree.
    grouped: dict[tuple[Metric, CellKey | ProgramKey, Figure, Figure], list[str]] = {}
    gate_removed = thresholds.fail_on_removed
    for key in sorted(old.keys() | cur.keys()):
        cells = (str(key),)
        if key not in cur:
            verdict = "REGRESSION (removed)" if gate_removed else "removed"
            was = old[key].outcome_text
            entries.append(
                Entry("removed", key, was, None, "removed", gate_removed, verdict, "", cells)
            )
            continue
        if key not in old:
            now = cur[key].outcome_text
            entries.append(Entry("added", key, None, now, "added", False, "added", "", cells))
            continue
        b, n = old[key], cur[key]
        flip = _verdict(key, b, n)
        if flip is not None:
            entries.append(flip)
            continue
        for metric in _VERIFIER_METRICS:
            group = (metric, _program_key(key, n), figure(b, metric), figure(n, metric))
            grouped.setdefault(group, []).append(str(key))
        timing = _metric(
            "load-time", key, figure(b, "load-time"), figure(n, "load-time"), thresholds
        )
        if timing is not None:
            entries.append(replace(timing, cells=cells))
    for (metric, identity, before, after), names in grouped.items():
        found = _metric(metric, identity, before, after, thresholds)
        if found is not None:
            entries.append(replace(found, cells=tuple(names)))
    if not cur:
        verdict = "REGRESSION (new run has no cells)"
        empty = CellKey("(new run)", "*", "*", "*")
        entries.append(Entry("empty-run", empty, None, None, "no cells", True, verdict))
    entries.sort(key=lambda e: (not e.gating, _ORDER[e.kind], e.key))
    return Comparison(thresholds, tuple(entries), len(old), len(cur), len(old.keys() & cur.keys()))


# --- output ----------------------------------------------------------------------------------


def _counted(kinds: Iterable[str]) -> str:
    counts = Counter(kinds)
    return ", ".join(
        f"{counts[k]} {KINDS[k][0] if counts[k] == 1 else KINDS[k][1]}" for k in KINDS if counts[k]
    )


def _cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def headline(c: Comparison) -> str:
    """ "gate: FAIL — 2 regressions (1 verdict flip, 1 insns growth)" or "gate: PASS — ..."."""
    gating = c.gating
    if gating:
        noun = "regression" if len(gating) == 1 else "regressions"
        return f"gate: FAIL — {len(gating)} {noun} ({_counted(e.kind for e in gating)})"
    others = _counted(e.kind for e in c.entries)
    tail = f"; {others}" if others else ""
    return f"gate: PASS — no regressions ({_cells(c.compared)} compared{tail})"


def _row(e: Entry) -> tuple[str, str, str, str, str]:
    def show(value: Value) -> str:
        if value is None:
            return "-"
        if isinstance(value, str):
            return value
        return _num(value) + ("ms" if e.kind.startswith("load-time") else "")

    # a cell id, as everywhere: a program's figures name the first cell that loads it
    first = e.cells[0] if e.cells else e.key
    key = first if len(e.cells) <= 1 else f"{first} (+{len(e.cells) - 1} cells)"
    return key, show(e.base), show(e.new), e.change, e.verdict


_COUNTED = ("removed", "added")  # cells in one run only: counted, never listed one by one


def sections(c: Comparison) -> list[tuple[str, list[Entry]]]:
    """The entries as reports show them, in order: regressions, improvements, the other
    changes (cells only in one run are counted apart: `counted_cells`)."""
    listed = [e for e in c.entries if e.kind not in _COUNTED]
    better = [e for e in listed if e.kind == "improvement"]
    rest = [e for e in listed if not e.gating and e.kind != "improvement"]
    named = [("Regressions", [e for e in listed if e.gating]), ("Improvements", better)]
    return [(t, entries) for t, entries in [*named, ("Other changes", rest)] if entries]


def counted_cells(c: Comparison) -> str:
    """'3 cells removed (gating), 12 added': what is in one run only, counted."""
    parts: list[str] = []
    for kind in _COUNTED:
        found = [e for e in c.entries if e.kind == kind]
        if found:
            gating = " (gating)" if any(e.gating for e in found) else ""
            parts.append(f"{_cells(len(found)) if not parts else len(found)} {kind}{gating}")
    return ", ".join(parts)


def format_table(c: Comparison) -> str:
    """Aligned plain text: the headline first, then regressions, improvements and the other
    changes, each a table (a flip's reason indented below its row); cells in one run only
    are counted."""
    lines = [headline(c)]
    for title, entries in sections(c):
        header = ("cell", "base", "new", "change", "verdict")
        rows = [_row(e) for e in entries]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(row: tuple[str, ...], widths: list[int] = widths) -> str:
            return "  ".join(col.ljust(w) for col, w in zip(row, widths, strict=True)).rstrip()

        lines += [
            "",
            f"{title} ({len(entries)}):",
            line(header),
            "  ".join("-" * w for w in widths),
        ]
        for row, entry in zip(rows, entries, strict=True):
            lines.append(line(row))
            if entry.reason:
                lines.append(f"    {entry.reason}")
    if counted := counted_cells(c):
        lines += ["", f"In one run only: {counted}."]
    if not c.entries:
        lines.append(f"no differences ({_cells(c.compared)} compared)")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(entries: Iterable[Entry]) -> list[str]:
    lines = ["| cell | base | new | change | verdict |", "|---|---|---|---|---|"]
    for e in entries:
        key, base, new, change, verdict = _row(e)
        if e.reason:
            change = f"{change}: {e.reason}"
        cells = [f"`{_md(key)}`", _md(base), _md(new), _md(change), _md(verdict)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_markdown(c: Comparison) -> str:
    """GitHub flavoured: the headline first, regressions and improvements in the open, the
    other changes folded, cells in one run only counted."""
    t = c.thresholds
    load = "off" if t.max_load_time_growth is None else f"+{t.max_load_time_growth:g}%"
    removed = "gating" if t.fail_on_removed else "not gating"
    lines = [
        f"**{headline(c)}**",
        "",
        f"{_cells(c.compared)} compared (base {c.base_cells}, new {c.new_cells}); limits: insns "
        f"+{t.max_insns_growth:g}%, states +{t.max_states_growth:g}%, load time {load}; "
        f"removed cells {removed}.",
    ]
    for title, entries in sections(c):
        if title == "Other changes":
            noun = "change" if len(entries) == 1 else "changes"
            summary = f"{len(entries)} other {noun} (not gating)"
            lines += ["", f"<details><summary>{summary}</summary>", "", *_md_table(entries)]
            lines += ["", "</details>"]
        else:
            lines += ["", f"### {title} ({len(entries)})", "", *_md_table(entries)]
    if counted := counted_cells(c):
        lines += ["", f"In one run only: {counted}."]
    if not c.entries:
        lines += ["", "No differences."]
    return "\n".join(lines) + "\n"


def to_json(c: Comparison) -> dict[str, Any]:
    """The stable machine-readable form (schema in the module docstring)."""
    kinds = dict(Counter(e.kind for e in c.entries))
    return {
        "schema": COMPARE_SCHEMA,
        "gate": "pass" if c.passed else "fail",
        "headline": headline(c),
        "thresholds": asdict(c.thresholds),
        "counts": {
            "base_cells": c.base_cells,
            "new_cells": c.new_cells,
            "compared": c.compared,
            "gating": len(c.gating),
            "kinds": kinds,
        },
        # asdict turns the identity into a mapping; "kind" and "key" lead each entry.
        "entries": [
            {"kind": e.kind, "key": e.key, **asdict(e), "cells": list(e.cells)} for e in c.entries
        ],
    }


def render(c: Comparison, fmt: str) -> str:
    if fmt == "markdown":
        return format_markdown(c)
    if fmt == "json":
        return json.dumps(to_json(c), indent=2, ensure_ascii=False) + "\n"
    return format_table(c)


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `kitl compare BASE NEW`; thresholds are parsed in run() so a bad value is
    a one-line usage error like every other."""
    sides = "run dir, results.json(l) or veristat CSV"
    parser.add_argument("base", type=Path, metavar="BASE", help=sides)
    parser.add_argument("new", type=Path, metavar="NEW", help=sides)
    for name, default, what in (
        ("insns", "10%", "verifier insns growth per program and kernel"),
        ("states", "25%", "verifier total_states growth"),
        ("load-time", None, "load time growth"),
    ):
        shown = f"default {default}" if default else "default off: noisy under TCG"
        parser.add_argument(
            f"--max-{name}-growth",
            default=default,
            metavar="P",
            help=f"{what} that fails the gate ({shown.replace('%', '%%')})",
        )
    parser.add_argument(
        "--fail-on-removed", action="store_true", help="cells in BASE but not in NEW fail the gate"
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="default: table")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the report to FILE (atomically)",
    )


@dataclass(frozen=True)
class CompareRequest:
    """`kitl compare BASE NEW`, as its options said."""

    base: Path
    new: Path
    thresholds: Thresholds
    format: str = "table"
    output: Path | None = None


def thresholds_of(values: Mapping[str, object]) -> Thresholds:
    """Thresholds from add_arguments()'s options (by dest); one left unset keeps its default.
    A bad percentage is a UsageError naming the option."""
    changes: dict[str, Any] = {"fail_on_removed": bool(values.get("fail_on_removed"))}
    for name in ("insns", "states", "load-time"):
        field = f"max_{name.replace('-', '_')}_growth"
        if (value := values.get(field)) is not None:
            changes[field] = parse_percent(str(value), f"--max-{name}-growth")
    return Thresholds(**changes)


def run(request: CompareRequest) -> int:
    """`kitl compare`: 0 when the gate passes, 1 when it fails, 2 on a usage error."""
    try:
        result = compare(*load_sides(request.base, request.new), request.thresholds)
        text = render(result, request.format)
        if request.output is not None:
            write_atomic(request.output, text)
    except KitlError as exc:
        print(f"kitl: {exc}", file=sys.stderr)
        return exc.exit_code
    sys.stdout.write(text)
    return result.exit_status
