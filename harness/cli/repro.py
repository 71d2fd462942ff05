"""`kitl repro RUN_DIR CELL_ID`: one cell of a run again, locally, with the full verifier log.

Boots the kernel the cell ran on (the digest must match what the cache holds now), sets the
sysctls the cell had in effect, loads the very object the run loaded (by content hash) with
verifier log level 2, writes the log to RUN_DIR/repro/ and pages it.  With --shell the
program stays loaded and the user gets a shell in the guest, bpftool at hand.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.bpf.causes import explain
from harness.bpf.verifier_log import parse_log
from harness.cli.progress import DownloadProgress, stderr
from harness.cli.requests import ReproRequest
from harness.errors import UsageError
from harness.guest import protocol
from harness.guest.libbpf_load import BPF_LOG_LEVEL2, BPF_LOG_STATS
from harness.guest.replies import LoadReply
from harness.kernel import libbpf_build
from harness.kernel.cache import Cache
from harness.kernel.resolve import Kernels
from harness.kernel.store import Kernel
from harness.outcome import EXIT_FAILED, EXIT_OK
from harness.results.record import CellRecord
from harness.results.rundir import safe_name
from harness.results.runs import load_run
from harness.run.engine import build_objects
from harness.run.matrix import newest
from harness.scenario import objects
from harness.scenario.loader import load_scenario
from harness.scenario.model import Scenario
from harness.scenario.verify_options import PRIVILEGED, UNPRIVILEGED, VerifyOptions
from harness.vm import accel
from harness.vm.agentclient import AgentClient
from harness.vm.channel import object_path_in_guest
from harness.vm.machine import VM, GuestSettings
from harness.vm.slots import GuestSlots
from harness.vm.warmclient import guest_factory

NO_WARM_HELP = "boot the kernel even where a warm guest of it is up (kitl up)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("cell_id", metavar="CELL_ID", help="e.g. 'xdp-basics::drop-udp[debian-6.1-jit]'")
    p.add_argument(
        "--log-level",
        type=int,
        default=BPF_LOG_LEVEL2 | BPF_LOG_STATS,
        help="default 6 (2 + stats)",
    )
    p.add_argument("--shell", action="store_true", help="stay in the guest, the program loaded")
    p.add_argument("--no-pager", action="store_true", help="print the log instead of paging it")
    p.add_argument(
        "--allow-other-kernel",
        action="store_true",
        help="boot even if the cached kernel's digest differs from the run's",
    )
    p.add_argument("--accel", default="auto", choices=accel.ACCELS)
    p.add_argument("--dry-run", action="store_true", help="say what would be booted and loaded")
    p.add_argument("--no-warm", action="store_true", help=NO_WARM_HELP)


def find_cell(run_dir: Path, cell_id: str) -> CellRecord:
    cells = load_run(run_dir).cells if run_dir.is_dir() else []
    if not cells:
        raise UsageError(f"{run_dir}: not a kitl run directory (no results)")
    for cell in cells:
        if cell.cell_id == cell_id:
            return cell
    ids = [c.cell_id for c in cells]
    close = difflib.get_close_matches(cell_id, ids, n=3)
    hint = "did you mean " + " or ".join(repr(c) for c in close) if close else None
    raise UsageError(f"{run_dir}: no cell {cell_id!r}", hint=hint)


def command_line(run_dir: Path, cell_id: str) -> str:
    return shlex.join(["kitl", "repro", str(run_dir), cell_id])


def _not_a_loader_case(scenario: Scenario, case: str, cell_id: str, kernel: str) -> None:
    if any(c.name == case for c in scenario.loader_cases):
        raise UsageError(
            f"{cell_id}: a loader case: its own loader loads the programs, there is no one "
            "program for kitl repro to reload",
            hint=f"run it again: kitl run {scenario.path} --kernel {kernel}",
        )


def _copy_into(vm: VM, obj: Path) -> str:
    """The object in the guest, where a run's engine puts it (its name kept)."""
    data = obj.read_bytes()
    remote = object_path_in_guest(obj, hashlib.sha256(data).hexdigest())
    vm.channel.put(data, remote)
    return remote


