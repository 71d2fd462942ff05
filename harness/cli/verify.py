"""`kitl verify`: every program of every BPF object, loaded on its own on every kernel and
config of the matrix, veristat style, without writing a scenario.

Each object becomes a scenario built in memory: one case per program (filtered by --prog),
expecting a successful load unless a bulk expectations file (harness.scenario.bulk) says
otherwise.  The cases run through the same pytest plugin, guests, run directory, reports,
`kitl compare` and `kitl repro` as `kitl run`; the plugin collects `.o` files when
`--kitl-verify` is given and builds these scenarios with `scenario_for_object`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from harness.cli import runner
from harness.cli.requests import VerifyRequest
from harness.errors import UsageError
from harness.kernel.resolve import Kernels
from harness.outcome import EXIT_OK, Outcome
from harness.results import veristat
from harness.results.record import CellRecord
from harness.results.runs import load_run
from harness.run import options
from harness.run.matrix import Shard, plan, shard_cells
from harness.run.shards import load_timings
from harness.scenario import verify_options
from harness.scenario.objects import (
    check_names,
    checked_objects,
    duplicate_names,
    load_bulk,
    scenario_for_object,
)

TABLE_ROWS = 60  # programs in the terminal's table before only the unexpected ones are shown


# --- the command ---------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=Path, metavar="OBJ_OR_DIR")
    options.add_cli_arguments(p, "verify", between=verify_options.OPTIONS)
    p.add_argument(
        "-e", "--emit", default="", metavar="STAT[,STAT]",
        help="veristat's -e: what the table shows per kernel, e.g. verdict,insns,states,duration",
    )  # fmt: skip
    runner.add_verbose(p)
    p.add_argument("--dry-run", action="store_true", help="print the pytest command and exit")


def verify_argv(
    request: VerifyRequest, objects: Sequence[Path], run_dir: Path, workers: int
) -> list[str]:
    """The exact pytest command `kitl verify` executes, with `workers`
    (runner.workers_for)."""
    matrix = replace(request.matrix, output=run_dir, workers=workers)
    argv = runner.pytest_base(matrix, "--kitl-verify", "verify", verbose=request.verbose)
    argv += verify_options.pytest_argv(request.given, matrix.argv(options.AXES, "verify"))
    argv += matrix.argv(options.SETTINGS, "verify")
    return [*argv, *(str(o) for o in objects)]


def run(request: VerifyRequest) -> int:
    options_ = request.options
    objects = checked_objects(request.paths)
    duplicate_names(objects)
    check_names(objects, options_)
    bulk = load_bulk(request.expect) if request.expect else None
    scenarios = [scenario_for_object(o, options_) for o in objects]
    if bulk is not None:
        scenarios = [bulk.apply(s) for s in scenarios]
    ks = Kernels.open()
    matrix = request.matrix
    defaults = [e.name for e in ks.catalog.defaults()]
    for name in matrix.kernels:
        ks.catalog.get(name)
    shard = Shard.parse(matrix.shard) if matrix.shard else None
    libbpfs = options.libbpf_names(matrix.libbpf)
    planned = plan(scenarios, list(matrix.kernels), [], defaults, libbpfs)
    cells = shard_cells(planned, shard, load_timings(matrix.timings))
    if not cells:
        raise UsageError("no program to verify", hint="check --prog and the objects' sections")
    if matrix.resume is not None:
        cells = runner.resumed(matrix, cells)
    run_dir = runner.run_dir_of(matrix, "verify-%Y%m%d-%H%M%S")
    status = EXIT_OK
    if cells:
        workers = runner.workers_for(matrix, cells)
        argv = verify_argv(request, objects, run_dir, workers)
        status = runner.launch(
            ks, matrix.accel, argv, cells, run_dir, dry_run=request.dry_run, workers=workers
        )
    if not request.dry_run and (run_dir / "results.json").is_file():
        print_table(run_dir, request.emit)
    return runner.resumed_status(matrix, request.dry_run, run_dir, status)


def print_table(run_dir: Path, emit: tuple[str, ...] = ()) -> None:
    """Programs x kernel-config: `loaded INSNS` or the failure class (or the stats --emit
    names), marked `!` where it is not what was expected; with a single cell, its whole
    verifier log (the one-command repro of a verifier failure)."""
    cells = load_run(run_dir).cells
    columns = list(dict.fromkeys(c.label for c in cells))
    rows: dict[str, dict[str, str]] = {}
    for c in cells:
        rows.setdefault(f"{c.scenario}/{c.case}", {})[c.label] = _shown(c, emit)
    shown = rows
    if len(rows) > TABLE_ROWS:  # a corpus: the rows that need a look, not thousands
        shown = {n: r for n, r in rows.items() if any(v.startswith("!") for v in r.values())}
    width = max([len(r) for r in shown] + [7])
    if emit:
        print(f"each kernel's column: {' '.join(emit)}")
    print(f"{'program':<{width}}  " + "  ".join(f"{col:<22}" for col in columns))
    for name, row in shown.items():
        print(f"{name:<{width}}  " + "  ".join(f"{row.get(col, '-'):<22}" for col in columns))
    if len(shown) < len(rows):
        print(
            f"({len(rows) - len(shown)} more programs as expected on every column: "
            f"{run_dir / 'report' / 'summary.md'} has them all)"
        )
    if len(cells) == 1 and cells[0].log_path:
        print((run_dir / cells[0].log_path).read_text(encoding="utf-8"), end="")


def _shown(cell: CellRecord, emit: tuple[str, ...]) -> str:
    """What the table shows of a cell: its verdict, or the stats asked for (as veristat
    prints them) where the cell got a verdict."""
    row = veristat.row_of(cell) if emit else None
    if row is None:
        return _verdict(cell)
    text = " ".join(str(row.value(stat)) for stat in emit)
    return text if cell.outcome is Outcome.PASSED else "!" + text


def _verdict(cell: CellRecord) -> str:
    """`loaded INSNS`, `skipped` or the failure's class, `!` first where it is not what was
    expected."""
    if cell.outcome is Outcome.SKIPPED:
        verdict = "skipped"
    elif cell.observed.load_ok:
        verdict = f"loaded {cell.verifier.verified_insns or ''}".strip()
    else:
        verdict = (cell.observed.error_class or cell.outcome_text).lower()
    if cell.outcome not in (Outcome.PASSED, Outcome.SKIPPED):
        verdict = "!" + verdict  # not what was expected
    return verdict
