"""veristat's CSV, both ways: a cell as a row of `veristat -o csv` (the reports write one
file per kernel column, which `veristat -C` compares with veristat's own output in either
direction), and a veristat CSV read as cells (so `kitl compare` takes one as either side:
a project that gates on veristat keeps its history).

The columns are veristat's default `-o csv` columns, read in tools/testing/selftests/bpf/
veristat.c of Debian's linux-source-7.3 (default_csv_output_spec, the first name of each
stat in stat_defs).  Its reader takes any subset of the stats it knows, by any of their
names, in any order, so a CSV of an older veristat (9 columns) reads too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError
from harness.outcome import Outcome
from harness.results.record import CellRecord, Observed, Verifier
from harness.scenario.objects import scenario_name

COLUMNS = (
    "file_name", "prog_name", "verdict", "duration", "total_insns", "total_states",
    "peak_states", "max_states_per_insn", "max_mark_read_len", "prog_size",
    "prog_size_jited", "prog_type", "attach_type", "stack_depth", "max_stack_depth",
    "mem_peak",
)  # fmt: skip
# every name veristat's reader takes for a stat (stat_defs[].names), to the column's
_ALIASES = {
    "filename": "file_name", "file": "file_name", "progname": "prog_name",
    "prog": "prog_name", "dur": "duration", "insns": "total_insns",
    "states": "total_states", "mark_read": "max_mark_read_len", "stack": "stack_depth",
}  # fmt: skip
# a column's figure in a cell's verifier record
_FIGURES = {
    "duration": "duration_us",
    "total_insns": "insns",
    "total_states": "total_states",
    "peak_states": "peak_states",
    "max_states_per_insn": "max_states_per_insn",
    "max_mark_read_len": "mark_read",
    "prog_size": "insn_cnt",
    "prog_size_jited": "jited_len",
    "stack_depth": "stack_depth",
    "max_stack_depth": "max_stack_depth",
}
_NO_ATTACH_TYPE = "cgroup_inet_ingress"  # libbpf_bpf_attach_type_str(0)
NOT_LOADED = frozenset({Outcome.VERIFIER_REJECTED, Outcome.LOAD_FAILED})


@dataclass(frozen=True)
class Row:
    """One program as veristat reports it."""

    file_name: str  # the object's file name, as veristat prints it ("x.bpf.o")
    prog_name: str
    success: bool
    figures: dict[str, int]  # by column name; mem_peak -1: not measured
    prog_type: str = "N/A"  # libbpf's names ("xdp", "tracing")
    attach_type: str = "N/A"

    def value(self, column: str) -> str | int:
        """One column's value as veristat prints it."""
        return dict(zip(COLUMNS, self.values(), strict=True))[column]

    def values(self) -> list[str | int]:
        head: list[str | int] = [self.file_name, self.prog_name]
        head.append("success" if self.success else "failure")
        figures = [self.figures.get(c, 0) for c in COLUMNS[3:11]]
        tail = [self.figures.get(c, 0) for c in ("stack_depth", "max_stack_depth")]
        return [*head, *figures, self.prog_type, self.attach_type, *tail, -1]


def loaded(cell: CellRecord) -> bool | None:
    """Whether the cell's program loaded; None when the cell never got to a verdict
    (skipped, the guest failed, or a failure before the load)."""
    if cell.observed.load_ok is not None:
        return cell.observed.load_ok
    if cell.verifier.empty:
        return None
    return cell.outcome not in NOT_LOADED


