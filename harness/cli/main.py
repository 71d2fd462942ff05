"""kitl's command line: a thin layer that parses arguments and calls the stage modules.

Every user error is one line `kitl: ...` with exit 2; run failures are one line with exit 1
(or a typed outcome in the results); no traceback reaches the user for either.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import __version__, interrupts
from harness.cli import repro, runner, verify
from harness.cli.progress import DownloadProgress, stderr
from harness.errors import DISK_ERRNOS, KitlError, UsageError, outcome_for_error
from harness.kernel import debian, kbuild
from harness.kernel.cache import Cache
from harness.kernel.catalog import CatalogEntry
from harness.kernel.lockfile import LockedKernel
from harness.kernel.resolve import Kernels
from harness.kernel.store import Kernel
from harness.outcome import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Outcome, exit_code
from harness.report import render
from harness.results import compare
from harness.results.runs import merge_runs
from harness.scenario import loader, model, shape
from harness.vm import accel
from harness.vm.bootcheck import BootCheck, check
from harness.vm.machine import VM, GuestSettings, Launcher, free_port
from harness.vm.slots import GuestSlots

MERGE_SHOWN = 20  # duplicate cells listed by kitl merge; results.json has them all


def _matrix_commands(sub: Any) -> None:
    p = sub.add_parser("merge", help="combine shard run directories into one, with reports")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--output", type=Path, required=True, help="the merged run directory")
    p = sub.add_parser("repro", help="one cell of a run again: same kernel, sysctls, object")
    repro.add_arguments(p)
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
        p.add_argument(
            "--accel",
            default="auto",
            choices=accel.ACCELS,
            help="auto probes KVM once per host and falls back to TCG",
        )
        p.add_argument("--boot-timeout", type=float, default=None, metavar="SECONDS")
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
    vm_options(p)

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
    return parser


# -- kernels ---------------------------------------------------------------------------------
def _kernel_row(ks: Kernels, entry: CatalogEntry) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": entry.name,
        "default": entry.default,
        "description": entry.description,
    }
    try:
        locked = ks.locked(entry) if entry.debian else None
    except UsageError as exc:
        row.update(release=None, fetched=False, lock_error=str(exc))
        return row
    if locked is not None:
        row.update(
            release=locked.release, version=locked.version, suite=locked.suite, digest=locked.digest
        )
    kernel = ks.installed(entry)
    row["fetched"] = kernel is not None
    if kernel is not None:
        row.update(
            release=kernel.release,
            btf=kernel.has_btf_config,
            netdevsim=str(kernel.netdevsim) if kernel.netdevsim else None,
            config=kernel.key_flags(),
            vmlinuz=str(kernel.vmlinuz),
        )
    return row


def cmd_kernels_list(args: argparse.Namespace) -> int:
    ks = Kernels.open()
    rows = [_kernel_row(ks, e) for e in ks.catalog.entries]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'NAME':<13} {'RELEASE':<24} {'FETCHED':<8} {'BTF':<4} {'NSIM':<5} KEY CONFIG")
    for r in rows:
        flags = ""
        if r.get("config"):
            flags = " ".join(
                f"{k.removeprefix('CONFIG_')}={v}"
                for k, v in r["config"].items()
                if k
                in ("CONFIG_BPF_JIT_ALWAYS_ON", "CONFIG_BPF_LSM", "CONFIG_BPF_UNPRIV_DEFAULT_OFF")
            )
        btf = "-" if not r["fetched"] else ("yes" if r.get("btf") else "no")
        nsim = "-" if not r["fetched"] else ("yes" if r.get("netdevsim") else "no")
        name = r["name"] + ("*" if r["default"] else "")
        print(
            f"{name:<13} {r.get('release') or '?':<24} {'yes' if r['fetched'] else 'no':<8} "
            f"{btf:<4} {nsim:<5} {flags}"
        )
    print("(* = default kernel)")
    return EXIT_OK


def cmd_kernels_fetch(args: argparse.Namespace) -> int:
    ks = Kernels.open()
    entries = ks.catalog.select(args.names)
    if args.dry_run:
        for entry in entries:
            if entry.build is not None:
                _, pkg = ks.source_package(entry.build.source)
                print(f"{entry.name} source {pkg.url} sha256:{pkg.sha256}")
                for argv in kbuild.commands(entry.build, Path("linux-source")):
                    print(f"{entry.name} build {shlex.join(argv)}")
            if entry.debian is None:
                continue
            for role, pkg in ks.locked(entry).packages:
                print(f"{entry.name} {role} {pkg.url} sha256:{pkg.sha256}")
        return EXIT_OK
    results = []
    with DownloadProgress() as progress:
        for entry in entries:
            started = time.monotonic()
            kernel = ks.get(entry.name, progress)
            results.append(
                {
                    "name": entry.name,
                    "release": kernel.release,
                    "seconds": round(time.monotonic() - started, 2),
                    "netdevsim": kernel.netdevsim is not None,
                }
            )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['name']}: {r['release']} ready ({r['seconds']}s)")
    return EXIT_OK


def cmd_kernels_info(args: argparse.Namespace) -> int:
    ks = Kernels.open()
    entry = ks.catalog.get(args.name)
    row = _kernel_row(ks, entry)
    if entry.debian is not None and "lock_error" not in row:
        locked = ks.locked(entry)
        row["packages"] = [
            {
                "role": r,
                "name": p.name,
                "version": p.version,
                "url": p.url,
                "sha256": p.sha256,
                "size": p.size,
            }
            for r, p in locked.packages
        ]
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        for key, value in row.items():
            if key == "packages":
                print("packages:")
                for p in value:
                    print(f"  {p['role']:<15} {p['name']} {p['version']}")
            elif key == "config":
                print("config:")
                for k, v in value.items():
                    print(f"  {k}={v}")
            else:
                print(f"{key}: {value}")
    return EXIT_OK


def cmd_kernels_lock(args: argparse.Namespace) -> int:
    ks = Kernels.open()
    entries = [e for e in ks.catalog.select(args.names or ks.catalog.names()) if e.debian]
    if not args.update:
        problems = []
        for entry in entries:
            try:
                ks.locked(entry)
            except UsageError as exc:
                problems.append(str(exc))
        for p in problems:
            print(f"kitl: {p}", file=sys.stderr)
        if not problems:
            print(f"{ks.lock.path}: {len(entries)} kernels pinned, consistent with the catalog")
        return EXIT_USAGE if problems else EXIT_OK
    suites = {s for e in entries if e.debian for s in e.debian.suites}
    archive = debian.Archive(ks.store.cache, suites)
    stderr.print(f"kitl: updating the private package index ({', '.join(sorted(suites))})")
    archive.update()
    index = archive.index()
    changes = []
    for entry in entries:
        assert entry.debian is not None
        resolved = debian.resolve_series(entry.debian, index)
        new = LockedKernel.from_resolved(entry, resolved)
        old = ks.lock.kernels.get(entry.name)
        if old is None or old.version != new.version or old.packages != new.packages:
            changes.append((entry.name, old.version if old else None, new.version))
        ks.lock.kernels[entry.name] = new
    ks.lock.write()
    for name, old_v, new_v in changes:
        print(f"{name}: {old_v or '(new)'} -> {new_v}")
    if not changes:
        print("kernels.lock is up to date")
    return EXIT_OK


# -- booting ---------------------------------------------------------------------------------
def _decide_accel(args: argparse.Namespace, cache: Cache, probe_kernel: Kernel | None) -> str:
    probe = (lambda: accel.qemu_kvm_probe(probe_kernel.vmlinuz)) if probe_kernel else None
    decision = accel.decide(args.accel, cache, probe)
    if decision.probed or (
        args.accel == "auto"
        and decision.accel == "tcg"
        and "no usable" not in decision.reason
        and not _announced(cache)
    ):
        stderr.print(f"kitl: using {decision.accel.upper()}: {decision.reason}")
    return decision.accel


def _announced(cache: Cache) -> bool:
    """Say the KVM fallback once per host, not on every command."""
    marker = cache.host_dir / "accel-announced"
    if marker.exists():
        return True
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return False


def _vm(kernel: Kernel, args: argparse.Namespace, accel_name: str, console: Path) -> VM:
    settings = GuestSettings(
        accel_name,
        boot_timeout=args.boot_timeout,
        cpus=args.cpus,
        memory=args.memory,
        slots=GuestSlots.for_cache(Cache.default()),
        launcher=args.launcher,
    )
    return settings.vm(kernel, console)


def _dry_run(kernels: Sequence[Kernel], args: argparse.Namespace, accel_name: str) -> int:
    for kernel in kernels:
        vm = _vm(kernel, args, accel_name, Path("/dev/null"))
        spec = vm.spec(free_port(), Path(tempfile.gettempdir()) / "kitl-vm-XXXXXX")
        print(shlex.join(vm.launcher.argv(spec)))
    return EXIT_OK


def cmd_boot(args: argparse.Namespace) -> int:
    ks = Kernels.open()
    entries = ks.catalog.select(args.names)
    with DownloadProgress() as progress:
        kernels = [ks.get(e.name, progress) for e in entries]
    accel_name = _decide_accel(args, ks.store.cache, kernels[0] if kernels else None)
    if args.dry_run:
        return _dry_run(kernels, args, accel_name)
    out_dir = args.output or Path("runs") / time.strftime("boot-%Y%m%d-%H%M%S")
    checks: list[BootCheck] = []
    for kernel in kernels:
        console = out_dir / f"console-{kernel.name}.log"
        stderr.print(f"kitl: booting {kernel.name} ({kernel.release}, {accel_name})")
        try:
            with _vm(kernel, args, accel_name, console) as vm:
                result = check(vm, kernel)
        except KitlError as exc:
            result = BootCheck(
                kernel=kernel.name,
                expected_release=kernel.release,
                accel=accel_name,
                outcome=outcome_for_error(exc),
                problems=[str(exc)],
            )
        checks.append(result)
        if not args.json:
            nsim = result.netdevsim_netdev or "no"
            btf = "yes" if result.btf else "no"
            print(
                f"{kernel.name:<13} {result.release or '-':<24} BTF {btf:<3} "
                f"netdevsim {nsim:<8} boot {result.boot_seconds:6.1f}s  {result.accel}  "
                f"{result.outcome}"
                + (f"  ({'; '.join(result.problems)})" if result.problems else "")
            )
    if args.json:
        print(json.dumps([c.to_json() for c in checks], indent=2))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "boot.json").write_text(
        json.dumps([c.to_json() for c in checks], indent=2) + "\n", encoding="utf-8"
    )
    return exit_code(c.outcome for c in checks)


def _prepare(args: argparse.Namespace, name: str) -> tuple[Kernel, str, Kernels]:
    """The kernel (fetched if needed) and the accelerator for a one-kernel command."""
    ks = Kernels.open()
    with DownloadProgress() as progress:
        kernel = ks.get(name, progress)
    return kernel, _decide_accel(args, ks.store.cache, kernel), ks


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if not cmd:
        raise UsageError("kitl exec KERNEL -- CMD...: no command given")
    kernel, accel_name, _ = _prepare(args, args.name)
    if args.dry_run:
        return _dry_run([kernel], args, accel_name)
    with tempfile.TemporaryDirectory(prefix="kitl-exec-") as tmp:
        console = Path(tmp) / "console.log"
        try:
            with _vm(kernel, args, accel_name, console) as vm:

                def forward(stream: str, data: bytes) -> None:
                    target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
                    target.write(data)
                    target.flush()

                result = vm.run(cmd, timeout=args.timeout, on_output=forward)
                return result.status
        except KitlError as exc:
            outcome = outcome_for_error(exc)
            splat = getattr(exc, "splat_text", "")
            if outcome is Outcome.KERNEL_CRASH:
                # the message names the fingerprint and the crash site; then the splat
                print(f"kitl: {exc}", file=sys.stderr)
                print(splat, file=sys.stderr)
                return EXIT_FAILED
            raise


def cmd_shell(args: argparse.Namespace) -> int:
    kernel, accel_name, _ = _prepare(args, args.name)
    if args.dry_run:
        return _dry_run([kernel], args, accel_name)
    with (
        tempfile.TemporaryDirectory(prefix="kitl-shell-") as tmp,
        _vm(kernel, args, accel_name, Path(tmp) / "console.log") as vm,
    ):
        assert vm.record is not None
        stderr.print(
            f"kitl: {kernel.name} ({kernel.release}) up in "
            f"{vm.record.boot_seconds:.1f}s; exit the shell to stop the VM"
        )
        return subprocess.call(vm.ssh_command())


def cmd_accel(args: argparse.Namespace) -> int:
    cache = Cache.default()
    if args.reprobe:
        (cache.host_dir / "accel.json").unlink(missing_ok=True)
    ks = Kernels.open(cache)
    probe_kernel = next((k for e in ks.catalog.entries if (k := ks.installed(e))), None)
    decision = accel.decide(
        "auto",
        cache,
        (lambda: accel.qemu_kvm_probe(probe_kernel.vmlinuz)) if probe_kernel else None,
    )
    print(f"{decision.accel}: {decision.reason}")
    return EXIT_OK


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


def cmd_check(args: argparse.Namespace) -> int:
    scenarios = _load_scenarios(args.paths, args.allow_outside)
    for sc in scenarios:
        print(
            f"{sc.path}: {sc.name}: {len(sc.cases)} cases, configs "
            f"{', '.join(c.name for c in sc.configs)}: ok"
        )
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(shape.json_schema(), indent=2))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    return runner.run(args, _load_scenarios(args.paths or [runner.BUNDLED], args.allow_outside))


def cmd_verify(args: argparse.Namespace) -> int:
    return verify.run(args)


def cmd_repro(args: argparse.Namespace) -> int:
    return repro.run(args)


def cmd_report(args: argparse.Namespace) -> int:
    return render.run(args)


def cmd_compare(args: argparse.Namespace) -> int:
    return compare.run(args)


def cmd_merge(args: argparse.Namespace) -> int:
    merged, duplicates = merge_runs(args.runs, args.output)
    for path in render.render_all(args.output):
        print(path)
    print(f"kitl: {len(merged)} cells from {len(args.runs)} run directories in {args.output}")
    if duplicates:
        print(f"kitl: {len(duplicates)} cells were in more than one run:", file=sys.stderr)
        for duplicate in duplicates[:MERGE_SHOWN]:
            print(f"  {duplicate.describe()}", file=sys.stderr)
        if len(duplicates) > MERGE_SHOWN:
            rest = len(duplicates) - MERGE_SHOWN
            print(f"  ... and {rest} more (all in results.json: run.duplicates)", file=sys.stderr)
    return exit_code(cell.outcome for cell in merged)


COMMANDS = {
    ("kernels", "list"): cmd_kernels_list,
    ("kernels", "fetch"): cmd_kernels_fetch,
    ("kernels", "info"): cmd_kernels_info,
    ("kernels", "lock"): cmd_kernels_lock,
    ("boot", None): cmd_boot,
    ("exec", None): cmd_exec,
    ("shell", None): cmd_shell,
    ("accel", None): cmd_accel,
    ("run", None): cmd_run,
    ("report", None): cmd_report,
    ("compare", None): cmd_compare,
    ("merge", None): cmd_merge,
    ("repro", None): cmd_repro,
    ("verify", None): cmd_verify,
    ("check", None): cmd_check,
    ("schema", None): cmd_schema,
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
    if args.command == "exec":
        args.cmd = [*args.cmd, *command]
    elif command:
        args = make_parser().parse_args([*own, "--", *command])
    args.launcher = launcher
    handler = COMMANDS[(args.command, getattr(args, "kernels_command", None))]
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="kitl: %(name)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C, so every context manager tears its VM down (and a
    # signal during a teardown waits for it to finish)
    restore = interrupts.install()
    try:
        return handler(args)
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
        return 128 + signum
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
