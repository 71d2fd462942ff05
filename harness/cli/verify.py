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
import time
from collections.abc import Sequence
from pathlib import Path

from harness.cli import runner
from harness.errors import UsageError
from harness.kernel.resolve import Kernels
from harness.outcome import EXIT_OK, Outcome
from harness.results.record import CellRecord
from harness.results.runs import load_run
from harness.run.matrix import Shard, plan, shard_cells
from harness.scenario import verify_options
from harness.scenario.objects import (
    check_names,
    checked_objects,
    duplicate_names,
    load_bulk,
    scenario_for_object,
)
from harness.scenario.verify_options import VerifyOptions
from harness.vm import accel

TABLE_ROWS = 60  # programs in the terminal's table before only the unexpected ones are shown


# --- the command ---------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=Path, metavar="OBJ_OR_DIR")
    p.add_argument("--kernels", default="", metavar="A,B", help="default: the default kernels")
    p.add_argument("--kernel", action="append", default=[], help="one kernel (repeatable)")
    verify_options.add_cli_arguments(p)
    p.add_argument("-n", dest="workers", default=None, metavar="N|auto", help="parallel VMs")
    runner.add_libbpf_argument(p)
    p.add_argument("--output", type=Path, default=None, help="run directory (default runs/<time>)")
    p.add_argument("--shard", default=None, metavar="I/N")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="finish an interrupted verify: only its missing cells, into the same directory",
    )
    p.add_argument("--accel", default="auto", choices=accel.ACCELS)
    p.add_argument("--boot-timeout", type=float, default=None, metavar="SECONDS")
    p.add_argument("--dry-run", action="store_true", help="print the pytest command and exit")


def options_from(args: argparse.Namespace) -> VerifyOptions:
    return verify_options.build(verify_options.namespace_values(args))


def verify_argv(args: argparse.Namespace, objects: Sequence[Path], run_dir: Path) -> list[str]:
    """The exact pytest command `kitl verify` executes."""
    argv = runner.pytest_base(run_dir, args.accel, "--kitl-verify")
    matrix: list[str] = []
    if loaders := runner.libbpf_option(args.libbpf):
        matrix += ["--kitl-libbpf", loaders]
    if kernels := runner.names(args.kernels, args.kernel):
        matrix += ["--kitl-kernels", ",".join(kernels)]
    argv += verify_options.pytest_argv(verify_options.namespace_values(args), matrix)
    if args.shard:
        argv += ["--kitl-shard", args.shard]
    if args.boot_timeout:
        argv += ["--kitl-boot-timeout", str(args.boot_timeout)]
    if getattr(args, "resume", None):
        argv.append("--kitl-resume")
    if args.workers and args.workers != "1":
        argv += ["-n", str(args.workers), "--dist", "loadgroup"]
    return [*argv, *(str(o) for o in objects)]


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    objects = checked_objects(args.paths)
    duplicate_names(objects)
    check_names(objects, options)
    bulk = load_bulk(args.expect) if args.expect else None
    scenarios = [scenario_for_object(o, options) for o in objects]
    if bulk is not None:
        scenarios = [bulk.apply(s) for s in scenarios]
    ks = Kernels.open()
    kernels = runner.names(args.kernels, args.kernel)
    defaults = [e.name for e in ks.catalog.defaults()]
    for name in kernels:
        ks.catalog.get(name)
    shard = Shard.parse(args.shard) if args.shard else None
    libbpfs = runner.libbpf_names(args.libbpf)
    cells = shard_cells(plan(scenarios, kernels, [], defaults, libbpfs), shard)
    if not cells:
        raise UsageError("no program to verify", hint="check --prog and the objects' sections")
    if args.resume is not None:
        cells = runner.resumed(args, cells)
    run_dir = (args.output or Path("runs") / time.strftime("verify-%Y%m%d-%H%M%S")).resolve()
    status = EXIT_OK
    if cells:
        status = runner.launch(ks, args, verify_argv(args, objects, run_dir), cells, run_dir)
    if not args.dry_run and (run_dir / "results.json").is_file():
        print_table(run_dir)
    return runner.resumed_status(args, run_dir, status)


def print_table(run_dir: Path) -> None:
    """Programs x kernel-config: `loaded INSNS` or the failure class, marked `!` where it
    is not what was expected; with a single cell, its whole verifier log (the one-command
    repro of a verifier failure)."""
    cells = load_run(run_dir).cells
    columns = list(dict.fromkeys(c.label for c in cells))
    rows: dict[str, dict[str, str]] = {}
    for c in cells:
        rows.setdefault(f"{c.scenario}/{c.case}", {})[c.label] = _verdict(c)
    shown = rows
    if len(rows) > TABLE_ROWS:  # a corpus: the rows that need a look, not thousands
        shown = {n: r for n, r in rows.items() if any(v.startswith("!") for v in r.values())}
    width = max([len(r) for r in shown] + [7])
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
