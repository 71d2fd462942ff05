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
from typing import Any

from harness.cli import runner
from harness.errors import UsageError
from harness.kernel.resolve import Kernels
from harness.outcome import EXIT_OK
from harness.results.rundir import label
from harness.results.runs import load_run
from harness.run.matrix import Shard, plan, shard_cells
from harness.scenario.model import RunConfig
from harness.scenario.objects import (
    VerifyOptions,
    check_log_level,
    check_names,
    check_pin_root,
    checked_objects,
    duplicate_names,
    load_bulk,
    parse_attach_target,
    parse_config,
    parse_flags,
    parse_global,
    parse_hex,
    parse_map,
    parse_map_value,
    parse_privileges,
    parse_tail_call,
    scenario_for_object,
)
from harness.vm import accel

TABLE_ROWS = 60  # programs in the terminal's table before only the unexpected ones are shown


# --- the command ---------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=Path, metavar="OBJ_OR_DIR")
    p.add_argument("--kernels", default="", metavar="A,B", help="default: the default kernels")
    p.add_argument("--kernel", action="append", default=[], help="one kernel (repeatable)")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME:SYSCTL=VALUE[,...]",
        help="a config of sysctls, e.g. interp:net.core.bpf_jit_enable=0 (repeatable)",
    )
    p.add_argument("--prog", action="append", default=[], metavar="GLOB", help="only these")
    p.add_argument("--log-level", type=int, default=5, help="1 log, 2 verbose, 4 stats (5)")
    p.add_argument("--log-size", type=int, default=None, metavar="BYTES")
    p.add_argument("--flags", default="", metavar="BPF_F_X,BPF_F_Y", help="program load flags")
    p.add_argument("--btf", type=Path, default=None, metavar="FILE", help="btf_custom_path")
    p.add_argument(
        "--privilege",
        default="privileged",
        metavar="PROFILE[,PROFILE]",
        help="privileged (default), bpf (CAP_BPF+CAP_PERFMON), bpf-net (and CAP_NET_ADMIN), "
        "unprivileged, or both (privileged,unprivileged)",
    )
    p.add_argument("--test-run", action="store_true", help="record each program's test_run retval")
    p.add_argument(
        "--test-run-input",
        default=None,
        metavar="HEX",
        help="test_run input: the packet of packet programs (>= 14 bytes), else the context",
    )
    p.add_argument(
        "--global",
        dest="globals",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="preset a global variable before the load, like veristat -G (repeatable)",
    )
    p.add_argument(
        "--map",
        dest="maps",
        action="append",
        default=[],
        metavar="NAME:max_entries=N[,value_size=N]",
        help="size a map as the loader's user space would before the load (repeatable)",
    )
    p.add_argument(
        "--map-set",
        dest="map_values",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="write an entry into a map after the load, before test_run (repeatable)",
    )
    p.add_argument(
        "--tail-call",
        dest="tail_calls",
        action="append",
        default=[],
        metavar="PROG_ARRAY:SLOT=PROGRAM",
        help="fill a prog array slot with a program after the load, as user space does",
    )
    p.add_argument(
        "--attach-target",
        dest="attach_targets",
        action="append",
        default=[],
        metavar="PROG=FUNC",
        help="retarget a tracing program (fentry/dummy -> FUNC) before its load (repeatable)",
    )
    p.add_argument(
        "--no-fixups",
        dest="fixups",
        action="store_false",
        help="load maps with max_entries 0 as they are (default: 1, as veristat does)",
    )
    p.add_argument(
        "--no-pinning", dest="pinning", action="store_false", help="pin no map (veristat's way)"
    )
    p.add_argument("--pin-root", default=None, metavar="DIR", help="pin maps under this bpffs dir")
    p.add_argument(
        "--annotations",
        action="store_true",
        help="expectations from the kernel selftests' decl tags (__success, __msg...)",
    )
    p.add_argument(
        "--whole-object",
        action="store_true",
        help="load every program of the object with each one, as a skeleton does",
    )
    p.add_argument("--expect", type=Path, default=None, metavar="FILE", help="bulk expectations")
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
    return VerifyOptions(
        programs=tuple(args.prog),
        log_level=check_log_level(args.log_level),
        log_size=args.log_size,
        flags=parse_flags(args.flags),
        btf_custom_path=args.btf.resolve() if args.btf else None,
        privileges=parse_privileges(args.privilege),
        test_run=args.test_run,
        configs=tuple(parse_config(c) for c in args.config) or (RunConfig("default"),),
        globals=tuple(parse_global(g) for g in args.globals),
        test_run_input=parse_hex(args.test_run_input),
        maps=tuple(parse_map(m) for m in args.maps),
        attach_targets=tuple(parse_attach_target(t) for t in args.attach_targets),
        fixups=args.fixups,
        pinning=args.pinning,
        pin_root=check_pin_root(args.pin_root),
        whole_object=args.whole_object,
        map_values=tuple(parse_map_value(v) for v in args.map_values),
        annotations=args.annotations,
        tail_calls=tuple(parse_tail_call(t) for t in args.tail_calls),
    )


