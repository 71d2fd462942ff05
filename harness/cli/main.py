"""kitl's command line: a thin layer that parses arguments and calls the stage modules.

Every user error is one line `kitl: ...` with exit 2; run failures are one line with exit 1
(or a typed outcome in the results); no traceback reaches the user for either.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import __version__, interrupts
from harness.cli import (
    explain,
    guests,
    hostsetup,
    kernels,
    logdiff,
    plan,
    repro,
    requests,
    runner,
    verify,
    warm,
)
from harness.cli.requests import CheckRequest, MergeRequest, RunRequest
from harness.errors import DISK_ERRNOS, KitlError
from harness.outcome import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_code, exit_for_signal
from harness.report import render
from harness.results import compare
from harness.results.runs import merge_runs
from harness.run import options
from harness.scenario import loader, model, shape
from harness.vm.machine import Launcher

MERGE_SHOWN = 20  # duplicate cells listed by kitl merge; results.json has them all


def _matrix_commands(sub: Any) -> None:
    p = sub.add_parser("merge", help="combine shard run directories into one, with reports")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--output", type=Path, required=True, help="the merged run directory")
    p = sub.add_parser("repro", help="one cell of a run again: same kernel, sysctls, object")
    repro.add_arguments(p)
    p = sub.add_parser(
        "explain", help="a cell's verifier failure: its insn, C line, state, meaning and fixes"
    )
    explain.add_arguments(p)
    p = sub.add_parser(
        "diff", help="one program's verifier logs on two kernels or in two runs, aligned"
    )
    logdiff.add_arguments(p)
    p = sub.add_parser(
        "verify", help="load every program of BPF objects on the matrix: verdicts, stats, logs"
    )
    verify.add_arguments(p)


def _kernels_commands(sub: Any) -> None:
    kernels = sub.add_parser("kernels", help="list, fetch, lock and describe kernels")
    ksub = kernels.add_subparsers(dest="kernels_command", required=True, metavar="ACTION")
    p = ksub.add_parser("list", help="the catalog: name, release, fetched?, BTF, key CONFIG_ flags")
    p.add_argument("--json", action="store_true")
    p = ksub.add_parser(
        "fetch",
        help="download and unpack kernels, or build the build: ones (default: the default set)",
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print what would be downloaded")
    p = ksub.add_parser("info", help="everything kitl knows about one kernel")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p = ksub.add_parser("lock", help="check kernels.lock, or move it with --update")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--update", action="store_true", help="re-resolve against Debian's archive")
    p.add_argument("--json", action="store_true")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kitl", description="Kernel-in-the-loop test harness for eBPF programs."
    )
    parser.add_argument("--version", action="version", version=f"kitl {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log host-side decisions on stderr: kernel files, accelerator, retries, slots",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _kernels_commands(sub)

    def vm_options(p: argparse.ArgumentParser) -> None:
        options.BY_DEST["accel"].add_cli(p)  # as kitl run and verify declare them
        options.BY_DEST["boot_timeout"].add_cli(p)
        p.add_argument("--cpus", type=int, default=2)
        p.add_argument("--memory", default="2G")
        p.add_argument("--dry-run", action="store_true", help="print the vng command and exit")

    p = sub.add_parser("boot", help="boot kernels and check them (release, BTF, veth, netdevsim)")
    p.add_argument("names", nargs="*", metavar="NAME", help="default: the default kernels")
    p.add_argument("--json", action="store_true")
    p.add_argument("--output", type=Path, default=None, help="directory for console logs")
    vm_options(p)

    p = sub.add_parser("exec", help="boot KERNEL, run a command in it, exit with its status")
    p.add_argument("name", metavar="KERNEL")
    p.add_argument("cmd", nargs="*", metavar="-- CMD", help="the command, after --")
    p.add_argument("--timeout", type=float, default=600.0, help="for the command (seconds)")
    p.add_argument("--no-warm", action="store_true", help=repro.NO_WARM_HELP)
    vm_options(p)

    p = sub.add_parser("up", help="boot kernels and keep them up for later commands (warm)")
    warm.add_up_arguments(p)
    vm_options(p)
    p = sub.add_parser("ps", help="list the warm guests: uptime, uses, cells served, state")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("down", help="stop warm guests (default: all of them)")
    p.add_argument("names", nargs="*", metavar="KERNEL")

    p = sub.add_parser("shell", help="boot KERNEL and open an interactive shell in it")
    p.add_argument("name", metavar="KERNEL")
    vm_options(p)

    p = sub.add_parser(
        "run", help="run the matrix: scenarios x kernels x configs (verdicts, effects, timings)"
    )
    runner.add_arguments(p)

    p = sub.add_parser("report", help="render JUnit, Markdown, HTML and CSV from a run directory")
    render.add_arguments(p)

    p = sub.add_parser("compare", help="gate NEW against BASE: verdict flips, insns/states growth")
    compare.add_arguments(p)

    _matrix_commands(sub)

    p = sub.add_parser("check", help="validate scenarios without booting anything")
    p.add_argument("paths", nargs="+", type=Path, metavar="SCENARIO_OR_DIR")
    p.add_argument("--allow-outside", action="store_true")

    sub.add_parser("schema", help="print the scenario JSON Schema")

    p = sub.add_parser("accel", help="show which accelerator --accel auto picks here")
    p.add_argument("--reprobe", action="store_true", help="forget the cached verdict")
    _host_commands(sub)
    return parser


def _host_commands(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="the shards of kitl run --shard I/N, grouped by kernel, as a CI matrix"
    )
    plan.add_arguments(p)
    sub.add_parser("doctor", help="check this host (QEMU, KVM, tools, cache) and say how to fix it")
    p = sub.add_parser("setup", help="install the Debian/Ubuntu packages kitl needs")
    p.add_argument("--yes", action="store_true", help="do not ask before installing")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--tests", action="store_true", help="also what kitl's own tests need")


def _load_scenarios(paths: Sequence[Path], allow_outside: bool) -> list[model.Scenario]:
    errors: list[str] = []
    loaded = []
    for path in loader.files_under(paths, ".yaml", "scenario", "scenario files"):
        try:
            loaded.append(loader.load_scenario(path, allow_outside=allow_outside))
        except loader.ScenarioError as exc:
            errors += [str(e) for e in exc.errors]
    if errors:
        for line in errors:
            print(f"kitl: {line}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return loaded


def check(request: CheckRequest) -> int:
    scenarios = _load_scenarios(request.paths, request.allow_outside)
    for sc in scenarios:
        print(
            f"{sc.path}: {sc.name}: {len(sc.every_case)} cases, configs "
            f"{', '.join(c.name for c in sc.configs)}: ok"
        )
    return EXIT_OK


def schema() -> int:
    print(json.dumps(shape.json_schema(), indent=2))
    return EXIT_OK


def run(request: RunRequest) -> int:
    paths = request.paths or (requests.BUNDLED,)
    return runner.run(request, _load_scenarios(paths, request.matrix.allow_outside))


def plan_shards(request: plan.PlanRequest) -> int:
    paths = request.paths or (requests.BUNDLED,)
    return plan.run(request, _load_scenarios(paths, request.matrix.allow_outside))


def merge(request: MergeRequest) -> int:
    merged, duplicates = merge_runs(list(request.runs), request.output)
    for path in render.render_all(request.output):
        print(path)
    print(f"kitl: {len(merged)} cells from {len(request.runs)} run directories in {request.output}")
    if duplicates:
        print(f"kitl: {len(duplicates)} cells were in more than one run:", file=sys.stderr)
        for duplicate in duplicates[:MERGE_SHOWN]:
            print(f"  {duplicate.describe()}", file=sys.stderr)
        if len(duplicates) > MERGE_SHOWN:
            rest = len(duplicates) - MERGE_SHOWN
            print(f"  ... and {rest} more (all in results.json: run.duplicates)", file=sys.stderr)
    return exit_code(cell.outcome for cell in merged)


@dataclass(frozen=True)
class Invocation:
    """What main was given for a command: argparse's output, exec's command after -- and
    the launcher of guests (None: virtme-ng; the tests give a fake one)."""

    args: argparse.Namespace
    tail: tuple[str, ...] = ()
    launcher: Launcher | None = None


# Each command: its request, built here once from the invocation, handed to its stage.
COMMANDS: dict[tuple[str, str | None], Callable[[Invocation], int]] = {
    ("kernels", "list"): lambda i: kernels.list_kernels(requests.kernels(i.args)),
    ("kernels", "fetch"): lambda i: kernels.fetch(requests.kernels(i.args)),
    ("kernels", "info"): lambda i: kernels.info(requests.kernels(i.args)),
    ("kernels", "lock"): lambda i: kernels.lock(requests.kernels(i.args)),
    ("boot", None): lambda i: guests.boot(requests.guest(i.args, i.launcher)),
    ("exec", None): lambda i: guests.exec_(requests.guest(i.args, i.launcher, i.tail)),
    ("shell", None): lambda i: guests.shell(requests.guest(i.args, i.launcher)),
    ("accel", None): lambda i: guests.show_accel(i.args.reprobe),
    ("up", None): lambda i: warm.up(requests.up(i.args, i.launcher)),
    ("ps", None): lambda i: warm.ps(i.args.json),
    ("down", None): lambda i: warm.down(tuple(i.args.names)),
    ("run", None): lambda i: run(requests.run(i.args)),
    ("report", None): lambda i: render.run(i.args.run_dir, i.args.output, i.args.format),
    ("compare", None): lambda i: compare.run(requests.compare(i.args)),
    ("merge", None): lambda i: merge(requests.merge(i.args)),
    ("repro", None): lambda i: repro.run(requests.repro(i.args)),
    ("explain", None): lambda i: explain.run(requests.explain(i.args)),
    ("diff", None): lambda i: logdiff.run(requests.diff(i.args)),
    ("verify", None): lambda i: verify.run(requests.verify(i.args)),
    ("check", None): lambda i: check(requests.check(i.args)),
    ("schema", None): lambda i: schema(),
    ("plan", None): lambda i: plan_shards(requests.plan(i.args)),
    ("doctor", None): lambda i: hostsetup.run_doctor(),
    ("setup", None): lambda i: hostsetup.setup(requests.setup(i.args)),
}


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """`kitl exec [OPTIONS] KERNEL [OPTIONS] -- CMD...`: everything after the first `--` is
    the guest command, untouched by option parsing (so options may follow KERNEL)."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None, *, launcher: Launcher | None = None) -> int:
    """kitl's exit status for `argv`; `launcher` starts the guests of boot, exec and shell
    (None: virtme-ng; the tests give a fake one behind the same interface)."""
    own, command = _split_command(list(sys.argv[1:] if argv is None else argv))
    args = make_parser().parse_args(own)
    if args.command != "exec" and command:
        args = make_parser().parse_args([*own, "--", *command])
    handler = COMMANDS[(args.command, getattr(args, "kernels_command", None))]
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="kitl: %(name)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C, so every context manager tears its VM down (and a
    # signal during a teardown waits for it to finish)
    restore = interrupts.install()
    try:
        return handler(Invocation(args, tuple(command), launcher))
    except KitlError as exc:
        print(f"kitl: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise  # anything else is a bug: its traceback is what we need to see
        # the disk (cache, run directory) failed under a step that has no typed error
        where = f"{exc.filename}: " if exc.filename else ""  # a failed write names none
        print(
            f"kitl: {where}{exc.strerror or exc} (check the disk kitl writes to, then rerun)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, interrupts.Stopped) else signal.SIGINT
        print(f"kitl: interrupted ({interrupts.signal_name(signum)})", file=sys.stderr)
        return exit_for_signal(signum)
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
