"""`kitl run`: the matrix (scenarios x kernels x configs) as a thin front over pytest and
the kitl plugin (harness.pytest_plugin.plugin).

Everything a user can get wrong is checked here first, with one line and exit status 2:
scenario files, kernel names, config names, the shard.  Kernels are fetched and the
accelerator decided once, in this process, so pytest-xdist workers find both ready.  Then
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
from pathlib import Path
from types import FrameType

from harness.cli.progress import DownloadProgress, stderr
from harness.errors import UsageError
from harness.guest.libbpf import FLOOR
from harness.interrupts import DEFAULT_CELL_TIMEOUT
from harness.kernel import libbpf_build
from harness.kernel.libbpf_build import DEFAULT as DEFAULT_LIBBPF
from harness.kernel.libbpf_build import SYSTEM as SYSTEM_LIBBPF
from harness.kernel.resolve import Kernels
from harness.outcome import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_code
from harness.results.known import DEFAULT_NAME as KNOWN_DEFAULT
from harness.results.known import load_known
from harness.results.runs import appended, finished_ids
from harness.run.matrix import Cell, Shard, plan, shard_cells
from harness.scenario.model import Scenario
from harness.vm import accel

BUNDLED = Path(__file__).resolve().parents[2] / "scenarios"
INI = Path(__file__).resolve().parents[1] / "pytest_plugin" / "pytest-kitl.ini"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="SCENARIO_OR_DIR",
        help=f"default: the bundled scenarios ({BUNDLED})",
    )
    p.add_argument("--kernels", default="", metavar="A,B", help="kernels of the matrix")
    p.add_argument("--kernel", action="append", default=[], help="one kernel (repeatable)")
    p.add_argument("--configs", default="", metavar="X,Y", help="only these configs")
    p.add_argument("--config", action="append", default=[], help="one config (repeatable)")
    p.add_argument("-n", dest="workers", default=None, metavar="N|auto", help="parallel VMs")
    add_libbpf_argument(p)
    p.add_argument("--output", type=Path, default=None, help="run directory (default runs/<time>)")
    p.add_argument("--shard", default=None, metavar="I/N", help="run shard I of N of the matrix")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="finish an interrupted run: only its missing cells, into the same directory",
    )
    p.add_argument(
        "--expect",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"known failures (default: ./{KNOWN_DEFAULT} if present)",
    )
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="let scenarios name files outside their own directory",
    )
    p.add_argument("--accel", default="auto", choices=accel.ACCELS)
    p.add_argument("--boot-timeout", type=float, default=None, metavar="SECONDS")
    p.add_argument(
        "--cell-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a cell still running after this is TIMED_OUT and its VM replaced "
        f"(default {DEFAULT_CELL_TIMEOUT:g})",
    )
    p.add_argument("--dry-run", action="store_true", help="print the pytest command and exit")


def add_libbpf_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--libbpf",
        default="",
        metavar="A,B",
        help="the loaders, an axis of the matrix: default (the libbpf of the catalog's newest "
        "Debian kernel, built from its source), system (the host's libbpf.so.1), debian-X "
        "(built from that catalog kernel's source) or a path to a libbpf.so; without it, "
        "each scenario's libbpf: list, else default",
    )


def libbpf_names(text: str) -> list[str]:
    """The loaders named on the command line, as cells record them ([] when none)."""
    loaders = [libbpf_build.canonical(n) for n in names(text)]
    for name in loaders:
        named = name in (SYSTEM_LIBBPF, DEFAULT_LIBBPF) or name.startswith("debian-")
        if not named and not Path(name).is_file():
            raise UsageError(
                f"--libbpf {name}: not default, system, debian-X or an existing libbpf.so"
            )
    return [str(Path(n).resolve()) if Path(n).is_file() else n for n in loaders]


def libbpf_option(text: str) -> str:
    """--libbpf as the plugin's --kitl-libbpf takes it: checked, "default" spelled out."""
    return ",".join(map(libbpf_build.spelled, libbpf_names(text)))


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


def pytest_base(run_dir: Path, accel_name: str, collect: str) -> list[str]:
    """The start of every pytest command the fronts run: kitl's own ini, the plugin's
    collection flag (`--kitl` or `--kitl-verify`), one line per cell, the run directory."""
    argv = [sys.executable, "-m", "pytest", "-c", str(INI), "--rootdir", str(Path.cwd())]
    argv += ["-p", "no:cacheprovider", collect, "--kitl-lines", "-q", "--no-header"]
    return [*argv, "--kitl-output", str(run_dir), "--kitl-accel", accel_name]


def names(*sources: Sequence[str] | str) -> list[str]:
    out: list[str] = []
    for source in sources:
        items = source.split(",") if isinstance(source, str) else list(source)
        out += [n.strip() for n in items if n.strip()]
    return list(dict.fromkeys(out))


