"""`kitl run`: the matrix (scenarios x kernels x configs) as a thin front over pytest and
the kitl plugin (harness.pytest_plugin.plugin).

Everything a user can get wrong is checked here first, with one line and exit status 2:
scenario files, kernel names, config names, the shard, -n.  The number of workers is
decided from the plan (harness.run.workers: -n auto, the default).  Kernels are fetched and
the accelerator decided once, in this process, so pytest-xdist workers find both ready.  Then
pytest runs in a child process (its own signal handling, no state shared with the caller)
and its exit status becomes kitl's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

from harness.cli.progress import DownloadProgress, stderr
from harness.cli.requests import BUNDLED, RunRequest
from harness.errors import UsageError
from harness.guest.libbpf import FLOOR
from harness.kernel import libbpf_build
from harness.kernel.libbpf_build import DEFAULT as DEFAULT_LIBBPF
from harness.kernel.resolve import Kernels
from harness.outcome import (
    EXIT_OK,
    PYTEST_NO_TESTS,
    exit_code,
    exit_for_pytest,
    exit_for_signal,
    signalled,
)
from harness.results.known import DEFAULT_NAME as KNOWN_DEFAULT
from harness.results.known import load_known
from harness.results.runs import appended, finished_ids
from harness.run import options
from harness.run.matrix import Cell, Shard, plan, shard_cells
from harness.run.options import Matrix
from harness.run.shards import load_timings
from harness.run.workers import decide as decide_workers
from harness.scenario.model import Scenario
from harness.vm import accel

INI = Path(__file__).resolve().parents[1] / "pytest_plugin" / "pytest-kitl.ini"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="SCENARIO_OR_DIR",
        help=f"default: the bundled scenarios ({BUNDLED})",
    )
    options.add_cli_arguments(p, "run")
    add_verbose(p)
    p.add_argument("--dry-run", action="store_true", help="print the pytest command and exit")


def add_verbose(p: argparse.ArgumentParser) -> None:
    """kitl run's and verify's -v, the same switch as kitl's own (`kitl -v run`)."""
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # not given here: kitl's own -v stands
        help="a line per cell, pytest's failure reports, and host-side decisions logged",
    )


def build_loaders(ks: Kernels, loaders: Sequence[str]) -> None:
    """Build (or find in the cache) the Debian-source libbpf of each loader once, before any
    worker starts; refuse one older than the binding's floor."""
    for loader in dict.fromkeys(loaders):
        name = libbpf_build.resolved_name(loader, ks.catalog)
        if not name.startswith("debian-"):
            continue
        ks.catalog.get(name)  # an unknown kernel name: one line, exit 2
        built = libbpf_build.libbpf_for(name, ks)
        if tuple(int(x) for x in built.version.split(".")[:2]) < FLOOR:
            raise UsageError(
                f"--libbpf {name}: its libbpf is {built.version}; kitl loads with "
                f"libbpf >= {'.'.join(map(str, FLOOR))}"
            )
        label = f"default ({name})" if loader == DEFAULT_LIBBPF else name
        stderr.print(f"kitl: libbpf {label}: {built.version} ({built.path})")


def pytest_base(matrix: Matrix, collect: str, command: str, *, verbose: bool = False) -> list[str]:
    """The start of every pytest command the fronts run: kitl's own ini, the plugin's
    collection flag (`--kitl` or `--kitl-verify`), kitl's lines (a line per failure and the
    progress; `verbose`: a line per cell and pytest's failure reports, as before), the run
    directory (`matrix.output`) and the accelerator."""
    argv = [sys.executable, "-m", "pytest", "-c", str(INI), "--rootdir", str(Path.cwd())]
    argv += ["-p", "no:cacheprovider", collect, "--kitl-lines", "-q", "--no-header"]
    # quiet: each failure had its line as it finished, and summary.md has the rest
    argv += ["--kitl-verbose"] if verbose else ["--tb=no", "-rN"]
    return [*argv, *matrix.argv(options.FIRST, command)]


def pytest_argv(
    request: RunRequest, paths: Sequence[Path], run_dir: Path, workers: int
) -> list[str]:
    """The exact pytest command `kitl run` executes, with `workers` (`workers_for`)."""
    matrix = replace(request.matrix, output=run_dir, workers=workers)
    argv = pytest_base(matrix, "--kitl", "run", verbose=request.verbose)
    argv += matrix.argv(options.AXES, "run") + matrix.argv(options.SETTINGS, "run")
    return [*argv, *(str(p) for p in paths)]


