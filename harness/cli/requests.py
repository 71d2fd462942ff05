"""What each command is asked, typed: argparse's output becomes one frozen request here,
once, in harness.cli.main, and the stages take requests (never an argparse.Namespace, and
never change what they were asked).  `kitl report` and `kitl compare` still take their
Namespace (harness.report.render, harness.results.compare)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import DATA
from harness.cli import plan as plan_
from harness.cli.hostsetup import SetupRequest
from harness.errors import UsageError
from harness.results import compare as compare_
from harness.results import veristat
from harness.results.compare import CompareRequest
from harness.run.options import Matrix
from harness.run.options import table as matrix_table
from harness.scenario import verify_options
from harness.scenario.verify_options import Given, VerifyOptions
from harness.vm.machine import Launcher

BUNDLED = (DATA / "scenarios").resolve()  # the repository's scenarios/ in a checkout


def scenario_paths(paths: Sequence[Path]) -> tuple[Path, ...]:
    """The paths as given, except a bare name that is no file or directory here and is a
    bundled scenario's (`kitl check xdp-basics` where kitl is installed, not cloned)."""
    return tuple(
        BUNDLED / p.name
        if len(p.parts) == 1 and not p.exists() and (BUNDLED / p.name).is_dir()
        else p
        for p in paths
    )


@dataclass(frozen=True)
class KernelsRequest:
    """kitl kernels list|fetch|info|lock."""

    names: tuple[str, ...] = ()
    json: bool = False
    dry_run: bool = False  # fetch: print what would be downloaded
    update: bool = False  # lock: re-resolve against Debian's archive


@dataclass(frozen=True)
class GuestRequest:
    """kitl boot, exec and shell: which kernels, how their guests are made, and exec's
    command."""

    names: tuple[str, ...] = ()
    accel: str = "auto"
    boot_timeout: float | None = None
    cpus: int = 2
    memory: str = "2G"
    dry_run: bool = False
    json: bool = False
    output: Path | None = None  # boot: the console logs' directory
    cmd: tuple[str, ...] = ()  # exec: the command, after --
    timeout: float = 600.0  # exec: the command's
    launcher: Launcher | None = None  # None: virtme-ng (the tests give a fake one)
    no_warm: bool = False  # exec: boot even where a warm guest is up


@dataclass(frozen=True)
class UpRequest:
    """kitl up: the kernels and how their guests are booted; the loaders whose agents
    start with them ("": the default loader)."""

    guest: GuestRequest
    libbpf: str = ""


@dataclass(frozen=True)
class RunRequest:
    paths: tuple[Path, ...]  # scenarios or their directories; none: the bundled ones
    matrix: Matrix
    dry_run: bool = False
    verbose: bool = False  # a line per cell on the terminal


@dataclass(frozen=True)
class VerifyRequest:
    paths: tuple[Path, ...]  # objects or their directories
    matrix: Matrix
    given: Given  # kitl verify's own options as typed (harness.scenario.verify_options)
    options: VerifyOptions  # ... and parsed
    expect: Path | None = None  # bulk expectations
    dry_run: bool = False
    emit: tuple[str, ...] = ()  # veristat's -e: the stats the table shows
    verbose: bool = False  # a line per cell on the terminal


@dataclass(frozen=True)
class ReproRequest:
    run_dir: Path
    cell_id: str
    log_level: int
    open_shell: bool = False  # --shell: stay in the guest, the program loaded
    no_pager: bool = False
    allow_other_kernel: bool = False
    accel: str = "auto"
    dry_run: bool = False
    no_warm: bool = False  # boot even where a warm guest is up


DIFF_CONTEXT = 12  # rows kitl diff shows before and after the first divergence


@dataclass(frozen=True)
class ExplainRequest:
    run_dir: Path
    cell_id: str


@dataclass(frozen=True)
class DiffRequest:
    runs: tuple[Path, Path]  # the same run twice for two kernels of one run
    program: str
    kernels: tuple[str | None, str | None]  # None: the run's only cell of the program
    context: int = DIFF_CONTEXT
    every_row: bool = False


@dataclass(frozen=True)
class MergeRequest:
    runs: tuple[Path, ...]
    output: Path


@dataclass(frozen=True)
class CheckRequest:
    paths: tuple[Path, ...]
    allow_outside: bool = False


def kernels(args: argparse.Namespace) -> KernelsRequest:
    one = (args.name,) if getattr(args, "name", None) else ()
    return KernelsRequest(
        names=tuple(getattr(args, "names", ()) or one),
        json=args.json,
        dry_run=getattr(args, "dry_run", False),
        update=getattr(args, "update", False),
    )