def pytest_argv(args: argparse.Namespace, paths: Sequence[Path], run_dir: Path) -> list[str]:
    """The exact pytest command `kitl run` executes."""
    argv = pytest_base(run_dir, args.accel, "--kitl")
    kernels = names(args.kernels, args.kernel)
    configs = names(args.configs, args.config)
    if kernels:
        argv += ["--kitl-kernels", ",".join(kernels)]
    if configs:
        argv += ["--kitl-configs", ",".join(configs)]
    if loaders := libbpf_option(args.libbpf):
        argv += ["--kitl-libbpf", loaders]
    if args.shard:
        argv += ["--kitl-shard", args.shard]
    if args.expect:
        argv += ["--kitl-expect", str(args.expect)]
    if args.boot_timeout:
        argv += ["--kitl-boot-timeout", str(args.boot_timeout)]
    if args.cell_timeout is not None:
        if args.cell_timeout <= 0:
            raise UsageError(f"--cell-timeout {args.cell_timeout:g}: must be positive")
        argv += ["--kitl-cell-timeout", str(args.cell_timeout)]
    if getattr(args, "resume", None):
        argv.append("--kitl-resume")
    if getattr(args, "allow_outside", False):
        argv.append("--kitl-allow-outside")
    if args.workers and args.workers != "1":
        argv += ["-n", str(args.workers), "--dist", "loadgroup"]
    return [*argv, *(str(p) for p in paths)]


def run(args: argparse.Namespace, scenarios: list[Scenario]) -> int:
    """Check what can be checked, fetch the kernels, decide the accelerator, run pytest."""
    ks = Kernels.open()
    kernels = names(args.kernels, args.kernel)
    configs = names(args.configs, args.config)
    defaults = [e.name for e in ks.catalog.defaults()]
    for name in kernels:
        ks.catalog.get(name)  # unknown names: one line, exit 2
    shard = Shard.parse(args.shard) if args.shard else None
    libbpfs = libbpf_names(args.libbpf)
    cells = shard_cells(plan(scenarios, kernels, configs, defaults, libbpfs), shard)
    if not cells:
        raise UsageError("the matrix is empty: no cell to run")
    if args.expect is not None:
        load_known(args.expect)
    elif Path(KNOWN_DEFAULT).is_file():
        load_known(Path(KNOWN_DEFAULT))
    if args.resume is not None:
        cells = resumed(args, cells)
    run_dir = (args.output or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    paths = [p.resolve() for p in (args.paths or [BUNDLED])]
    status = EXIT_OK
    if cells:
        status = launch(ks, args, pytest_argv(args, paths, run_dir), cells, run_dir)
    return resumed_status(args, run_dir, status)


def resumed(args: argparse.Namespace, cells: list[Cell]) -> list[Cell]:
    """--resume RUN_DIR (kitl run and kitl verify): check it, write into it, and keep only
    the cells it has no real result for."""
    if not (args.resume / "results.jsonl").is_file():
        raise UsageError(f"--resume {args.resume}: not a kitl run directory")
    if args.output is not None and args.output.resolve() != args.resume.resolve():
        raise UsageError("--resume writes into the run it resumes: drop --output")
    args.output = args.resume
    return _still_to_run(args.resume, cells)


def resumed_status(args: argparse.Namespace, run_dir: Path, status: int) -> int:
    """The exit status: a resumed run's is that of all its cells, old and new."""
    if args.resume is None or args.dry_run or status > 128:  # > 128: stopped by a signal
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
    ks: Kernels, args: argparse.Namespace, argv: list[str], cells: Sequence[Cell], run_dir: Path
) -> int:
    """--dry-run: print the command.  Else fetch the kernels of `cells`, decide the
    accelerator once (the verdict is cached for the workers) and run pytest."""
    if args.dry_run:
        print(shlex.join(argv))
        return EXIT_OK
    needed = list(dict.fromkeys(c.kernel for c in cells))
    with DownloadProgress() as progress:
        fetched = [ks.get(name, progress) for name in needed]
    build_loaders(ks, [c.libbpf for c in cells])
    first = fetched[0]
    decision = accel.decide(args.accel, ks.store.cache, lambda: accel.qemu_kvm_probe(first.vmlinuz))
    argv[argv.index("--kitl-accel") + 1] = decision.accel
    stderr.print(
        f"kitl: {len(cells)} cells on {', '.join(needed)} ({decision.accel}); results in {run_dir}"
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
        return 128 + stopped[0]
    if status == 0:
        return EXIT_OK
    if status == 4:  # pytest: usage error
        return EXIT_USAGE
    if status == 5:
        print("kitl: no cells ran", file=sys.stderr)
    return EXIT_FAILED