def run(request: RunRequest, scenarios: list[Scenario]) -> int:
    """Check what can be checked, fetch the kernels, decide the accelerator, run pytest."""
    ks = Kernels.open()
    matrix = request.matrix
    defaults = [e.name for e in ks.catalog.defaults()]
    for name in matrix.kernels:
        ks.catalog.get(name)  # unknown names: one line, exit 2
    shard = Shard.parse(matrix.shard) if matrix.shard else None
    libbpfs = options.libbpf_names(matrix.libbpf)
    matrix_cells = plan(scenarios, list(matrix.kernels), list(matrix.configs), defaults, libbpfs)
    cells = shard_cells(matrix_cells, shard, load_timings(matrix.timings))
    if not cells:
        raise UsageError("the matrix is empty: no cell to run")
    if matrix.expect is not None:
        load_known(matrix.expect)
    elif Path(KNOWN_DEFAULT).is_file():
        load_known(Path(KNOWN_DEFAULT))
    if matrix.resume is not None:
        cells = resumed(matrix, cells)
    run_dir = run_dir_of(matrix, "%Y%m%d-%H%M%S")
    paths = [p.resolve() for p in (request.paths or [BUNDLED])]
    status = EXIT_OK
    if cells:
        workers = workers_for(matrix, cells)
        argv = pytest_argv(request, paths, run_dir, workers)
        status = launch(
            ks, matrix.accel, argv, cells, run_dir, dry_run=request.dry_run, workers=workers
        )
    return resumed_status(matrix, request.dry_run, run_dir, status)


def workers_for(matrix: Matrix, cells: Sequence[Cell]) -> int:
    """-n as given, else as many as the host holds guests and the cells to run (this shard's,
    a resumed run's rest) have kernels: loadgroup gives each kernel one worker."""
    return decide_workers(matrix.workers, len({c.kernel for c in cells}))


def run_dir_of(matrix: Matrix, default: str) -> Path:
    """The run directory: the resumed one, --output, else runs/<the time as `default`>."""
    return (matrix.resume or matrix.output or Path("runs") / time.strftime(default)).resolve()


def resumed(matrix: Matrix, cells: list[Cell]) -> list[Cell]:
    """--resume RUN_DIR (kitl run and kitl verify): check it (the run writes into it, see
    run_dir_of), and keep only the cells it has no real result for."""
    assert matrix.resume is not None
    if not (matrix.resume / "results.jsonl").is_file():
        raise UsageError(f"--resume {matrix.resume}: not a kitl run directory")
    if matrix.output is not None and matrix.output.resolve() != matrix.resume.resolve():
        raise UsageError("--resume writes into the run it resumes: drop --output")
    return _still_to_run(matrix.resume, cells)


def resumed_status(matrix: Matrix, dry_run: bool, run_dir: Path, status: int) -> int:
    """The exit status: a resumed run's is that of all its cells, old and new."""
    if matrix.resume is None or dry_run or signalled(status):
        return status
    return exit_code(c.outcome for c in appended(run_dir))


def _still_to_run(run_dir: Path, cells: list[Cell]) -> list[Cell]:
    """The cells of the matrix a resumed run has no result for (or an infrastructure
    one, which says nothing about the case: the plugin's --kitl-resume makes the same
    choice), announced with the count."""
    done = finished_ids(run_dir)
    todo = [c for c in cells if c.cell_id not in done]
    print(  # not rich's console: it would wrap the path
        f"kitl: resuming {run_dir}: {len(cells) - len(todo)} of {len(cells)} cells have a "
        f"result, {len(todo)} to run",
        file=sys.stderr,
    )
    return todo


def launch(
    ks: Kernels,
    choice: str,
    argv: list[str],
    cells: Sequence[Cell],
    run_dir: Path,
    *,
    dry_run: bool,
    workers: int = 1,
) -> int:
    """--dry-run: print the command.  Else fetch the kernels of `cells`, decide the
    accelerator (`choice`: --accel) once (the verdict is cached for the workers) and run
    pytest."""
    if dry_run:
        print(shlex.join(argv))
        return EXIT_OK
    needed = list(dict.fromkeys(c.kernel for c in cells))
    with DownloadProgress() as progress:
        fetched = [ks.get(name, progress) for name in needed]
    build_loaders(ks, [c.libbpf for c in cells])
    first = fetched[0]
    decision = accel.decide(choice, ks.store.cache, lambda: accel.qemu_kvm_probe(first.vmlinuz))
    argv[argv.index("--kitl-accel") + 1] = decision.accel
    vms = f"{workers} VMs at a time" if workers > 1 else "one VM at a time"
    stderr.print(
        f"kitl: {len(cells)} cells on {', '.join(needed)} ({decision.accel}, {vms}); "
        f"results in {run_dir}"
    )
    command = "verify" if "--kitl-verify" in argv else "run"
    return _pytest(argv, run_dir, command=command)


def _pytest(argv: list[str], run_dir: Path, *, command: str = "run") -> int:
    """Run pytest as a child in its own process group.  SIGINT and SIGTERM are forwarded to
    the whole group, so the controller and every xdist worker stop their cell, tear their
    VMs down and write what finished; kitl then exits 128 + the signal's number."""
    stopped: list[int] = []
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stopped.append(signum)
        for child in children:  # the group: a terminal's Ctrl-C reaches only kitl's own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not stopped:
            children.append(subprocess.Popen(argv, process_group=0))
            status = children[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped:
        finished = len(appended(run_dir))
        print(
            f"kitl: stopped by {signal.Signals(stopped[0]).name}: {finished} cells have a "
            f"result in {run_dir / 'results.jsonl'}"
            + f"; kitl {command} --resume {run_dir} [same arguments] runs the rest",
            file=sys.stderr,
        )
        return exit_for_signal(stopped[0])
    if status == PYTEST_NO_TESTS:
        print("kitl: no cells ran", file=sys.stderr)
    return exit_for_pytest(status)