def row_of(cell: CellRecord) -> Row | None:
    """The veristat row of a cell that loaded its program or saw it fail; None otherwise."""
    ok = loaded(cell)
    if ok is None:
        return None
    figures: dict[str, int] = {}
    for column, key in _FIGURES.items():
        value = cell.verifier.value(key)
        if column == "total_insns" and value is None:
            value = cell.verifier.value("verified_insns")
        figures[column] = value if isinstance(value, int) and not isinstance(value, bool) else 0
    obj, _, program = cell.program.partition("/")
    # the file veristat would have been given; a record without it: the object's name
    file_name = Path(cell.object_file).name if cell.object_file else obj or cell.scenario
    load = cell.observed.load
    prog_type = str(load.get("prog_type") or "N/A")
    # kitl records "" where the program has no attach type; veristat prints libbpf's name
    # of the enum's 0 for every such program
    attach_type = load.get("attach_type")
    attach = _NO_ATTACH_TYPE if attach_type == "" else str(attach_type or "N/A")
    return Row(file_name, program or cell.case, ok, figures, prog_type, attach)


def stat_names(spec: str) -> tuple[str, ...]:
    """veristat's -e: a comma list of its stat names (any of its aliases) as columns."""
    names = tuple(_ALIASES.get(n.strip(), n.strip()) for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise UsageError(
            f"--emit {spec!r}: no stat {unknown[0]!r}",
            hint="veristat's names: " + ",".join(COLUMNS[2:]),
        )
    return names


def render(rows: Iterable[Row]) -> str:
    """veristat `-o csv` text: one row per (file, program), the first one given, sorted by
    file and program as veristat sorts."""
    unique: dict[tuple[str, str], Row] = {}
    for row in rows:
        unique.setdefault((row.file_name, row.prog_name), row)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(unique[k].values() for k in sorted(unique))
    return buffer.getvalue()


def is_veristat_csv(path: Path) -> bool:
    """Whether `path` is a file whose first line is a veristat CSV header."""
    if not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:
        return False
    names = [_ALIASES.get(n, n) for n in first.strip().split(",")]
    return "file_name" in names and "prog_name" in names


def read(path: Path) -> list[CellRecord]:
    """A veristat CSV's rows as cells: the object's scenario, the program's case, no
    kernel (veristat's CSV names none), PASSED or VERIFIER_REJECTED, and its figures.  A
    row that is not one is a UsageError naming its file and line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    lines = csv.reader(io.StringIO(text))
    header = [_ALIASES.get(n.strip(), n.strip()) for n in next(lines, [])]
    unknown = [n for n in header if n not in COLUMNS]
    if unknown or "file_name" not in header or "prog_name" not in header:
        what = f"unknown column {unknown[0]!r}" if unknown else "no file_name/prog_name"
        raise UsageError(f"{path}:1: not a veristat CSV ({what})")
    return [
        _cell(path, number, dict(zip(header, values, strict=True)))
        for number, values in enumerate(lines, 2)
        if values and _width(path, number, values, header)
    ]


def _width(path: Path, number: int, values: list[str], header: list[str]) -> bool:
    if len(values) != len(header):
        raise UsageError(f"{path}:{number}: {len(values)} values under {len(header)} columns")
    return True


def _cell(path: Path, number: int, row: dict[str, str]) -> CellRecord:
    verdict = row.get("verdict", "success")
    if verdict not in ("success", "failure"):
        raise UsageError(f"{path}:{number}: verdict {verdict!r} (success or failure)")
    figures: dict[str, int] = {}
    for column, key in _FIGURES.items():
        if column in row:
            try:
                figures[key] = int(row[column])
            except ValueError:
                msg = f"{path}:{number}: {column} {row[column]!r} is not a number"
                raise UsageError(msg) from None
    scenario = scenario_name(Path(row["file_name"]))
    ok = verdict == "success"
    load = {"ok": ok, "prog_type": row.get("prog_type"), "attach_type": row.get("attach_type")}
    return CellRecord(
        scenario=scenario,
        case=row["prog_name"],
        outcome=Outcome.PASSED if ok else Outcome.VERIFIER_REJECTED,
        reason="" if ok else "veristat: failure",
        program=f"{scenario}/{row['prog_name']}",
        object_file=row["file_name"],
        verifier=Verifier.from_json(figures),
        observed=Observed(load={k: v for k, v in load.items() if v is not None}),
    )
