"""Running scenarios in one booted guest through its agent: the cells of one kernel.

Per config: sysctls are set (and read back) inside the running guest.  Per case: the
topology is built, the program loaded on its own, attached, driven, its maps read, then
everything is released and the topology torn down, so each case starts clean.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from harness.bpf import progtypes
from harness.bpf.elfobj import read_object
from harness.errors import KitlError, outcome_for_error
from harness.guest import protocol
from harness.guest.protocol import LoadArgs
from harness.guest.replies import ErrorKind, FactsReply
from harness.interrupts import DEFAULT_CELL_TIMEOUT, Watchdog, timed_out_reason
from harness.kernel.cache import Cache
from harness.kernel.store import Kernel
from harness.outcome import Outcome
from harness.results.record import Crash, amended
from harness.results.rundir import CellResult, RunDir
from harness.run.compile import compile_object, kernel_btf, vmlinux_h
from harness.run.judge import Observed, judge
from harness.run.loader_cell import judge_loader, loader_log, loader_request
from harness.run.records import (
    case_program,
    expect_json,
    map_rows,
    observed_json,
    user_paths,
    verifier_figures,
)
from harness.run.requests import (
    prepare_args,
    syscall_request,
    test_run_request,
    topology_request,
    traffic_request,
)
from harness.scenario.expect import Expect, kernel_version
from harness.scenario.model import (
    AnyCase,
    Case,
    CgroupAttach,
    LoaderCase,
    RunConfig,
    Scenario,
    SocketAttach,
    SyscallDrive,
    TcxAttach,
    TestRunDrive,
    TrafficDrive,
    XdpAttach,
)
from harness.vm import console as consolelog
from harness.vm import hostload
from harness.vm.agentclient import AgentCallError, AgentClient, clean, sysctls_to_restore
from harness.vm.channel import object_path_in_guest
from harness.vm.machine import VM

Report = Callable[[CellResult], None]
# load arguments a cell records so `kitl repro` sets the same things on the object
_REPLAYED_LOAD_ARGS = (
    "prog_flags", "privilege", "globals", "maps", "fixups", "pinning", "pin_root",
    "attach_target", "companions", "keep_caps", "unprivileged_maps_only",
)  # fmt: skip
CASE_TIMEOUT = 300.0  # generous: TCG, and a first load of a big object


def _verify_only(case: Case, expect: Expect) -> bool:
    """Whether nothing follows the case's load (no attach, drive, maps or events): the
    guest may load it from an object kept prepared and keep nothing (kitl verify's cells,
    as veristat loads)."""
    follows = case.attach or case.drive or case.setup_maps or case.tail_calls
    return not (follows or expect.events or expect.map)


def build_objects(
    scenarios: Sequence[Scenario], header_kernel: Kernel, cache: Cache
) -> dict[tuple[str, str], Path]:
    """Compile every `source:` object on the host (CO-RE, once, cached by content)."""
    header = vmlinux_h(kernel_btf(header_kernel), cache)
    built: dict[tuple[str, str], Path] = {}
    for scenario in scenarios:
        for obj in scenario.objects:
            if obj.source is not None:
                built[(scenario.name, obj.name)] = compile_object(
                    obj.source, header, cache, obj.cflags
                )
            elif obj.path is not None:
                built[(scenario.name, obj.name)] = obj.path
    return built


class Engine:
    def __init__(
        self,
        vm: VM,
        agent: AgentClient,
        kernel: Kernel,
        run: RunDir,
        objects: dict[tuple[str, str], Path],
        *,
        cache: Cache,
    ) -> None:
        self.vm, self.agent, self.kernel, self.run = vm, agent, kernel, run
        self.objects = objects
        self.cache = cache
        self._in_guest: dict[Path, str] = {}
        self._hashes: dict[Path, str] = {}
        self._slots: dict[Path, tuple[str, ...]] = {}
        self._guest_facts: FactsReply | None = None
        # the guest's console and dmesg logs, relative to the run directory (when known)
        self.guest_logs: tuple[str, str] = ("", "")
        self.libbpf = ""  # the loader as cells record it ("": the default loader)
        self._enums: dict[str, int] | None = None
        self.release = kernel.release
        # the sysctls of the config in effect in the guest, and what the kernel refused
        self._config: tuple[tuple[str, int | str], ...] | None = None
        self._sysctls: dict[str, int | str | None] | None = None
        self._refused = ""
        self._boot_sysctls: dict[str, str | None] | None = None
        self._touched: set[str] = set()
        # the wall-time budget of one cell (kitl run --cell-timeout), and the running one's
        self.cell_timeout = DEFAULT_CELL_TIMEOUT
        self._dog: Watchdog | None = None

    def _sha256(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._hashes[path]

    def _testing_flags(self, names: tuple[str, ...]) -> int:
        """The test flags this kernel takes (test_loader probes them the same way: a flag
        the kernel does not know fails every load with EINVAL)."""
        try:
            version = kernel_version(self.kernel.release)
        except ValueError:
            return 0
        return sum(
            progtypes.PROG_LOAD_FLAGS[n]
            for n in names
            if version >= progtypes.PROG_LOAD_FLAG_SINCE.get(n, (99,))
        )

    def _slot_programs(self, path: Path) -> tuple[str, ...]:
        """The programs the object's prog arrays name statically (read once per object; an
        object kitl cannot read has none, and libbpf says what is wrong with it)."""
        if path not in self._slots:
            try:
                self._slots[path] = read_object(path).slot_programs
            except ValueError:
                self._slots[path] = ()
        return self._slots[path]

    def guest_object(self, path: Path) -> str:
        """Copy an object into the guest's tmpfs once (host paths created after boot may
        be invisible through the guest's overlay of /tmp)."""
        if path not in self._in_guest:
            remote = object_path_in_guest(path, self._sha256(path))  # hashed once, kept
            self.vm.channel.put(path.read_bytes(), remote)
            self._in_guest[path] = remote
        return self._in_guest[path]

    def run_scenario(
        self, scenario: Scenario, configs: Sequence[str] | None, report: Report
    ) -> list[CellResult]:
        cells: list[CellResult] = []
        chosen = [c for c in scenario.configs if not configs or c.name in configs]
        for config in chosen:
            for case in scenario.every_case:
                cell = self.run_cell(scenario, case, config)
                report(cell)
                cells.append(cell)
                if cell.outcome in (Outcome.KERNEL_CRASH, Outcome.VM_LOST):
                    return cells  # the caller restarts the VM for what is left
        return cells

    def run_cell(
        self, scenario: Scenario, case: AnyCase, config: RunConfig, *, retry_of: str = ""
    ) -> CellResult:
        """One (case, config) in this guest, within the cell timeout: the config's sysctls
        are switched only when they differ from the ones in effect.  A guest that fails
        under the cell (crash, hang, lost) makes an outcome, never an exception.  The cell
        is appended to the run directory; `retry_of` (why the first attempt lost its VM)
        goes into the reason of a retry's record."""
        program, prog_type, section = case_program(case)
        cell = CellResult(
            scenario=scenario.name,
            case=case.name,
            kernel=self.kernel.name,
            config=config.name,
            outcome=Outcome.ERROR,
            kernel_release=self.kernel.release,
            kernel_digest=self.kernel.digest,
            accel=self.vm.accel,
            program=program,
            prog_type=prog_type,
            section=section,
            scenario_file=str(scenario.path.resolve()),
            scenario_line=case.line,
            console_path=self.guest_logs[0],
            dmesg_path=self.guest_logs[1],
            libbpf=self.libbpf,
        )
        mark = len(self.vm.console_text())
        with Watchdog(self.cell_timeout, self.vm.kill) as dog:
            self._dog, self.agent.deadline, self.agent.first_failure = dog, dog.deadline, ""
            try:
                if self._config != config.sysctl or self._sysctls is None:
                    self._sysctls, self._refused = self._apply(config)
                    self._config = config.sysctl
                cell.sysctls = dict(self._sysctls)
                if self._refused:
                    cell.outcome, cell.reason = Outcome.SKIPPED, self._refused
                elif isinstance(case, LoaderCase):
                    self._run_loader(scenario, case, config, cell)
                else:
                    self._run_case(scenario, case, config, cell)
            except KitlError as exc:  # outside the case: switching the config, facts
                cell.outcome, cell.reason = outcome_for_error(exc), str(exc)
            finally:
                self._dog, self.agent.deadline = None, None
        self._explain(cell, dog, self.vm.console_text()[mark:])
        if retry_of:
            note = f"retried once on a fresh VM; the first attempt: {retry_of}"
            cell.reason = f"{cell.reason} ({note})" if cell.reason else note
        self.run.append(cell)
        return cell

    def _explain(self, cell: CellResult, dog: Watchdog, console: str) -> None:
        """What the watchdog and the guest's console (what it printed during the cell) say
        about the cell: a crash's splat and fingerprint, an overrun budget, OOM kills."""
        oom = consolelog.oom_kills(console)
        if oom:
            cell.observed = amended(cell.observed, oom_kills=oom)
        if cell.outcome is Outcome.KERNEL_CRASH:
            splat = consolelog.first_crash(console) or consolelog.first_crash(
                self.vm.console_text()
            )
            if splat is not None:
                cell.crash = Crash(
                    title=splat.title,
                    fingerprint=splat.fingerprint,
                    signature=splat.signature,
                    functions=tuple(splat.functions),
                    text=splat.text,
                )
        elif dog.fired or (
            dog.expired and cell.outcome in (Outcome.TIMED_OUT, Outcome.VM_LOST, Outcome.ERROR)
        ):
            # the watchdog's kill shows as a lost VM; either way the budget ran out
            cell.reason = timed_out_reason(dog.seconds, self.agent.first_failure or cell.reason)
            load = hostload.snapshot()
            if load.overloaded:  # a starved guest runs out of time too: say which it was
                cell.reason += f" ({load.verdict()})"
            cell.outcome = Outcome.TIMED_OUT
        elif cell.outcome is Outcome.VM_LOST and self.agent.first_failure:
            cell.reason = self.agent.first_failure  # the loss, not a cleanup call after it
        if oom and cell.outcome not in (Outcome.PASSED, Outcome.SKIPPED):
            cell.reason = f"{cell.reason} (the guest ran out of memory: {'; '.join(oom)})"

    def _budget(self) -> float:
        """Seconds left to the running cell (what a command it runs may take)."""
        return self._dog.remaining() if self._dog is not None else CASE_TIMEOUT

    def _apply(self, config: RunConfig) -> tuple[dict[str, int | str | None], str]:
        """Switch the guest to `config`: its sysctls, and every sysctl an earlier config
        changed back to its value at boot, so configs never leak into each other."""
        if self._boot_sysctls is None:
            self._boot_sysctls = dict(self._facts().sysctl)
        boot = self._boot_sysctls
        # every sysctl an earlier config set goes back (as a warm guest's reset does)
        wanted = sysctls_to_restore(boot, {}, sorted(self._touched))
        wanted.update(config.sysctl)
        self._touched.update(k for k, _ in config.sysctl)
        answer = self.agent.send(protocol.Sysctl(wanted)).values if wanted else {}
        refused = [f"{k}={v}: {answer[k].error}" for k, v in config.sysctl if not answer[k].ok]
        values: dict[str, int | str | None] = dict(boot)
        values.update({k: a.value for k, a in answer.items()})
        reason = ("the kernel refused " + "; ".join(refused)) if refused else ""
        return values, reason

    def _run_case(
        self, scenario: Scenario, case: Case, config: RunConfig, cell: CellResult
    ) -> None:
        loader = self._facts().libbpf_version
        expect = case.expect_for(self.kernel.release, config.name, loader, self._facts().btf)
        cell.expected = expect_json(expect)
        seen = Observed()
        started = time.monotonic()
        topology = scenario.topology
        has_topology = bool(topology.netns or topology.veth or topology.netdevsim)
        try:
            if case.skip:
                cell.outcome, cell.reason = Outcome.SKIPPED, case.skip
                return
            wanted = case.requires.libbpf
            if wanted is not None and not (loader and wanted.contains(kernel_version(loader))):
                cell.outcome = Outcome.SKIPPED
                cell.reason = f"the case needs libbpf {wanted.text}; this loader is {loader or '?'}"
                return
            missing = self._missing_requirements(case, seen)
            if missing:
                cell.outcome = Outcome.SKIPPED
                cell.reason = "this kernel lacks " + "; ".join(missing)
                return
            try:  # a topology half set up is torn down too
                if has_topology:
                    self.agent.send(topology_request(scenario), timeout=CASE_TIMEOUT)
                self._load_attach_drive(scenario, case, expect, seen, cell)
            finally:
                leftovers = self._clean(has_topology)
            cell.outcome, cell.reason = judge(case, expect, seen)
            if leftovers and cell.outcome is Outcome.PASSED:
                cell.outcome, cell.reason = Outcome.ERROR, "cleanup failed: " + "; ".join(leftovers)
        except AgentCallError as exc:
            cell.outcome, cell.reason = Outcome.ERROR, str(exc)
        except KitlError as exc:
            cell.outcome, cell.reason = outcome_for_error(exc), str(exc)
        finally:
            cell.timings = amended(cell.timings, case_s=round(time.monotonic() - started, 3))
            cell.observed = observed_json(seen)
            self.run.write_verifier_log(cell, seen.load.log if seen.load is not None else "")

    def _run_loader(
        self, scenario: Scenario, case: LoaderCase, config: RunConfig, cell: CellResult
    ) -> None:
        """The user's own loader in the guest (harness.guest.userloader), judged on its
        exit status, the programs it loaded and its output; what it leaves loaded once its
        pins are gone is a leak, as any case's."""
        facts = self._facts()
        expect = case.expect_for(self.release, config.name, facts.libbpf_version, facts.btf)
        cell.expected = expect_json(expect)
        started = time.monotonic()
        run = None
        try:
            if case.skip:
                cell.outcome, cell.reason = Outcome.SKIPPED, case.skip
                return
            objects = {
                name: self.guest_object(self.objects[(scenario.name, name)])
                for name in case.objects
            }
            request = loader_request(case, objects, self._budget())
            try:
                run = self.agent.send(request, timeout=request.timeout + CASE_TIMEOUT)
            finally:
                leftovers = self._clean(False)
            cell.outcome, cell.reason = judge_loader(expect, run)
            if leftovers and cell.outcome is Outcome.PASSED:
                cell.outcome, cell.reason = Outcome.ERROR, "cleanup failed: " + "; ".join(leftovers)
        except KitlError as exc:  # an AgentCallError too: a loader the guest cannot run
            cell.outcome, cell.reason = outcome_for_error(exc), str(exc)
        finally:
            cell.timings = amended(cell.timings, case_s=round(time.monotonic() - started, 3))
            if run is not None:
                cell.observed = amended(cell.observed, loader=run.to_wire())
                self.run.write_cell_log(cell, loader_log(case, run), "loader")

    def _missing_requirements(self, case: Case, seen: Observed) -> list[str]:
        """Probe the guest for the case's `requires:`.  Names are resolved to ids through
        the kernel's own BTF (its enums): a helper the kernel's BTF does not know is absent."""
        req = case.requires
        missing: list[str] = []
        if req.btf and not self._facts().btf:
            missing.append("kernel BTF (/sys/kernel/btf/vmlinux)")
        if case.prog_type.name == "lsm" and self.kernel.config.get("CONFIG_BPF_LSM") == "n":
            missing.append("BPF LSM (the kernel is built without CONFIG_BPF_LSM)")
        elif case.prog_type.name == "lsm" and "bpf" not in str(self._facts().lsm).split(","):
            # LSM programs attach either way, but run only when BPF LSM is active
            missing.append(
                "an active BPF LSM (bpf is not in lsm=; add it to the boot command line)"
            )
        attach_types = list(req.attach_types)
        if isinstance(case.attach, TcxAttach):  # tcx links exist from 6.6 on
            attach_types.append(f"tcx_{case.attach.direction}")
        if attach_types:
            enums = self._kernel_enums()
            missing += [
                f"attach type {name} (not in this kernel's enum bpf_attach_type)"
                for name in dict.fromkeys(attach_types)
                if f"BPF_{name.upper()}" not in enums
            ]
        if not (req.helpers or req.prog_types or req.map_types or req.kfuncs or req.btf_names):
            return missing
        enums = self._kernel_enums()
        known: dict[str, dict[str, int]] = {"helpers": {}, "prog_types": {}, "map_types": {}}
        for names, prefix, key, kind in (
            (req.helpers, "BPF_FUNC_", "helpers", "helper"),
            (req.prog_types, "BPF_PROG_TYPE_", "prog_types", "program type"),
            (req.map_types, "BPF_MAP_TYPE_", "map_types", "map type"),
        ):
            for name in names:
                # enum bpf_func_id keeps the helper's case (BPF_FUNC_loop); types are upper
                enum = prefix + (name.removeprefix("bpf_") if key == "helpers" else name.upper())
                if enum not in enums:
                    missing.append(f"{kind} {name} (not in this kernel's BTF)")
                else:
                    known[key][name] = enums[enum]
        probe = protocol.Probe(
            case.prog_type.uapi, kfuncs=tuple(req.kfuncs), btf_names=dict(req.btf_names), **known
        )
        answer = self.agent.send(probe)
        seen.notes += answer.unprobed
        return missing + list(answer.missing)

    def _facts(self) -> FactsReply:
        if self._guest_facts is None:
            self._guest_facts = self.agent.send(protocol.Facts())
        return self._guest_facts

    def _kernel_enums(self) -> dict[str, int]:
        if self._enums is None:
            header = vmlinux_h(kernel_btf(self.kernel), self.cache)
            text = header.read_text(encoding="utf-8", errors="replace")
            self._enums = {}
            for enum in ("bpf_func_id", "bpf_prog_type", "bpf_map_type", "bpf_attach_type"):
                block = re.search(rf"\benum {enum} \{{(.*?)\}};", text, re.S)
                if block:  # only these enums: other enums reuse some of the names
                    self._enums.update(
                        (m.group(1), int(m.group(2)))
                        for m in re.finditer(r"\b(BPF_\w+) = (\d+)", block.group(1))
                    )
        return self._enums

    def _clean(self, has_topology: bool) -> list[str]:
        """Release every object and tear the topology down, whatever failed before."""
        return clean(self.agent, topology=has_topology, timeout=CASE_TIMEOUT)

    def _load_args(self, case: Case, obj_path: Path) -> LoadArgs:
        load_args: LoadArgs = {
            "object": self.guest_object(obj_path),
            "program": case.program,
            "log_level": case.load.log_level,
        }
        if case.load.log_size:
            load_args["log_size"] = case.load.log_size
        flags = case.load.flags_value | self._testing_flags(case.load.testing_flags)
        if flags:
            load_args["prog_flags"] = flags
        if case.load.btf_custom_path is not None:
            load_args["btf_custom_path"] = self.guest_object(case.load.btf_custom_path)
        external = self.kernel.external_btf
        if case.load.external_btf and external is not None and not self._facts().btf:
            load_args["btf_custom_path"] = self.guest_object(external)
        if case.load.privilege != "privileged":
            load_args["privilege"] = case.load.privilege
        if case.load.globals:
            load_args["globals"] = dict(case.load.globals)
        load_args.update(prepare_args(case.load))
        if not case.load.companions:
            # libbpf fills a prog array's static slots at load time and fails unless their
            # programs load too: they are the program's companions, as are the programs
            # the case puts in slots itself
            slots = [*self._slot_programs(obj_path), *(p for _, _, p in case.tail_calls)]
            if slots:
                load_args["companions"] = list(dict.fromkeys(slots))
        if isinstance(case.attach, XdpAttach) and case.attach.mode == "hw":
            # offload: the program is bound to the device when it is loaded
            load_args["offload_dev"], load_args["offload_ns"] = case.attach.dev, case.attach.ns
        return load_args

    def _set_up(self, case: Case, handle: int) -> None:
        """What user space does between the load and the attach: map contents, tail call
        slots."""
        if case.setup_maps:
            self.agent.send(protocol.MapUpdate(handle, map_rows(case.setup_maps)))
        if case.tail_calls:
            self.agent.send(protocol.TailCalls(handle, tuple(case.tail_calls)))

    def _load_attach_drive(
        self, scenario: Scenario, case: Case, expect: Expect, seen: Observed, cell: CellResult
    ) -> None:
        """Load the case's program, set up its maps, attach it, start its event counters,
        drive it and read what it left in its maps; a step that fails ends the case."""
        handle = self._load(scenario, case, expect, seen, cell)
        if handle is None:
            return
        self._set_up(case, handle)
        if case.attach is not None and not self._attach(case, handle, seen):
            return
        if expect.events:
            self.agent.send(protocol.EventsStart(handle, tuple(m for m, _ in expect.events)))
        self._drive(case, handle, seen, cell)
        if expect.events:
            seen.events = self.agent.send(protocol.EventsCount(handle))
        if expect.map:
            names = sorted({m.name for m in expect.map})
            seen.maps = self.agent.send(
                protocol.MapDump(handle, tuple(names)), timeout=CASE_TIMEOUT
            )

    def _load(
        self, scenario: Scenario, case: Case, expect: Expect, seen: Observed, cell: CellResult
    ) -> int | None:
        """Load the object's program in the guest; the verifier's figures go into the cell.
        The object's handle, None when the load failed."""
        obj_path = self.objects[(scenario.name, case.object)]
        cell.object_file = str(obj_path)
        cell.object_sha256 = self._sha256(obj_path)
        load_args = self._load_args(case, obj_path)
        if not (case.load.keep_log or expect.log):
            # no one reads the log of a success: the statistics only, unless it fails
            load_args["log_failures_only"] = True
        if _verify_only(case, expect):
            load_args["verify_only"] = True
        load = self.agent.send(protocol.Load.from_wire(load_args), timeout=CASE_TIMEOUT)
        # the keys of a LoadArgs, so a LoadArgs (a comprehension is a dict to mypy)
        replayed = {k: v for k, v in load_args.items() if k in _REPLAYED_LOAD_ARGS}
        seen.load_args = cast(LoadArgs, replayed)
        seen.load = load = user_paths(load, {load_args["object"]: str(obj_path)})
        # what kitl changed in the object (veristat's fixups) and what the guest lacked
        seen.notes += [*load.fixups, *load.notes]
        cell.timings = amended(cell.timings, load_ms=round(load.load_ns / 1e6, 3))
        cell.verifier = verifier_figures(load)
        return load.handle

    def _attach(self, case: Case, handle: int, seen: Observed) -> bool:
        """Attach as the case says; an attach the kernel refuses is the case's result
        (False), any other failure of the guest ends the cell."""
        assert case.attach is not None
        where = {
            k: getattr(case.attach, k, None) for k in ("dev", "ns", "mode", "direction", "path")
        }
        request = protocol.Attach(handle, case.program, case.attach.family, **where)
        try:
            seen.attach = self.agent.send(request, timeout=CASE_TIMEOUT)
        except AgentCallError as exc:
            if exc.kind is not ErrorKind.ATTACH:
                raise
            seen.attach_error = str(exc)
            return False
        return True

    def _drive(self, case: Case, handle: int, seen: Observed, cell: CellResult) -> None:
        """Make the program run as the case's drive says (none: nothing runs it)."""
        drive = case.drive
        # the drive's processes and sockets live in the cgroup the program is attached to
        cgroup = case.attach.path if isinstance(case.attach, CgroupAttach) else None
        if isinstance(drive, TestRunDrive):
            request = test_run_request(case, drive, handle)
            seen.test_run = self.agent.send(request, timeout=CASE_TIMEOUT)
            cell.timings = amended(cell.timings, ns_per_op=seen.test_run.duration_ns)
        elif isinstance(drive, TrafficDrive):
            socket_filter = isinstance(case.attach, SocketAttach)
            traffic = traffic_request(
                drive, cgroup, (handle, case.program) if socket_filter else None
            )
            seen.traffic = self.agent.send(traffic, timeout=CASE_TIMEOUT)
        elif isinstance(drive, SyscallDrive) and drive.action == "run":
            # the command may take what is left of the cell; the agent kills it then
            run = protocol.Run(tuple(drive.argv), drive.ns, cgroup, round(self._budget(), 1))
            seen.syscall = self.agent.send(run, timeout=CASE_TIMEOUT)
        elif isinstance(drive, SyscallDrive):
            seen.syscall = self.agent.send(syscall_request(drive, cgroup), timeout=CASE_TIMEOUT)
