"""The options `kitl run` and `kitl verify` share, each declared once: the matrix (kernels,
configs, loaders, shard), where it runs (output, resume, -n, accel) and its budgets.

`MATRIX` is a table of harness.scenario.verify_options's `Option` rows, as `kitl verify`'s
own options are: from it come both commands' argparse arguments (`add_cli_arguments`), the
pytest plugin's `--kitl-*` options (`add_pytest_options`), the pytest command line that
carries a `Matrix` from one to the other (`argv`) and the `Matrix` a command's request holds
(`Matrix.of`).  `kitl run` has every row; `kitl verify` those not in `RUN_ONLY` (its
`--config` and `--expect` are its own, in verify_options).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.errors import UsageError
from harness.interrupts import DEFAULT_CELL_TIMEOUT
from harness.kernel import libbpf_build
from harness.kernel.libbpf_build import DEFAULT as DEFAULT_LIBBPF
from harness.kernel.libbpf_build import SYSTEM as SYSTEM_LIBBPF
from harness.results.known import DEFAULT_NAME as KNOWN_DEFAULT
from harness.run.workers import parse_workers
from harness.scenario import verify_options
from harness.scenario.verify_options import ArgKwargs, Kind, Option, Values, names
from harness.vm import accel


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


def _libbpf_argv(text: str) -> list[str]:
    loaders = libbpf_option(text)
    return ["--kitl-libbpf", loaders] if loaders else []


def _workers_argv(workers: int | None) -> list[str]:
    # xdist's own option; loadgroup keeps each kernel's cells on one worker.  One worker
    # is no xdist at all, and so is auto (None) not yet decided: the fronts decide it from
    # the plan (harness.run.workers) before they build the command.
    return ["-n", str(workers), "--dist", "loadgroup"] if workers and workers > 1 else []


def _cell_timeout_argv(seconds: float | None) -> list[str]:
    if seconds is None:
        return []
    if seconds <= 0:
        raise UsageError(f"--cell-timeout {seconds:g}: must be positive")
    return ["--kitl-cell-timeout", str(seconds)]


V = Kind.VALUE
RESUME_HELP = "finish an interrupted {command}: only its missing cells, into the same directory"

# In `kitl run --help`'s order.
MATRIX: tuple[Option, ...] = (
    Option(
        "--kernel", "kernel", Kind.JOINED, field="kernels", plural="--kernels",
        pytest_name="--kitl-kernels", help="kernels of the matrix",
        pytest_options=ArgKwargs(
            default="", metavar="A,B",
            help="kernels of the matrix (default: each scenario's kernels:, else the "
            "catalog's default set)",
        ),
    ),
    Option(
        "--config", "config", Kind.JOINED, field="configs", plural="--configs",
        plural_metavar="X,Y", pytest_name="--kitl-configs", help="only these configs",
    ),
    Option(
        "-n", "workers", V, metavar="N|auto", pytest_options=None, to_argv=_workers_argv,
        help="parallel VMs (default auto: as many as the cores and memory hold, one vCPU "
        "each, at most one per kernel; 1: one VM at a time, no xdist)",
    ),
    Option(
        "--libbpf", "libbpf", V, default="", metavar="A,B", to_argv=_libbpf_argv,
        help="the loaders, an axis of the matrix: default (the libbpf of the catalog's newest "
        "Debian kernel, built from its source), system (the host's libbpf.so.1), debian-X "
        "(built from that catalog kernel's source) or a path to a libbpf.so; without it, "
        "each scenario's libbpf: list, else default",
    ),
    Option(
        "--output", "output", V, type=Path, help="run directory (default runs/<time>)",
        pytest_options=ArgKwargs(default=None, metavar="DIR", help="the run directory"),
    ),
    Option("--shard", "shard", V, metavar="I/N", help="run shard I of N of the matrix"),
    Option(
        "--timings", "timings", V, type=Path, metavar="RUN_DIR",
        help="balance --shard by this earlier run's cell timings (as kitl plan --timings)",
        pytest_options=ArgKwargs(
            default=None, metavar="RUN_DIR",
            help="balance --kitl-shard by this earlier run's cell timings",
        ),
        to_argv=lambda path: ["--kitl-timings", str(path)] if path else [],
    ),
    Option(
        "--resume", "resume", V, type=Path, metavar="RUN_DIR", help=RESUME_HELP,
        pytest_options=ArgKwargs(
            action="store_true",
            help="run only the cells --kitl-output has no result for (or an infrastructure one)",
        ),
        to_argv=lambda run_dir: ["--kitl-resume"] if run_dir else [],
    ),
    Option(
        "--expect", "expect", V, type=Path, metavar="FILE",
        help=f"known failures (default: ./{KNOWN_DEFAULT} if present)",
        pytest_options=ArgKwargs(
            default=None, metavar="FILE",
            help=f"known failures (default: ./{KNOWN_DEFAULT} when it exists)",
        ),
        to_argv=lambda path: ["--kitl-expect", str(path)] if path else [],
    ),
    Option(
        "--allow-outside", "allow_outside", Kind.SWITCH,
        help="let scenarios name files outside their own directory",
    ),
    Option(
        "--accel", "accel", V, default="auto", choices=accel.ACCELS,
        help="auto probes KVM once per host and falls back to TCG",
    ),
    Option(
        "--no-warm", "no_warm", Kind.SWITCH,
        help="boot every guest, even where a warm guest of the kernel is up (kitl up)",
    ),
    Option(
        "--boot-timeout", "boot_timeout", V, type=float, metavar="SECONDS",
        to_argv=lambda seconds: ["--kitl-boot-timeout", str(seconds)] if seconds else [],
    ),
    Option(
        "--cell-timeout", "cell_timeout", V, type=float, metavar="SECONDS",
        help="a cell still running after this is TIMED_OUT and its VM replaced "
        f"(default {DEFAULT_CELL_TIMEOUT:g})",
        pytest_options=ArgKwargs(
            type=float, default=DEFAULT_CELL_TIMEOUT, metavar="SECONDS",
            help="a cell still running after this is TIMED_OUT and its VM replaced "
            f"(default {DEFAULT_CELL_TIMEOUT:g})",
        ),
        to_argv=_cell_timeout_argv,
    ),
)  # fmt: skip
RUN_ONLY = frozenset({"config", "expect", "allow_outside", "cell_timeout"})
BY_DEST = {o.dest: o for o in MATRIX}
# the pytest command's order: where and how it runs first (the plugin's --kitl-output and
# --kitl-accel), then the matrix's axes, then how it is run (kitl verify puts its own
# options between the two)
FIRST = ("output", "accel")
AXES = ("kernel", "config", "libbpf")
SETTINGS = (
    "shard", "timings", "expect", "boot_timeout", "cell_timeout", "resume", "allow_outside",
    "workers", "no_warm",
)  # fmt: skip


def table(command: str) -> tuple[Option, ...]:
    """The rows of `command` ("run" or "verify")."""
    return tuple(o for o in MATRIX if command == "run" or o.dest not in RUN_ONLY)


@dataclass(frozen=True)
class Matrix:
    """The shared options' values, as the command line holds them (a request's part)."""

    kernels: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    workers: int | None = None  # -n: None is auto (harness.run.workers decides)
    libbpf: str = ""
    output: Path | None = None
    shard: str | None = None
    timings: Path | None = None  # an earlier run directory: --shard balanced by its timings
    resume: Path | None = None
    expect: Path | None = None  # kitl run's known failures
    allow_outside: bool = False
    accel: str = "auto"
    boot_timeout: float | None = None
    cell_timeout: float | None = None
    no_warm: bool = False  # boot even where a warm guest is up

    @classmethod
    def of(cls, values: Values, command: str) -> Matrix:
        """The values of `command`'s rows (kitl verify's lack RUN_ONLY's: their defaults)."""
        run = command == "run"
        return cls(
            kernels=tuple(values("kernel")),
            configs=tuple(values("config")) if run else (),
            workers=parse_workers(values("workers")),
            libbpf=values("libbpf"),
            output=values("output"),
            shard=values("shard"),
            timings=values("timings"),
            resume=values("resume"),
            expect=values("expect") if run else None,
            allow_outside=bool(values("allow_outside")) if run else False,
            accel=values("accel"),
            boot_timeout=values("boot_timeout"),
            cell_timeout=values("cell_timeout") if run else None,
            no_warm=bool(values("no_warm")),
        )

    def value(self, dest: str) -> object:
        """A row's value, by its dest."""
        return getattr(self, BY_DEST[dest].field_name or dest)

    def argv(self, dests: Sequence[str], command: str) -> list[str]:
        """The pytest arguments that carry the rows `dests` of `command`."""
        rows = {o.dest for o in table(command)}
        return [a for d in dests if d in rows for a in BY_DEST[d].argv(self.value(d))]


def add_cli_arguments(
    parser: argparse.ArgumentParser, command: str, between: Sequence[Option] = ()
) -> None:
    """`command`'s shared options; `between` (kitl verify's own) after the kernels."""
    rows = table(command)
    for row in (rows[0], *between, *rows[1:]):
        said = row.help is not None and "{command}" in row.help
        (replace(row, help=str(row.help).format(command=command)) if said else row).add_cli(parser)


add_pytest_options = verify_options.add_pytest_options