def verify_argv(args: argparse.Namespace, objects: Sequence[Path], run_dir: Path) -> list[str]:
    """The exact pytest command `kitl verify` executes."""
    argv = runner.pytest_base(run_dir, args.accel, "--kitl-verify")
    argv += ["--kitl-log-level", str(args.log_level), "--kitl-privilege", args.privilege]
    if loaders := runner.libbpf_option(args.libbpf):
        argv += ["--kitl-libbpf", loaders]
    kernels = runner.names(args.kernels, args.kernel)
    if kernels:
        argv += ["--kitl-kernels", ",".join(kernels)]
    for flag, value in (
        ("--kitl-prog", ",".join(args.prog)),
        ("--kitl-flags", args.flags),
        ("--kitl-btf", str(args.btf.resolve()) if args.btf else ""),
        ("--kitl-verify-expect", str(args.expect.resolve()) if args.expect else ""),
        ("--kitl-shard", args.shard or ""),
        ("--kitl-log-size", str(args.log_size or "")),
        ("--kitl-boot-timeout", str(args.boot_timeout or "")),
    ):
        if value:
            argv += [flag, value]
    for config in args.config:
        argv += ["--kitl-verify-config", config]
    for preset in args.globals:
        argv += ["--kitl-global", preset]
    for size in args.maps:
        argv += ["--kitl-map", size]
    for target in args.attach_targets:
        argv += ["--kitl-attach-target", target]
    for value in args.map_values:
        argv += ["--kitl-map-set", value]
    for slot in args.tail_calls:
        argv += ["--kitl-tail-call", slot]
    if not args.fixups:
        argv.append("--kitl-no-fixups")
    if not args.pinning:
        argv.append("--kitl-no-pinning")
    if args.pin_root:
        argv += ["--kitl-pin-root", args.pin_root]
    if args.whole_object:
        argv.append("--kitl-whole-object")
    if args.annotations:
        argv.append("--kitl-annotations")
    if args.test_run_input:
        argv += ["--kitl-test-run-input", args.test_run_input]
    if args.test_run:
        argv.append("--kitl-test-run")
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

    def column(c: dict[str, Any]) -> str:
        return label(c["kernel"], c["config"], str(c.get("libbpf") or ""))

    columns = list(dict.fromkeys(column(c) for c in cells))
    rows: dict[str, dict[str, str]] = {}
    for c in cells:
        insns = (c.get("verifier") or {}).get("verified_insns") or ""
        observed = c.get("observed") or {}
        if c["outcome"] == "SKIPPED":
            verdict = "skipped"
        elif (observed.get("load") or {}).get("ok"):
            verdict = f"loaded {insns}".strip()
        else:
            verdict = str(observed.get("error_class") or c["outcome"]).lower()
        if c["outcome"] not in ("PASSED", "SKIPPED"):
            verdict = "!" + verdict  # not what was expected
        rows.setdefault(f"{c['scenario']}/{c['case']}", {})[column(c)] = verdict
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
    if len(cells) == 1 and cells[0].get("log_path"):
        print((run_dir / cells[0]["log_path"]).read_text(encoding="utf-8"), end="")