def run(request: ReproRequest) -> int:
    cell = find_cell(request.run_dir, request.cell_id)
    if cell.scenario == "*":
        raise UsageError(f"{request.cell_id} is a run-level failure, not a program to reload")
    scenario_file = Path(cell.scenario_file)
    if not scenario_file.is_file():
        raise UsageError(f"{request.cell_id}: its scenario file {scenario_file} is gone")
    if scenario_file.suffix == ".o":  # a `kitl verify` cell: the object is the scenario
        scenario = objects.scenario_for_object(
            scenario_file, VerifyOptions(privileges=(PRIVILEGED, UNPRIVILEGED))
        )
    else:
        scenario = load_scenario(scenario_file)
    case = next((c for c in scenario.cases if c.name == cell.case), None)
    _not_a_loader_case(scenario, cell.case, request.cell_id, cell.kernel)
    if case is None:
        raise UsageError(f"{scenario_file}: has no case {cell.case!r} any more")
    ks = Kernels.open(Cache.default())
    with DownloadProgress() as progress:
        kernel = ks.get(cell.kernel, progress)
    if cell.kernel_digest and cell.kernel_digest != kernel.digest:
        message = f"{kernel.name}: the cached kernel is not the one the run used"
        if not request.allow_other_kernel:
            raise UsageError(
                message,
                hint=f"run {cell.kernel_digest[:12]}, cache {kernel.digest[:12]}; "
                "--allow-other-kernel boots it anyway",
            )
        stderr.print(f"kitl: warning: {message}")
    obj = _object(cell, scenario, case.object, kernel, ks.store.cache)
    sysctls = {k: v for k, v in cell.sysctls.items() if v is not None}
    if request.dry_run:
        print(f"boot {kernel.name} ({kernel.release}, digest {kernel.digest[:12]})")
        print(f"sysctl {' '.join(f'{k}={v}' for k, v in sysctls.items())}")
        print(f"load {obj} program {case.program} log_level {request.log_level}")
        return EXIT_OK
    cache = ks.store.cache
    decision = accel.decide(request.accel, cache, lambda: accel.qemu_kvm_probe(kernel.vmlinuz))
    loader = libbpf_build.loader_path(cell.libbpf, ks)  # the cell's libbpf
    out = request.run_dir / "repro" / f"{safe_name(request.cell_id)}.verifier.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="kitl-repro-") as tmp,
        _guest(request, decision.accel, cache)(kernel, Path(tmp) / "console.log") as vm,
        AgentClient(vm, libbpf=loader) as agent,
    ):
        if sysctls:
            agent.send(protocol.Sysctl(sysctls))
        remote = _copy_into(vm, obj)
        load_args: protocol.LoadArgs = {
            "prog_flags": case.load.flags_value,
            "privilege": case.load.privilege,
        }
        # what the run set on the object (map sizes, globals, targets, pinning), as
        # recorded: the load's check refuses a key it does not take
        wire = {**load_args, **cell.observed.load_args}
        wire.update(object=remote, program=case.program, log_level=request.log_level)
        load = agent.send(protocol.Load.from_wire(wire))
        log = load.log or load.libbpf_messages
        out.write_text(log, encoding="utf-8")
        stderr.print(
            f"kitl: {request.cell_id} on {kernel.release}: {_verdict(load, log)}; log in {out}"
        )
        _page(out, request.no_pager)
        if request.open_shell:
            stderr.print(
                f"kitl: object at {remote} in the guest"
                + (", program loaded (bpftool prog show)" if load.ok else "")
                + "; exit the shell to stop the VM"
            )
            subprocess.call(vm.ssh_command())
    same = load.ok == cell.observed.load_ok
    return EXIT_OK if same else EXIT_FAILED  # the load did what it did in the run


def _guest(request: ReproRequest, accel_name: str, cache: Cache) -> Callable[[Kernel, Path], VM]:
    """A warm guest (kitl up) where one is up, except for --shell: a warm guest's shell
    is not the user's to keep (and its SSH key stays with its daemon)."""
    settings = GuestSettings(accel_name, slots=GuestSlots.for_cache(cache))
    return guest_factory(settings, use_warm=not (request.no_warm or request.open_shell))


def _verdict(load: LoadReply, log: str) -> str:
    """'loaded; 12 insns, 1 states' or the failure's class and cause, in one line."""
    stats = parse_log(log).stats
    figures = f"; {stats.insns} insns, {stats.total_states} states" if stats.insns else ""
    if load.ok:
        return f"loaded{figures}"
    cause = explain(load.to_wire())
    return f"failed, {cause.error_class}: {cause.message}{figures}"


def _object(cell: CellRecord, scenario: Any, name: str, kernel: Any, cache: Cache) -> Path:
    """The object the run loaded: the recorded file if it still has the recorded hash, else
    compiled again (the same source and header give the same bytes, and say so if not)."""
    recorded = Path(cell.object_file)
    digest = cell.object_sha256
    if recorded.is_file() and hashlib.sha256(recorded.read_bytes()).hexdigest() == digest:
        return recorded
    built = build_objects([scenario], newest([kernel]), cache)[(scenario.name, name)]
    if digest and hashlib.sha256(built.read_bytes()).hexdigest() != digest:
        stderr.print("kitl: warning: the object differs from the run's (source or header changed)")
    return built


def _page(path: Path, no_pager: bool) -> None:
    if no_pager or not sys.stdout.isatty():
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return
    pager = os.environ.get("PAGER") or ("less" if shutil.which("less") else "")
    if not pager:
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return
    subprocess.call([*pager.split(), str(path)])