def guest(
    args: argparse.Namespace, launcher: Launcher | None, tail: Sequence[str] = ()
) -> GuestRequest:
    """`tail`: exec's command after --, which option parsing never saw."""
    one = (args.name,) if getattr(args, "name", None) else ()
    return GuestRequest(
        names=tuple(getattr(args, "names", ()) or one),
        accel=args.accel,
        boot_timeout=args.boot_timeout,
        cpus=args.cpus,
        memory=args.memory,
        dry_run=args.dry_run,
        json=getattr(args, "json", False),
        output=getattr(args, "output", None),
        cmd=(*getattr(args, "cmd", ()), *tail),
        timeout=getattr(args, "timeout", 600.0),
        launcher=launcher,
        no_warm=getattr(args, "no_warm", False),
    )


def up(args: argparse.Namespace, launcher: Launcher | None) -> UpRequest:
    return UpRequest(guest(args, launcher), libbpf=args.libbpf)


def run(args: argparse.Namespace) -> RunRequest:
    values = verify_options.namespace_values(args, matrix_table("run"))
    return RunRequest(
        scenario_paths(args.paths),
        Matrix.of(values, "run"),
        args.dry_run,
        getattr(args, "verbose", False),
    )


def verify(args: argparse.Namespace) -> VerifyRequest:
    """kitl verify's request; its options parsed and checked (a UsageError names one)."""
    matrix = Matrix.of(verify_options.namespace_values(args, matrix_table("verify")), "verify")
    given = Given.of(verify_options.namespace_values(args))
    options = verify_options.build(given)
    emit = veristat.stat_names(args.emit)
    return VerifyRequest(
        tuple(args.paths),
        matrix,
        given,
        options,
        args.expect,
        args.dry_run,
        emit,
        getattr(args, "verbose", False),
    )


def compare(args: argparse.Namespace) -> CompareRequest:
    """kitl compare's request; its thresholds checked (a UsageError names the option)."""
    thresholds = compare_.thresholds_of(vars(args))
    return CompareRequest(args.base, args.new, thresholds, args.format, args.output)


def repro(args: argparse.Namespace) -> ReproRequest:
    verify_options.check_log_level(args.log_level)  # before anything boots
    return ReproRequest(
        args.run_dir,
        args.cell_id,
        args.log_level,
        open_shell=args.shell,
        no_pager=args.no_pager,
        allow_other_kernel=args.allow_other_kernel,
        accel=args.accel,
        dry_run=args.dry_run,
        no_warm=args.no_warm,
    )


def merge(args: argparse.Namespace) -> MergeRequest:
    return MergeRequest(tuple(args.runs), args.output)


def check(args: argparse.Namespace) -> CheckRequest:
    return CheckRequest(scenario_paths(args.paths), args.allow_outside)


def explain(args: argparse.Namespace) -> ExplainRequest:
    return ExplainRequest(args.run_dir, args.cell_id)


def diff(args: argparse.Namespace) -> DiffRequest:
    given: list[str] = args.args
    if len(given) == 4:
        if args.kernel:
            raise UsageError("kitl diff RUN_DIR PROGRAM KERNEL_A KERNEL_B takes no --kernel")
        run, program, kernel_a, kernel_b = given
        return DiffRequest(
            (Path(run), Path(run)), program, (kernel_a, kernel_b), args.context, args.all
        )
    if len(given) == 3:
        run_a, run_b, program = given
        if not Path(run_b).is_dir():
            raise UsageError(
                f"{run_b}: not a run directory",
                hint="two kernels of one run: kitl diff RUN_DIR PROGRAM KERNEL_A KERNEL_B",
            )
        kernels = (args.kernel, args.kernel)
        return DiffRequest((Path(run_a), Path(run_b)), program, kernels, args.context, args.all)
    raise UsageError(
        "kitl diff takes RUN_DIR PROGRAM KERNEL_A KERNEL_B, or RUN_A RUN_B PROGRAM [--kernel K]"
    )


def plan(args: argparse.Namespace) -> plan_.PlanRequest:
    return plan_.PlanRequest(
        scenario_paths(args.paths), plan_.matrix_of(args), args.shards, args.format
    )


def setup(args: argparse.Namespace) -> SetupRequest:
    return SetupRequest(yes=args.yes, dry_run=args.dry_run, tests=args.tests)
